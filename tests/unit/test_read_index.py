"""The ReadIndex bookkeeping (``rdb._read_index``): pure, no sockets."""

from __future__ import annotations

from rdb._read_index import AppliedWaiters, LeaderReads


def _leader(sent_rounds: int = 0) -> LeaderReads[str]:
    reads: LeaderReads[str] = LeaderReads()
    for _ in range(sent_rounds):
        reads.round_sent()
    return reads


def test_a_read_is_confirmed_only_by_a_round_sent_after_it_arrived() -> None:
    reads = _leader(sent_rounds=3)
    reads.acknowledged(1, "b", 3)  # round 3 went out before the read: it proves nothing
    reads.acknowledged(1, "c", 3)
    reads.request(1, 40, "r1")
    assert reads.confirmed(1, ["b", "c"]) == []
    assert reads.round_sent() == 4
    reads.acknowledged(1, "b", 4)
    [read] = reads.confirmed(1, ["b", "c"])
    assert (read.reply, read.index, read.probe) == ("r1", 40, 4)
    assert len(reads) == 0


def test_a_majority_of_the_voters_is_needed() -> None:
    reads = _leader()
    reads.request(2, 7, "r")
    reads.round_sent()
    voters = ["b", "c", "d", "e"]  # five members: the leader and two of these
    reads.acknowledged(2, "b", 1)
    assert reads.confirmed(2, voters) == []
    reads.acknowledged(2, "x", 1)  # not a voter (a learner): does not count
    assert reads.confirmed(2, voters) == []
    reads.acknowledged(2, "e", 1)
    assert [r.reply for r in reads.confirmed(2, voters)] == ["r"]


def test_reads_are_answered_in_arrival_order_as_rounds_confirm_them() -> None:
    reads = _leader()
    reads.request(1, 10, "first")
    reads.round_sent()  # round 1
    reads.request(1, 11, "second")  # needs round 2
    reads.acknowledged(1, "b", 1)
    assert [r.reply for r in reads.confirmed(1, ["b", "c"])] == ["first"]
    reads.round_sent()
    reads.acknowledged(1, "c", 2)
    assert [r.reply for r in reads.confirmed(1, ["b", "c"])] == ["second"]


def test_acknowledgements_count_only_in_their_term() -> None:
    reads = _leader()
    reads.round_sent()
    reads.acknowledged(1, "b", 1)
    reads.round_sent()
    reads.acknowledged(1, "b", 2)
    # Leader again in term 3: what was acknowledged in term 1 is forgotten.
    reads.request(3, 20, "r")
    reads.round_sent()
    assert reads.confirmed(3, ["b", "c"]) == []
    reads.acknowledged(3, "c", 3)
    assert [r.reply for r in reads.confirmed(3, ["b", "c"])] == ["r"]


def test_a_read_of_another_term_is_never_confirmed_only_dropped() -> None:
    reads = _leader()
    reads.request(1, 5, "old")
    reads.round_sent()
    reads.acknowledged(2, "b", 1)
    reads.acknowledged(2, "c", 1)
    assert reads.confirmed(2, ["b", "c"]) == []
    assert reads.term == 2
    assert [r.reply for r in reads.drop()] == ["old"]
    assert len(reads) == 0


def test_a_leader_without_other_voters_confirms_at_once() -> None:
    reads = _leader()
    reads.request(1, 3, "alone")
    assert [r.reply for r in reads.confirmed(1, [])] == ["alone"]


def test_applied_waiters_are_released_by_index() -> None:
    waiting: AppliedWaiters[str] = AppliedWaiters()
    waiting.add(12, "c")
    waiting.add(10, "a")
    waiting.add(10, "b")
    assert waiting.ready(9) == []
    assert waiting.ready(11) == [(10, "a"), (10, "b")]
    assert len(waiting) == 1
    assert waiting.ready(100) == [(12, "c")]
