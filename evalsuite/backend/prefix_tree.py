"""Planning which prompt prefixes to compute once: the distinct prompts of a call become a tree of shared
token prefixes (the few-shot block of a task, deeper prefixes where prompts share more)."""
from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

# A forward call of its own costs about this many tokens of compute: sharing a prefix must save more than this
# to be worth a node, and scoring batches are cut rather than pad a row by more.
GROUP_OVERHEAD_TOKENS = 32


def common_prefix_len(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def distinct_prefix_tokens(seqs: Sequence[Sequence[int]]) -> int:
    """Nodes of the token trie of ``seqs``: the tokens any exact backend must run through the model."""
    ordered = sorted(set(map(tuple, seqs)))
    return sum(len(s) for s in ordered) - sum(common_prefix_len(a, b) for a, b in zip(ordered, ordered[1:]))


@dataclass
class PrefixNode:
    """A token prefix whose KV is computed once (extending its parent's): ``members`` are scored straight from
    it, ``children`` extend it further. The root has length 0."""

    length: int
    members: list[int] = field(default_factory=list)
    children: list[PrefixNode] = field(default_factory=list)

    def first(self) -> int:
        """A sequence index under this node, to read the prefix tokens from."""
        return self.members[0] if self.members else self.children[0].first()


def plan_prefix_tree(seqs: Sequence[Sequence[int]], overhead: int = GROUP_OVERHEAD_TOKENS) -> PrefixNode:
    """The prefix tree that computes ``seqs`` in the fewest tokens.

    Candidate nodes are the LCP tree of the sorted sequences (each range cut where its common prefix is
    shortest); a node costs its tokens beyond its parent plus ``overhead``, and is kept only where that beats
    running its sequences from the parent's prefix. Every sequence keeps at least one token after its node:
    its last token's logits are needed.
    """
    order = sorted(range(len(seqs)), key=lambda i: tuple(seqs[i]))
    adjacent = [common_prefix_len(seqs[a], seqs[b]) for a, b in zip(order, order[1:])]
    max_depth = sys.getrecursionlimit() // 8
    memo: dict[tuple[int, int, int], tuple[int, list[int], list[PrefixNode]]] = {}

    def flat(lo: int, hi: int, base: int):
        return sum(len(seqs[i]) - base for i in order[lo:hi]), order[lo:hi], []

    def solve(lo: int, hi: int, base: int, depth: int) -> tuple[int, list[int], list[PrefixNode]]:
        if hi - lo == 1 or depth > max_depth:
            return flat(lo, hi, base)
        if (lo, hi, base) in memo:
            return memo[lo, hi, base]
        shortest = min(adjacent[lo : hi - 1])
        cuts = [lo] + [i + 1 for i in range(lo, hi - 1) if adjacent[i] == shortest] + [hi]

        def below(b: int):  # the range run from a prefix of b tokens, its parts planned recursively
            if len(cuts) - 1 == hi - lo:
                return flat(lo, hi, b)
            parts = [solve(a, z, b, depth + 1) for a, z in zip(cuts, cuts[1:])]
            return sum(p[0] for p in parts), [m for p in parts for m in p[1]], [c for p in parts for c in p[2]]

        best = below(base)
        length = min(shortest, min(len(seqs[i]) for i in order[lo:hi]) - 1)
        if length > base:
            cost, members, children = below(length)
            if length - base + overhead + cost < best[0]:
                best = (length - base + overhead + cost, [], [PrefixNode(length, members, children)])
        memo[lo, hi, base] = best
        return best

    _, members, children = solve(0, len(seqs), 0, 0) if seqs else (0, [], [])
    return PrefixNode(0, members, children)
