"""Streamlit frontend (talks to the backend over HTTP only; never opens the DuckDB file)."""
