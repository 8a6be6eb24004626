"""Groups: sample N responses to a verifiable prompt and read the group-level token signals.

Launch a group from a shipped prompt, then per group: the rewards and advantages, THR, the
prefix tree with its values V(s), and per response its tokens (THR, TEMPO, LATR, CURE), the
critical token found by rollouts and the cDPO contrastive score.
"""

from __future__ import annotations

from typing import Any

import streamlit as st

from tokenprism.app.components.groups import (
    TREE_COLOURS,
    counterfactuals_frame,
    group_label,
    is_incorrect,
    response_label,
    responses_frame,
    rollout_figure,
    signals_figure,
    thr_status,
    thr_tokens_frame,
    tree_figure,
)
from tokenprism.app.run_view import render_run
from tokenprism.app.ui import backend_errors, client, fetch_run, poll_job
from tokenprism.backend.display import shown_number

# session state of the three kinds of job: {"job_id", "group_id"?}
GROUP_JOB, ROLLOUT_JOB, CDPO_JOB = "groups.job", "groups.rollout_job", "groups.cdpo_job"
JOB_LABELS = {GROUP_JOB: "sampling", ROLLOUT_JOB: "rollouts", CDPO_JOB: "adapter training"}

st.title("Groups")
st.caption(
    "A group is N responses sampled for one prompt and scored by a verifier (`number:42`, "
    "`exact:Paris`, `regex:PATTERN`, `choice:B`). Each response is a run whose tokens carry the "
    "group signals: THR (token hidden reward), TEMPO's prefix-tree TD terms and advantages, "
    "LATR branch points and CURE's critical-token candidates."
)


@st.fragment(run_every=1.0)
def job_progress(state_key: str) -> None:
    """Poll the job in ``st.session_state[state_key]``; reload the page when it ends."""
    created = ("groups.created", "group_id") if state_key == GROUP_JOB else (None, None)
    poll_job(state_key, JOB_LABELS[state_key], created_key=created[0], result_field=created[1])


def show_failure(state_key: str) -> None:
    message = st.session_state.get(f"{state_key}.failed")
    if message:
        st.error(message)


def start_job(state_key: str, reply: dict[str, Any], **context: Any) -> None:
    st.session_state.pop(f"{state_key}.failed", None)
    st.session_state[state_key] = {"job_id": reply["job_id"], **context}


# ---- launch a group ----------------------------------------------------------------------

with backend_errors():
    shipped = client().group_prompts()
by_id = {p["id"]: p for p in shipped}


def fill_from_shipped() -> None:
    """Put the chosen shipped prompt and its verifier into the (editable) fields."""
    chosen = by_id.get(st.session_state.get("groups.shipped"))
    if chosen is not None:
        st.session_state["groups.prompt"] = chosen["prompt"]
        st.session_state["groups.verifier"] = chosen["verifier"]


with st.expander("Sample a new group", expanded=True):
    if shipped:
        st.selectbox(
            "Shipped prompt",
            list(by_id),
            format_func=lambda i: f"{i} · {by_id[i]['kind']} · {by_id[i]['verifier']}",
            key="groups.shipped",
            on_change=fill_from_shipped,
        )
        if "groups.prompt" not in st.session_state:  # first visit: the selected shipped prompt
            fill_from_shipped()
    prompt = st.text_area("Prompt", key="groups.prompt", height=80)
    verifier = st.text_input(
        "Verifier",
        key="groups.verifier",
        help="number:42 (number:42@0.5 with a tolerance), exact:Paris, regex:PATTERN, choice:B",
    )
    cols = st.columns(4)
    n = cols[0].number_input("Responses (n)", 2, 64, 8, 1, key="groups.n")
    temperature = cols[1].number_input("Temperature", 0.05, 5.0, 1.0, 0.05, key="groups.temp")
    max_new = cols[2].number_input("Max new tokens", 1, 1024, 96, 8, key="groups.max_new")
    seed = cols[3].number_input("Seed", 0, 2**32 - 1, 0, 1, key="groups.seed")
    thr_vocab = st.radio(
        "THR vocabulary",
        ["full", "group"],
        horizontal=True,
        key="groups.thr_vocab",
        help="full: exact first-order influence over the whole vocabulary (default); group: "
        "NTHR's cost shortcut over the tokens occurring in the group (V*), reported with its "
        "agreement with the full value",
    )
    if st.button("Sample group", type="primary", key="groups.sample"):
        if not prompt.strip() or not verifier.strip():
            st.warning("Give a prompt and a verifier (or pick a shipped prompt).")
        else:
            with backend_errors():
                reply = client().create_group(
                    prompt=prompt,
                    verifier=verifier.strip(),
                    n=int(n),
                    temperature=float(temperature),
                    max_new_tokens=int(max_new),
                    seed=int(seed),
                    thr_vocab=thr_vocab,
                )
            start_job(GROUP_JOB, reply)
    if st.session_state.get(GROUP_JOB):
        job_progress(GROUP_JOB)
    show_failure(GROUP_JOB)

# ---- pick a group ------------------------------------------------------------------------

with backend_errors():
    groups = client().groups()
if not groups:
    st.info("No group yet: sample one above.")
    st.stop()
ids = [g["group_id"] for g in groups]
# A keyed selectbox keeps its value across reruns whatever its index says, so a group just
# sampled is shown by setting the widget's state before the widget is created.
if (created := st.session_state.pop("groups.created", None)) in ids:
    st.session_state["groups.choice"] = created
rows = {g["group_id"]: g for g in groups}
group_id = st.selectbox(
    "Group", ids, format_func=lambda i: group_label(rows[i]), key="groups.choice"
)
with backend_errors():
    group = client().group(group_id)
summary = group.get("summary") or {}
responses = group.get("responses") or []

st.code(group["prompt"], language=None, wrap_lines=True)
params = group.get("params") or {}
st.caption(
    f"group `{group_id}` · model `{group['model']['id']}` · verifier `{group['verifier']}` · "
    f"temperature {params.get('temperature')} · max {params.get('max_new_tokens')} new tokens · "
    f"seed {params.get('seed')}"
)
cards = st.columns(4)
cards[0].metric("responses", len(responses))
cards[1].metric("correct", summary.get("n_correct", "—"))
cards[2].metric(
    f"THR vocabulary ({summary.get('thr_vocab', 'group')})",
    summary.get("thr_vocab_size", summary.get("vocabulary_size", "—")),
)
tau = summary.get("thr_tau")
cards[3].metric("THR τ", "—" if tau is None else f"{tau:.4g}")
n_correct = summary.get("n_correct")
if isinstance(n_correct, int) and responses and n_correct in (0, len(responses)):
    which = "No response" if n_correct == 0 else "Every response"
    st.warning(
        f"{which} is correct, so the group has no contrast: THR and the advantages are "
        "undefined (shown as —). Try a larger n, a lower temperature"
        + (" (the model may not know the answer)" if n_correct == 0 else " or a harder prompt")
        + ", or check the verifier."
    )

ok, status = thr_status(summary)
(st.success if ok else st.warning)(status)

st.subheader("Responses")
st.dataframe(responses_frame(group), hide_index=True, key="groups.responses")
if ok:
    left, right = st.columns(2)
    for col, sign in ((left, "positive"), (right, "negative")):
        col.markdown(f"**Top {sign} THR tokens**")
        frame = thr_tokens_frame(group, sign)
        if frame.empty:
            col.caption(f"No {sign} THR token.")
        else:
            col.dataframe(frame, hide_index=True, key=f"groups.thr_{sign}")

# ---- prefix tree -------------------------------------------------------------------------

st.subheader("Prefix tree")
st.caption(
    "Responses share a box while they share a prefix; a box's size is its number of responses "
    "and V(s) is their mean reward. TD is V(s) minus the parent's value: where the group splits "
    "into better and worse continuations. Click a box to zoom in."
)
colour = st.selectbox(
    "Colour the tree by",
    list(TREE_COLOURS),
    format_func=lambda k: TREE_COLOURS[k][0],
    key="groups.tree_colour",
)
st.plotly_chart(tree_figure(group.get("tree"), colour), key="groups.tree")

# ---- one response ------------------------------------------------------------------------

st.subheader("A response")
if not responses:
    st.info("This group has no responses.")
    st.stop()
index = st.selectbox(
    "Response",
    list(range(len(responses))),
    format_func=lambda i: response_label(responses[i]),
    key="groups.response",
)
response = responses[index]
run_id = response["run_id"]
with backend_errors():
    run = fetch_run(run_id)

tokens_tab, rollouts_tab, cdpo_tab = st.tabs(
    ["Tokens", "Critical token (rollouts)", "Contrastive (cDPO)"]
)
with tokens_tab:
    st.plotly_chart(signals_figure(run["tokens"]), key="groups.signals")
    st.caption(
        "Entropy along the response; ▲ LATR branch points (a second token is almost as "
        "likely as the first), ◇ CURE's top-entropy candidates for critical tokens."
    )
    # keyed by group: a new group starts coloured by THR (when it has THR), while the choice
    # made for one response carries over to the others of the same group
    render_run(run, key=f"groups.run.{group_id}", default_metric="thr")

with rollouts_tab:
    st.caption(
        "For an incorrect response, K continuations are sampled from prefixes along it and "
        "verified: c(t) is the share that still reaches a correct answer. The critical token is "
        "where c(t) drops to 0 for good; its most likely alternatives are tried in its place."
    )
    if is_incorrect(response):
        roll_cols = st.columns(5)
        k = roll_cols[0].number_input("Continuations (k)", 1, 64, 8, 1, key="groups.k")
        budget = roll_cols[1].number_input("Prefix budget", 1, 512, 12, 1, key="groups.budget")
        refine = roll_cols[2].number_input("Refine", 0, 256, 8, 1, key="groups.refine")
        alternatives = roll_cols[3].number_input(
            "Counterfactuals", 0, 32, 4, 1, key="groups.counterfactuals"
        )
        roll_new = roll_cols[4].number_input(
            "Continuation tokens", 1, 1024, 64, 8, key="groups.roll_new"
        )
        if st.button("Find the critical token (rollouts)", key="groups.rollouts"):
            with backend_errors():
                reply = client().group_rollouts(
                    group_id,
                    run_id=run_id,
                    k=int(k),
                    budget=int(budget),
                    refine=int(refine),
                    counterfactuals=int(alternatives),
                    max_new_tokens=int(roll_new),
                )
            start_job(ROLLOUT_JOB, reply, group_id=group_id, run_id=run_id)
        if (st.session_state.get(ROLLOUT_JOB) or {}).get("group_id") == group_id:
            job_progress(ROLLOUT_JOB)
        show_failure(ROLLOUT_JOB)
    else:
        st.info("This response is correct: pick one marked ✗ to look for its critical token.")
    rollout = (group.get("rollouts") or {}).get(run_id)
    if rollout:
        critical = rollout.get("critical_position")
        if critical is None:
            st.markdown("c(t) never reaches 0: no critical token along this response.")
        else:
            st.markdown(
                f"Critical token at position **{shown_number(critical)}** (from 1): "
                f"`{rollout.get('critical_token')!r}` "
                f"(baseline c = {rollout.get('baseline', 0):.2f}, "
                f"{len(rollout.get('positions') or [])} prefixes evaluated)."
            )
        st.plotly_chart(rollout_figure(run["tokens"], rollout), key="groups.rollout_fig")
        alternatives_frame = counterfactuals_frame(rollout)
        if not alternatives_frame.empty:
            st.markdown("**Counterfactual alternatives to the critical token**")
            st.dataframe(alternatives_frame, hide_index=True, key="groups.counterfactuals_table")

with cdpo_tab:
    st.caption(
        "cDPO's contrastive estimation: LoRA adapters trained on the group's correct and on its "
        "incorrect responses; tokens the negative adapter prefers get a low `ce_score` "
        "(pick it in Colour tokens by)."
    )
    n_wrong = sum(is_incorrect(r) for r in responses)
    n_right = len(responses) - n_wrong
    contrastive = group.get("contrastive")
    if contrastive:
        losses = contrastive.get("final_loss") or {}
        st.success(
            "Adapters trained ("
            + ", ".join(f"{k} final loss {v:.3f}" for k, v in losses.items())
            + "): every response has `ce_score`."
        )
    steps = st.number_input("Steps per adapter", 1, 2000, 30, 5, key="groups.cdpo_steps")
    mixed = bool(n_right and n_wrong)
    if st.button(
        "Train contrastive adapters (cDPO)",
        key="groups.cdpo",
        disabled=not mixed,
        help=None if mixed else "needs correct and incorrect responses",
    ):
        with backend_errors():
            reply = client().group_contrastive(group_id, steps=int(steps))
        start_job(CDPO_JOB, reply, group_id=group_id)
    if not mixed:
        st.caption(
            f"This group has {n_right} correct and {n_wrong} incorrect responses: the adapters "
            "need both."
        )
    if (st.session_state.get(CDPO_JOB) or {}).get("group_id") == group_id:
        job_progress(CDPO_JOB)
    show_failure(CDPO_JOB)
