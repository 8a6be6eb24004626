"""Prefix tree (P2T) over a group of sampled responses, with TEMPO prefix values.

Definitions (metric-definitions §13, after ``fatebreaker/tempo``'s
``compute_tempo_outcome_advantage``). The G responses to one prompt are inserted into a trie
keyed by token id. A node ``s`` is a token prefix; ``D(s)`` is the set of responses that start
with it (the root, the empty prefix, holds the whole group) and its value is the mean outcome

    V(s) = mean_{k in D(s)} r_k                        (each response weighted equally).

For token t of response i, with ``s_t`` the prefix before it and ``s_{t+1}`` the one ending with
it, the TD term is ``V(s_{t+1}) - V(s_t)`` and the TEMPO advantage is

    A_{i,t} = (r_i - mu_G + V(s_{t+1}) - V(s_t)) / (sigma_G + eps)

with ``mu_G`` and the unbiased ``sigma_G`` over the group's rewards (the division is dropped
when ``normalise_std`` is False, as Dr.GRPO does). The TD term is exactly 0 wherever a token
does not split the group (``D(s_{t+1}) = D(s_t)``), in particular once a response is alone.

A response that ends at a prefix another one continues also splits the group there: the
continuing token's node has a smaller ``D``, hence a TD term, although its parent has a single
child. This is what the reference code does (it compares against the shorter row's padding).

Responses are plain lists of token ids without padding; strip it before calling. Building the
trie is inherently sequential, and G * T is ~10^4 for a group, so this module is plain Python,
O(G * T), in float64.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass
class TreeNode:
    """One node of the prefix tree; ``nodes[i].id == i`` in every list this module returns.

    Attributes:
        id: index in the node list; 0 is the root (the empty prefix).
        parent: id of the parent node, None at the root.
        token_ids: tokens on the edge into this node (one in the raw trie, a chain after
            :func:`compact`; empty at the root).
        depth: number of tokens in the prefix ending at this node.
        count: ``|D(s)|``, responses passing through this node.
        reward_sum: sum of their rewards.
        responses: indices of the responses in ``D(s)``, ascending.
        children: ids of the child nodes, in order of first appearance in the group.
        td: ``V(s) - V(parent)``, the TD term of the first token on the edge into this node
            (exactly 0.0 where that token does not split the group or all rewards are equal;
            None at the root).
        entropy: entropy at the position that chose the first token on the edge, averaged over
            the responses in ``D(s)`` (they share the context, so the values only differ by
            numerical noise); None when no entropies were given, and at the root.
    """

    id: int
    parent: int | None
    token_ids: list[int]
    depth: int
    count: int
    reward_sum: float
    responses: list[int] = field(default_factory=list)
    children: list[int] = field(default_factory=list)
    td: float | None = None
    entropy: float | None = None

    @property
    def value(self) -> float:
        """``V(s)``, the mean reward of ``D(s)``; NaN for an empty group's root."""
        return self.reward_sum / self.count if self.count else math.nan


def _check_rewards(rewards: Sequence[float]) -> list[float]:
    out = [float(r) for r in rewards]
    if not all(math.isfinite(r) for r in out):
        raise ValueError("rewards must be finite")
    return out


def _check_entropies(
    responses: Sequence[Sequence[int]], entropies: Sequence[Sequence[float]] | None
) -> None:
    if entropies is None:
        return
    if len(entropies) != len(responses):
        raise ValueError(f"{len(responses)} responses but {len(entropies)} entropy rows")
    for i, (resp, ent) in enumerate(zip(responses, entropies, strict=True)):
        if len(ent) != len(resp):
            raise ValueError(f"response {i} has {len(resp)} tokens but {len(ent)} entropies")


def _build(
    responses: Sequence[Sequence[int]],
    rewards: Sequence[float],
    entropies: Sequence[Sequence[float]] | None = None,
) -> tuple[list[TreeNode], list[list[int]]]:
    """The raw trie, and for each response the id of the node each of its tokens enters."""
    if len(responses) != len(rewards):
        raise ValueError(f"{len(responses)} responses but {len(rewards)} rewards")
    rs = _check_rewards(rewards)
    _check_entropies(responses, entropies)
    nodes = [TreeNode(id=0, parent=None, token_ids=[], depth=0, count=0, reward_sum=0.0)]
    child_of: dict[tuple[int, int], int] = {}  # (parent id, token id) -> child id
    entropy_sum: list[float] = [0.0]
    # TD terms come from sums of r - r_0 rather than of r: with all rewards equal they are then
    # exactly 0 (plain means of 0.7s differ in the last bit, and 1/eps would amplify that).
    shift = rs[0] if rs else 0.0
    shifted_sum: list[float] = [0.0]
    paths: list[list[int]] = []
    for i, (resp, r) in enumerate(zip(responses, rs, strict=True)):
        node = nodes[0]
        node.count += 1
        node.reward_sum += r
        node.responses.append(i)
        shifted_sum[0] += r - shift
        path: list[int] = []
        for t, raw_tok in enumerate(resp):
            tok = int(raw_tok)  # accepts numpy / 0-d tensor ids; the dict key must be an int
            key = (node.id, tok)
            cid = child_of.get(key)
            if cid is None:
                cid = len(nodes)
                child_of[key] = cid
                new = TreeNode(cid, node.id, token_ids=[tok], depth=t + 1, count=0, reward_sum=0.0)
                nodes.append(new)
                entropy_sum.append(0.0)
                shifted_sum.append(0.0)
                node.children.append(cid)
            node = nodes[cid]
            node.count += 1
            node.reward_sum += r
            node.responses.append(i)
            shifted_sum[cid] += r - shift
            if entropies is not None:
                entropy_sum[cid] += float(entropies[i][t])
            path.append(cid)
        paths.append(path)
    for n in nodes[1:]:
        assert n.parent is not None
        # Equal D gives bit-identical sums and counts, so a non-splitting token's TD is exactly 0.
        n.td = shifted_sum[n.id] / n.count - shifted_sum[n.parent] / nodes[n.parent].count
        if entropies is not None:
            n.entropy = entropy_sum[n.id] / n.count
    return nodes, paths


def build_tree(
    responses: Sequence[Sequence[int]],
    rewards: Sequence[float],
    entropies: Sequence[Sequence[float]] | None = None,
) -> list[TreeNode]:
    """The raw prefix tree, one token per edge.

    Args:
        responses: G token-id lists (no padding; lengths may differ; empty allowed).
        rewards: G scalar rewards.
        entropies: optional G lists, ``entropies[i][t]`` the entropy at the position that chose
            ``responses[i][t]`` (same lengths as ``responses``).

    Returns:
        Nodes indexed by id: the root first, then nodes in order of creation (response 0's
        tokens, then each later response's new suffix). Identical responses share all nodes.
    """
    return _build(responses, rewards, entropies)[0]


def compact(nodes: list[TreeNode]) -> list[TreeNode]:
    """Merge single-child chains into one node per chain, for display.

    A node merges into its only child when no response ends at it (the child has the same
    ``count``), so every merged chain has one ``D`` and ``count``, ``reward_sum``, ``responses``
    and ``value`` are preserved. The merged node's ``token_ids`` are the chain's, concatenated;
    its ``depth`` is the chain end's; its ``td`` and ``entropy`` are those of the chain's first
    token (the one that may split the group). The root is kept as is; ids are renumbered
    0..n-1 in breadth-first order (children in their stored order). Idempotent.
    """
    out: list[TreeNode] = []
    queue: deque[tuple[int, int | None]] = deque([(0, None)])  # (chain head, new parent id)
    while queue:
        head, new_parent = queue.popleft()
        tail = nodes[head]
        tokens = list(tail.token_ids)
        while head != 0 and len(tail.children) == 1:
            child = nodes[tail.children[0]]
            if child.count != tail.count:
                break  # a response ends at `tail`: merging would change D
            tail = child
            tokens.extend(child.token_ids)
        first = nodes[head]
        new_id = len(out)
        out.append(
            TreeNode(
                id=new_id,
                parent=new_parent,
                token_ids=tokens,
                depth=tail.depth,
                count=tail.count,
                reward_sum=tail.reward_sum,
                responses=list(tail.responses),
                td=first.td,
                entropy=first.entropy,
            )
        )
        if new_parent is not None:
            out[new_parent].children.append(new_id)
        queue.extend((c, new_id) for c in tail.children)
    return out


def _group_stats(rewards: Sequence[float], eps: float, normalise_std: bool) -> tuple[float, float]:
    """Group mean and the advantage denominator (``sigma + eps``, or 1 without std).

    ``sigma`` is the unbiased std, taken as 0 for G = 1: one sample has no spread, and the
    reference code's NaN there would poison every advantage (whose numerators are 0 anyway).
    """
    # Shifted mean: exactly r_0 when all rewards are equal, so r - mu is then exactly 0.
    mu = rewards[0] + math.fsum(r - rewards[0] for r in rewards) / len(rewards)
    sigma = statistics.stdev(rewards) if len(rewards) > 1 else 0.0
    return mu, (sigma + eps if normalise_std else 1.0)


def grpo_advantages(
    rewards: Sequence[float], eps: float = 1e-6, normalise_std: bool = True
) -> list[float]:
    """GRPO outcome advantages ``(r_i - mu) / (sigma + eps)`` (``r_i - mu`` without std).

    ``sigma`` is the unbiased std. A group of one gets 0.0 (``r - mu`` is 0; the std guard only
    avoids NaN). An empty group gives an empty list.
    """
    rs = _check_rewards(rewards)
    if not rs:
        return []
    mu, denom = _group_stats(rs, eps, normalise_std)
    return [(r - mu) / denom for r in rs]


def _td(node: TreeNode) -> float:
    assert node.td is not None  # only the root has none, and no token enters the root
    return node.td


def token_td(responses: Sequence[Sequence[int]], rewards: Sequence[float]) -> list[list[float]]:
    """Per token ``V(s_{t+1}) - V(s_t)``; exactly 0 where the token does not split the group.

    Returns:
        G lists, the i-th as long as ``responses[i]``.
    """
    nodes, paths = _build(responses, rewards)
    return [[_td(nodes[n]) for n in path] for path in paths]


def tempo_advantages(
    responses: Sequence[Sequence[int]],
    rewards: Sequence[float],
    eps: float = 1e-6,
    normalise_std: bool = True,
) -> list[list[float]]:
    """TEMPO per-token advantages ``(r_i - mu + V(s_{t+1}) - V(s_t)) / (sigma + eps)``.

    Same guards as :func:`grpo_advantages` (G = 1 gives zeros: its TD terms are 0 too).

    Returns:
        G lists, the i-th as long as ``responses[i]``.
    """
    tds = token_td(responses, rewards)
    rs = _check_rewards(rewards)
    if not rs:
        return []
    mu, denom = _group_stats(rs, eps, normalise_std)
    return [[(r - mu + d) / denom for d in row] for r, row in zip(rs, tds, strict=True)]


def branch_points(nodes: Sequence[TreeNode]) -> list[int]:
    """Ids of the nodes with two or more children, ascending."""
    return [n.id for n in nodes if len(n.children) >= 2]


def node_path(nodes: Sequence[TreeNode], node_id: int) -> list[int]:
    """Node ids from the root to ``node_id``, both included."""
    if not 0 <= node_id < len(nodes):
        raise ValueError(f"no node {node_id} in a tree of {len(nodes)} nodes")
    path = [node_id]
    parent = nodes[node_id].parent
    while parent is not None:
        path.append(parent)
        parent = nodes[parent].parent
    return path[::-1]
