"""Pure building blocks of the Streamlit UI: token HTML, plotly figures, comparisons, tables.

Nothing here imports streamlit or talks to the backend: every function takes the JSON the API
returned (runs, tokens, audit summaries, SQL results) and gives back HTML, a figure or a
DataFrame, so it can be unit-tested without a browser or a server. The colour scale and token
spans are the HTML report's own (``backend.report``), so the UI and the report agree.
"""
