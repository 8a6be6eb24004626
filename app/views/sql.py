"""SQL: read-only queries over the token store, a results table and a quick chart."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from tokenprism.app.components.charts import sql_chart
from tokenprism.app.ui import backend_errors, client

EXAMPLES = {
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

st.title("SQL")
st.caption(
    "One read-only statement (SELECT or EXPLAIN) over the token store: tables `runs`, `tokens`, "
    "`token_metrics`, `alternatives`, `sequence_metrics`, `layer_metrics`, `models`, `uploads`, "
    "`jobs`. Writes are refused."
)
example = st.selectbox("Example queries", list(EXAMPLES), key="sql.example")
query = st.text_area("Query", value=EXAMPLES[example], height=160, key=f"sql.query.{example}")
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
