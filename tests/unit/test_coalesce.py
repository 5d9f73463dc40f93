"""Merging the Raft messages held back during one group commit (rdb._append.coalesce_outgoing)."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from rdb._append import coalesce_outgoing


def append(prev: int, prev_term: int, entries: list[tuple[int, int]], commit: int = 0, term: int = 3) -> dict[str, Any]:
    return {
        "type": "append_entries",
        "term": term,
        "commit_index": commit,
        "prevLogIdx": prev,
        "prevLogTerm": prev_term,
        "entries": [(b"c", i, t) for i, t in entries],
    }


def ack(next_idx: int) -> dict[str, Any]:
    return {"type": "next_node_idx", "next_node_idx": next_idx, "reset": False, "success": True}


def test_contiguous_appends_to_one_node_merge() -> None:
    out = coalesce_outgoing([("a", append(4, 3, [(5, 3)], 2)), ("a", append(5, 3, [(6, 3), (7, 3)], 4))])
    assert len(out) == 1
    node, msg = out[0]
    assert node == "a" and [e[1] for e in msg["entries"]] == [5, 6, 7]
    assert msg["prevLogIdx"] == 4 and msg["commit_index"] == 4


def test_merged_appends_carry_the_later_round_for_read_index() -> None:
    first, second = append(4, 3, [(5, 3)]), append(5, 3, [(6, 3)])
    first["probe"], second["probe"] = 7, 8
    [(_, msg)] = coalesce_outgoing([("a", first), ("a", second)])
    # The follower's answer echoes it: the read that waits for round 8 is confirmed.
    assert msg["probe"] == 8


def test_non_contiguous_or_other_term_or_other_node_stay_apart() -> None:
    gap = coalesce_outgoing([("a", append(4, 3, [(5, 3)])), ("a", append(6, 3, [(7, 3)]))])
    assert len(gap) == 2
    terms = coalesce_outgoing([("a", append(4, 3, [(5, 3)])), ("a", append(5, 3, [(6, 4)], term=4))])
    assert len(terms) == 2
    nodes = coalesce_outgoing([("a", append(4, 3, [(5, 3)])), ("b", append(5, 3, [(6, 3)]))])
    assert len(nodes) == 2


def test_acks_collapse_to_the_latest_but_resets_and_other_kinds_keep_order() -> None:
    reset = {"type": "next_node_idx", "next_node_idx": 3, "reset": True, "success": False}
    vote = {"type": "response_vote", "term": 5}
    out = coalesce_outgoing([("l", ack(5)), ("l", ack(7)), ("l", reset), ("l", ack(9)), ("l", vote)])
    assert [m for _, m in out] == [ack(7), reset, ack(9), vote]


def test_chunked_transmissions_are_never_merged() -> None:
    chunk = dict(append(4, 3, []), transmission="start", data=b"x")
    out = coalesce_outgoing([("a", append(3, 3, [(4, 3)])), ("a", chunk)])
    assert len(out) == 2


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.lists(st.integers(min_value=1, max_value=3), min_size=1, max_size=20))
def test_merged_appends_carry_exactly_the_same_entries_in_order(sizes: list[int]) -> None:
    held, idx = [], 10
    for n in sizes:
        held.append(("f", append(idx, 3, [(idx + k + 1, 3) for k in range(n)], commit=idx)))
        idx += n
    out = coalesce_outgoing(held)
    flat = [e for _, m in out for e in m["entries"]]
    assert flat == [e for _, m in held for e in m["entries"]]
    assert len(out) == 1 and out[0][1]["commit_index"] == held[-1][1]["commit_index"]
