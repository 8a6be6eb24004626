"""P2T prefix tree and TEMPO advantages against hand-worked cases and a naive prefix count."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tokenprism.analysis.prefix_tree import (
    TreeNode,
    branch_points,
    build_tree,
    compact,
    grpo_advantages,
    node_path,
    tempo_advantages,
    token_td,
)


def _naive_tempo(
    responses: list[list[int]], rewards: list[float], eps: float, normalise_std: bool
) -> list[list[float]]:
    """TEMPO advantages with V(prefix) found by scanning the group for every prefix: no trie."""
    cache: dict[tuple[int, ...], float] = {}

    def value(prefix: tuple[int, ...]) -> float:
        if prefix not in cache:
            members = [
                r
                for resp, r in zip(responses, rewards, strict=True)
                if tuple(resp[: len(prefix)]) == prefix
            ]
            cache[prefix] = sum(members) / len(members)
        return cache[prefix]

    mu = float(np.mean(rewards))
    sigma = float(np.std(rewards, ddof=1)) if len(rewards) > 1 else 0.0
    denom = sigma + eps if normalise_std else 1.0
    out = []
    for resp, r in zip(responses, rewards, strict=True):
        row = []
        for t in range(len(resp)):
            td = value(tuple(resp[: t + 1])) - value(tuple(resp[:t]))
            row.append((r - mu + td) / denom)
        out.append(row)
    return out


def _prefix_of(nodes: list[TreeNode], node_id: int) -> list[int]:
    return [tok for n in node_path(nodes, node_id) for tok in nodes[n].token_ids]


# --- the worked example of metric-definitions §13 -------------------------------------------


WORKED = [[1, 2, 3, 4, 5, 6, 7], [1, 2, 3, 4, 5, 8, 9], [10, 11], [12, 13, 14]]
WORKED_REWARDS = [1.0, 0.0, 0.0, 1.0]


def test_worked_example_td_and_tempo() -> None:
    td = token_td(WORKED, WORKED_REWARDS)
    assert td == [
        [0.0, 0.0, 0.0, 0.0, 0.0, 0.5, 0.0],  # V 0.5 -> 1 at response 1's divergence token
        [0.0, 0.0, 0.0, 0.0, 0.0, -0.5, 0.0],
        [-0.5, 0.0],
        [0.5, 0.0, 0.0],
    ]
    sigma = math.sqrt(1 / 3)  # unbiased std of [1, 0, 0, 1]
    adv = tempo_advantages(WORKED, WORKED_REWARDS)
    expected_0 = [0.5 / (sigma + 1e-6)] * 5 + [1.0 / (sigma + 1e-6), 0.5 / (sigma + 1e-6)]
    assert adv[0] == pytest.approx(expected_0, rel=1e-12)
    assert adv[1][5] == pytest.approx(-1.0 / (sigma + 1e-6), rel=1e-12)
    assert tempo_advantages(WORKED, WORKED_REWARDS, normalise_std=False)[0] == pytest.approx(
        [0.5] * 5 + [1.0, 0.5]
    )


# --- a small hand-drawn trie ----------------------------------------------------------------
#
#   root (D = abcde, V 2/5)
#    └─1 (abcde, 2/5)
#       ├─2 (abde, 1/4)   <- d ends here
#       │  ├─3 (ae, 1/2)
#       │  └─4 (b, 0)
#       └─5 (c, 1)

HAND = [[1, 2, 3], [1, 2, 4], [1, 5], [1, 2], [1, 2, 3]]  # a b c d e
HAND_REWARDS = [1.0, 0.0, 1.0, 0.0, 0.0]


def test_hand_trie_every_node() -> None:
    nodes = build_tree(HAND, HAND_REWARDS)
    assert [n.id for n in nodes] == list(range(6))
    table = [
        (n.parent, n.token_ids, n.depth, n.count, n.reward_sum, n.responses, n.children)
        for n in nodes
    ]
    assert table == [
        (None, [], 0, 5, 2.0, [0, 1, 2, 3, 4], [1]),
        (0, [1], 1, 5, 2.0, [0, 1, 2, 3, 4], [2, 5]),
        (1, [2], 2, 4, 1.0, [0, 1, 3, 4], [3, 4]),
        (2, [3], 3, 2, 1.0, [0, 4], []),
        (2, [4], 3, 1, 0.0, [1], []),
        (1, [5], 2, 1, 1.0, [2], []),
    ]
    assert [n.value for n in nodes] == pytest.approx([0.4, 0.4, 0.25, 0.5, 0.0, 1.0])
    assert nodes[0].td is None
    assert [n.td for n in nodes[1:]] == pytest.approx([0.0, -0.15, 0.25, -0.25, 0.6])
    assert nodes[1].td == 0.0  # exactly: the token does not split the group
    assert all(n.entropy is None for n in nodes)
    assert branch_points(nodes) == [1, 2]
    assert node_path(nodes, 4) == [0, 1, 2, 4]
    assert node_path(nodes, 0) == [0]
    assert token_td(HAND, HAND_REWARDS) == [
        [0.0, nodes[2].td, nodes[3].td],
        [0.0, nodes[2].td, nodes[4].td],
        [0.0, nodes[5].td],
        [0.0, nodes[2].td],
        [0.0, nodes[2].td, nodes[3].td],
    ]


def test_node_path_rejects_unknown_ids() -> None:
    nodes = build_tree(HAND, HAND_REWARDS)
    with pytest.raises(ValueError):
        node_path(nodes, 6)
    with pytest.raises(ValueError):
        node_path(nodes, -1)


def test_identical_duplicates_share_nodes() -> None:
    nodes = build_tree([[7, 8], [7, 8], [7, 8]], [1.0, 0.0, 1.0])
    assert len(nodes) == 3
    assert [n.count for n in nodes] == [3, 3, 3]
    assert nodes[2].responses == [0, 1, 2]
    assert token_td([[7, 8], [7, 8]], [1.0, 0.0]) == [[0.0, 0.0], [0.0, 0.0]]


def test_empty_response_ends_at_the_root() -> None:
    nodes = build_tree([[], [4]], [1.0, 0.0])
    assert [(n.count, n.responses) for n in nodes] == [(2, [0, 1]), (1, [1])]
    assert nodes[1].td == -0.5
    adv = tempo_advantages([[], [4]], [1.0, 0.0])
    sigma = math.sqrt(0.5)
    assert adv[0] == []
    assert adv[1] == pytest.approx([(0.0 - 0.5 - 0.5) / (sigma + 1e-6)], rel=1e-12)
    assert build_tree([], []) == [TreeNode(0, None, [], 0, 0, 0.0)]
    assert math.isnan(build_tree([], [])[0].value)


def test_token_ids_may_be_tensors() -> None:
    rows = [torch.tensor([1, 2]), torch.tensor([1, 3])]
    nodes = build_tree(rows, [1.0, 0.0])  # type: ignore[arg-type]
    assert [n.token_ids for n in nodes] == [[], [1], [2], [3]]
    assert all(type(t) is int for n in nodes for t in n.token_ids)


# --- entropies ------------------------------------------------------------------------------


def test_entropies_are_averaged_over_the_node_responses() -> None:
    responses = [[1, 2], [1, 3], [1, 2]]
    entropies = [[0.5, 1.0], [0.7, 2.0], [0.9, 4.0]]
    nodes = build_tree(responses, [1.0, 0.0, 1.0], entropies)
    by_prefix = {tuple(_prefix_of(nodes, n.id)): n.entropy for n in nodes}
    assert by_prefix[()] is None
    assert by_prefix[(1,)] == pytest.approx(0.7)
    assert by_prefix[(1, 2)] == pytest.approx(2.5)  # (1.0 + 4.0) / 2
    assert by_prefix[(1, 3)] == pytest.approx(2.0)


def test_entropy_and_reward_shapes_are_checked() -> None:
    with pytest.raises(ValueError, match="rewards"):
        build_tree([[1], [2]], [1.0])
    with pytest.raises(ValueError, match="entropy rows"):
        build_tree([[1], [2]], [1.0, 0.0], [[0.1]])
    with pytest.raises(ValueError, match="entropies"):
        build_tree([[1], [2]], [1.0, 0.0], [[0.1], [0.2, 0.3]])
    with pytest.raises(ValueError, match="finite"):
        build_tree([[1]], [math.nan])


# --- compaction -----------------------------------------------------------------------------


def test_compact_merges_chains() -> None:
    responses = [[1, 2, 3, 4, 5], [1, 2, 3, 6, 7], [8]]
    entropies = [[0.1, 0.2, 0.3, 0.4, 0.5], [0.3, 0.2, 0.3, 0.6, 0.7], [0.9]]
    raw = build_tree(responses, [1.0, 0.0, 1.0], entropies)
    assert len(raw) == 9
    nodes = compact(raw)
    table = [(n.id, n.parent, n.token_ids, n.depth, n.count, n.children) for n in nodes]
    assert table == [
        (0, None, [], 0, 3, [1, 2]),
        (1, 0, [1, 2, 3], 3, 2, [3, 4]),
        (2, 0, [8], 1, 1, []),
        (3, 1, [4, 5], 5, 1, []),
        (4, 1, [6, 7], 5, 1, []),
    ]
    assert [n.responses for n in nodes] == [[0, 1, 2], [0, 1], [2], [0], [1]]
    assert [n.value for n in nodes] == pytest.approx([2 / 3, 0.5, 1.0, 1.0, 0.0])
    # td and entropy of a merged node are those of its chain's first token
    assert nodes[0].td is None and nodes[0].entropy is None
    assert [n.td for n in nodes[1:]] == pytest.approx([0.5 - 2 / 3, 1 / 3, 0.5, -0.5])
    assert [n.entropy for n in nodes[1:]] == pytest.approx([0.2, 0.9, 0.4, 0.6])
    assert branch_points(nodes) == [0, 1]
    assert compact(nodes) == nodes  # idempotent


def test_compact_keeps_the_root_and_stops_where_a_response_ends() -> None:
    nodes = compact(build_tree([[1, 2, 3, 4], [1, 2]], [1.0, 0.0]))
    assert [(n.parent, n.token_ids, n.count) for n in nodes] == [
        (None, [], 2),
        (0, [1, 2], 2),  # the root's single child is merged below it, not into it
        (1, [3, 4], 1),  # response 1 ends at [1, 2]: D changes, so the chain breaks
    ]
    assert nodes[2].td == 0.5


def test_compact_invariants_on_random_groups() -> None:
    rng = np.random.default_rng(0)
    for _ in range(30):
        g = int(rng.integers(1, 9))
        responses = [rng.integers(0, 3, size=int(rng.integers(0, 9))).tolist() for _ in range(g)]
        rewards = rng.uniform(0, 1, size=g).tolist()
        raw = build_tree(responses, rewards)
        nodes = compact(raw)
        assert [n.id for n in nodes] == list(range(len(nodes)))
        # ids in breadth-first order: a level never starts before the previous one ends
        assert [len(node_path(nodes, n.id)) for n in nodes] == sorted(
            len(node_path(nodes, n.id)) for n in nodes
        )
        raw_by_prefix = {tuple(_prefix_of(raw, n.id)): n for n in raw}
        for n in nodes:
            prefix = _prefix_of(nodes, n.id)
            assert len(prefix) == n.depth
            members = [i for i, r in enumerate(responses) if r[: len(prefix)] == prefix]
            assert n.responses == members and n.count == len(members)
            assert n.reward_sum == pytest.approx(sum(rewards[i] for i in members))
            for c in n.children:
                assert nodes[c].parent == n.id
            if n.parent is not None:
                assert n.id in nodes[n.parent].children
                first = raw_by_prefix[tuple(prefix[: nodes[n.parent].depth + 1])]
                assert n.td == first.td
            # no single-child chain survives where D does not change
            if n.id != 0 and len(n.children) == 1:
                assert nodes[n.children[0]].count < n.count
        # every raw branch point survives compaction with the same prefix
        assert sorted(tuple(_prefix_of(raw, b)) for b in branch_points(raw)) == sorted(
            tuple(_prefix_of(nodes, b)) for b in branch_points(nodes)
        )


# --- advantages -----------------------------------------------------------------------------


def test_grpo_advantages_hand_values() -> None:
    sigma = math.sqrt(1 / 3)
    assert grpo_advantages([1.0, 0.0, 0.0, 1.0]) == pytest.approx(
        [0.5 / (sigma + 1e-6), -0.5 / (sigma + 1e-6), -0.5 / (sigma + 1e-6), 0.5 / (sigma + 1e-6)],
        rel=1e-12,
    )
    assert grpo_advantages([1.0, 0.0, 0.0, 1.0], normalise_std=False) == [0.5, -0.5, -0.5, 0.5]
    assert grpo_advantages([]) == []


def test_all_equal_rewards_give_zero_advantages() -> None:
    responses = [[1, 2, 3], [1, 4], [5]]
    assert grpo_advantages([0.7, 0.7, 0.7]) == [0.0, 0.0, 0.0]
    assert tempo_advantages(responses, [0.7, 0.7, 0.7]) == [[0.0] * 3, [0.0] * 2, [0.0]]
    assert token_td(responses, [0.7, 0.7, 0.7]) == [[0.0] * 3, [0.0] * 2, [0.0]]


def test_single_response_group_is_guarded() -> None:
    assert grpo_advantages([1.0]) == [0.0]
    assert grpo_advantages([1.0], normalise_std=False) == [0.0]
    assert tempo_advantages([[3, 4, 5]], [1.0]) == [[0.0, 0.0, 0.0]]


@pytest.mark.parametrize("normalise_std", [True, False])
def test_tempo_matches_naive_prefix_counting(normalise_std: bool) -> None:
    rng = np.random.default_rng(1)
    for trial in range(40):
        g = int(rng.integers(1, 9))
        # a tiny vocabulary makes shared prefixes, duplicates and early endings common
        responses = [rng.integers(0, 3, size=int(rng.integers(0, 7))).tolist() for _ in range(g)]
        if trial % 2:
            rewards = rng.integers(0, 2, size=g).astype(float).tolist()
        else:
            rewards = rng.normal(size=g).tolist()
        got = tempo_advantages(responses, rewards, normalise_std=normalise_std)
        ref = _naive_tempo(responses, rewards, 1e-6, normalise_std)
        assert [len(row) for row in got] == [len(r) for r in responses]
        for got_row, ref_row in zip(got, ref, strict=True):
            assert got_row == pytest.approx(ref_row, rel=1e-9, abs=1e-9)
