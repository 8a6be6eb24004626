"""SQL: read-only queries over the token store, a results table and a quick chart."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from tokenprism.app.components.charts import sql_chart
from tokenprism.app.ui import backend_errors, client

EXAMPLES = {
    "Entropy of response tokens (histogram)": (
        "-- is_prompt = false keeps only the analysed response tokens\n"
        "SELECT entropy FROM tokens\nWHERE is_prompt = false AND entropy IS NOT NULL"
    ),
    "Most uncertain response tokens": (
        "SELECT r.run_id, t.position, t.text, t.entropy, t.prob\n"
        "FROM tokens t JOIN runs r USING (run_id)\n"
        "WHERE NOT t.is_prompt AND t.entropy IS NOT NULL\n"
        "ORDER BY t.entropy DESC LIMIT 25"
    ),
    "Runs by mean entropy": (
        "SELECT r.run_id, left(r.response, 60) AS response, s.value AS mean_entropy\n"
        "FROM runs r JOIN sequence_metrics s USING (run_id)\n"
        "WHERE s.metric = 'mean_entropy' ORDER BY mean_entropy DESC LIMIT 50"
    ),
    "GLTR buckets over all responses": (
        "SELECT CAST(value AS INTEGER) AS bucket, count(*) AS tokens\n"
        "FROM token_metrics WHERE metric = 'gltr_bucket' GROUP BY 1 ORDER BY 1"
    ),
    "Effective rank by layer (mean over runs)": (
        "SELECT layer, avg(value) AS effective_rank FROM layer_metrics\n"
        "WHERE metric = 'effective_rank' GROUP BY layer ORDER BY layer"
    ),
    "Token metrics available": (
        "SELECT metric, count(*) AS values, avg(value) AS mean FROM token_metrics GROUP BY 1 "
        "ORDER BY 1"
    ),
}


@st.cache_data(ttl=60, show_spinner=False)
def schema_rows(base_url: str) -> list[list[object]]:  # noqa: ARG001 - cache key
    """Tables, columns and types of the store (read through the same read-only SQL)."""
    result = client().sql(
        "SELECT table_name, column_name, data_type FROM information_schema.columns "
        "WHERE table_schema = 'main' ORDER BY table_name, ordinal_position",
        max_rows=2000,
    )
    return [list(r) for r in result["rows"]]


@st.cache_data(ttl=60, show_spinner=False)
def example_row(base_url: str, table: str) -> dict[str, object]:  # noqa: ARG001 - cache key
    result = client().sql(f'SELECT * FROM "{table}" LIMIT 1', max_rows=1)
    return dict(zip(result["columns"], result["rows"][0], strict=True)) if result["rows"] else {}


def schema_sidebar() -> None:
    """The store's tables in the sidebar: columns, types and one example value each."""
    with st.sidebar:
        st.subheader("Schema")
        with backend_errors():
            rows = schema_rows(client().base_url)
        tables: dict[str, list[tuple[str, str]]] = {}
        for table, column, kind in rows:
            tables.setdefault(str(table), []).append((str(column), str(kind)))
        for table, columns in tables.items():
            with st.expander(table):
                with backend_errors():
                    sample = example_row(client().base_url, table)
                st.dataframe(
                    pd.DataFrame(
                        [
                            {"column": c, "type": k, "example": str(sample.get(c, ""))[:40]}
                            for c, k in columns
                        ]
                    ),
                    hide_index=True,
                )


st.title("SQL")
schema_sidebar()
st.caption(
    "One read-only statement (SELECT or EXPLAIN) over the token store: tables `runs`, `tokens`, "
    "`token_metrics`, `alternatives`, `sequence_metrics`, `layer_metrics`, `models`, `uploads`, "
    "`jobs`. Writes are refused."
)
example = st.selectbox("Example queries", list(EXAMPLES), key="sql.example")
# An example replaces the query only while it is unedited (still the last example inserted).
if "sql.query" not in st.session_state:
    st.session_state["sql.query"] = EXAMPLES[example]
    st.session_state["sql.inserted"] = EXAMPLES[example]
elif st.session_state.get("sql.shown_example") != example:
    if st.session_state["sql.query"] == st.session_state.get("sql.inserted"):
        st.session_state["sql.query"] = EXAMPLES[example]
        st.session_state["sql.inserted"] = EXAMPLES[example]
    else:
        st.caption("Your edited query was kept; clear it to load the example.")
st.session_state["sql.shown_example"] = example
if st.session_state.get("sql.query") == "":
    st.session_state["sql.query"] = st.session_state["sql.inserted"] = EXAMPLES[example]
query = st.text_area("Query", height=160, key="sql.query")
st.caption(
    "Note: `tokens` holds prompt tokens too; add `WHERE is_prompt = false` to look at the "
    "responses only."
)
max_rows = st.number_input("Max rows", 1, 100_000, 1000, key="sql.max_rows")
if st.button("Run query", type="primary", key="sql.run"):
    with backend_errors():
        st.session_state["sql.result"] = client().sql(query, max_rows=int(max_rows))

result = st.session_state.get("sql.result")
if result is not None:
    frame = pd.DataFrame(result["rows"], columns=result["columns"])
    st.dataframe(frame, hide_index=True)
    if result["truncated"]:
        st.caption(f"Showing the first {len(frame)} rows.")
    figure = sql_chart(result["columns"], result["rows"])
    if figure is not None:
        st.plotly_chart(figure, key="sql.chart")
