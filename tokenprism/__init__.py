"""TokenPrism: token-level analysis of language-model outputs.

The one import root. Its sub-packages are the repository's top-level folders (linked here so
that every tool, from the interpreter to mypy and setuptools, sees a single tree):

* ``tokenprism.analysis``: pure tensor math and the metric registry;
* ``tokenprism.backend``: models, scoring, the DuckDB store, jobs, the API and the CLI;
* ``tokenprism.app``: the Streamlit UI, which talks to the backend over HTTP only;
* ``tokenprism/data``: shipped samples, prompt sets, fact tables and probes (package data).
"""
