"""Tests of the pure follower AppendEntries planner ``rdb._append.plan_append``.

Logs are modelled as PySyncObj holds them: entries ``(command, index, term)`` with
contiguous indexes starting at ``first`` (1, or later after compaction). Every node's
log starts with the same entry ``(noop, 1, 0)``.

``apply_like_pysyncobj`` replays what PySyncObj's handler does with the rewritten
message (syncobj.py ~984-1006 in 0.3.17): reject when ``prev`` does not match; if
``prev`` is below our last index, truncate from ``prev + 1`` unless ``rdb._raft``
suppressed it; then append the entries.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rdb._append import AppendPlan, plan_append

Entry = tuple[bytes, int, int]


def entry(idx: int, term: int) -> Entry:
    return (f"cmd-{idx}-{term}".encode(), idx, term)


class Log:
    def __init__(self, terms: list[int], first: int = 1) -> None:
        self.first = first
        self.entries: list[Entry] = [entry(first + i, t) for i, t in enumerate(terms)]

    @property
    def last(self) -> int:
        return self.entries[-1][1]

    def term_at(self, index: int) -> int | None:
        if index < self.first or index > self.last:
            return None
        return self.entries[index - self.first][2]

    def pairs(self) -> list[tuple[int, int]]:
        return [(e[1], e[2]) for e in self.entries]

    def slice(self, lo: int, hi: int) -> list[Entry]:
        """Entries with index in [lo, hi]."""
        return [e for e in self.entries if lo <= e[1] <= hi]


def plan(log: Log, prev: int, prev_term: int, entries: list[Entry], verified: int = 0) -> AppendPlan | None:
    return plan_append(log.term_at, log.last, prev, prev_term, entries, verified)


def apply_like_pysyncobj(log: Log, p: AppendPlan | None) -> bool:
    """Mutate ``log`` as PySyncObj would after the rewrite. Returns False on a reject."""
    if p is None:
        return False
    assert log.term_at(p.prev_index) == p.prev_term, "a plan must keep a matching prev"
    if p.prev_index < log.last and not p.suppress_truncation:
        del log.entries[p.prev_index + 1 - log.first :]
    for e in p.entries:
        assert e[1] == log.last + 1, "appended entries must extend the log contiguously"
        log.entries.append(e)
    return True


# =========================================================================== prev mismatch


@pytest.mark.parametrize(
    ("prev", "prev_term"),
    [
        (3, 2),  # we hold index 3 with term 1
        (5, 1),  # we do not hold index 5
        (9, 3),
        (0, 0),  # index 0 is below our first entry
    ],
)
def test_prev_mismatch_returns_none(prev: int, prev_term: int) -> None:
    log = Log([0, 1, 1, 1])  # indexes 1..4
    assert plan(log, prev, prev_term, [entry(prev + 1, 3)]) is None
    assert plan(log, prev, prev_term, []) is None


def test_prev_below_compacted_start_returns_none() -> None:
    log = Log([2, 2, 3], first=10)  # indexes 10..12
    assert plan(log, 9, 2, [entry(10, 2)]) is None
    p = plan(log, 10, 2, [entry(11, 2), entry(12, 3), entry(13, 3)])
    assert p is not None
    assert p.decision == "append"
    assert (p.prev_index, p.prev_term) == (12, 3)
    assert p.entries == [entry(13, 3)]


# =========================================================================== append


def test_all_new_entries_are_appended_unchanged() -> None:
    log = Log([0, 1, 1])
    new = [entry(4, 2), entry(5, 2), entry(6, 3)]
    p = plan(log, 3, 1, new)
    assert p == AppendPlan(3, 1, new, False, 6, "append")


def test_duplicate_matching_entries_are_stripped() -> None:
    log = Log([0, 1, 1, 2, 2])  # 1..5
    msg = [entry(3, 1), entry(4, 2), entry(5, 2), entry(6, 2), entry(7, 3)]
    p = plan(log, 2, 1, msg)
    assert p is not None
    assert p.decision == "append"
    assert (p.prev_index, p.prev_term) == (5, 2)
    assert p.entries == [entry(6, 2), entry(7, 3)]
    assert p.suppress_truncation is False
    assert p.verified_index == 7
    apply_like_pysyncobj(log, p)
    assert log.pairs() == [(1, 0), (2, 1), (3, 1), (4, 2), (5, 2), (6, 2), (7, 3)]


def test_entries_only_compared_by_index_and_term() -> None:
    # Same (index, term) means the same entry in Raft: the command bytes are not compared.
    log = Log([0, 1])
    p = plan(log, 1, 0, [(b"other bytes", 2, 1), entry(3, 1)])
    assert p is not None
    assert p.entries == [entry(3, 1)]


# =========================================================================== conflicts


def test_conflict_truncates_from_the_conflicting_entry() -> None:
    log = Log([0, 1, 1, 2, 2, 2])  # 1..6; leader has term 3 from index 5
    msg = [entry(3, 1), entry(4, 2), entry(5, 3), entry(6, 3)]
    p = plan(log, 2, 1, msg)
    assert p == AppendPlan(4, 2, [entry(5, 3), entry(6, 3)], False, 6, "truncate_conflict")
    apply_like_pysyncobj(log, p)
    assert log.pairs() == [(1, 0), (2, 1), (3, 1), (4, 2), (5, 3), (6, 3)]


def test_conflict_at_first_entry_keeps_prev() -> None:
    log = Log([0, 1, 1, 1])
    msg = [entry(3, 2)]
    p = plan(log, 2, 1, msg)
    assert p == AppendPlan(2, 1, msg, False, 3, "truncate_conflict")
    apply_like_pysyncobj(log, p)
    assert log.pairs() == [(1, 0), (2, 1), (3, 2)]  # index 4 (term 1) went with the conflict


def test_conflict_shorter_message_than_log() -> None:
    log = Log([0, 1, 1, 1, 1, 1])  # 1..6
    p = plan(log, 1, 0, [entry(2, 1), entry(3, 4)])
    assert p is not None
    assert p.decision == "truncate_conflict"
    assert (p.prev_index, p.entries, p.verified_index) == (2, [entry(3, 4)], 3)
    apply_like_pysyncobj(log, p)
    assert log.pairs() == [(1, 0), (2, 1), (3, 4)]


# =========================================================================== all match / heartbeat


def test_heartbeat_at_our_last_index() -> None:
    log = Log([0, 1, 1])
    assert plan(log, 3, 1, []) == AppendPlan(3, 1, [], False, 3, "match")


def test_all_entries_match_up_to_our_last() -> None:
    log = Log([0, 1, 1, 2])
    p = plan(log, 1, 0, [entry(2, 1), entry(3, 1), entry(4, 2)])
    assert p == AppendPlan(4, 2, [], False, 4, "match")


@pytest.mark.parametrize("verified", [6, 7, 100])
def test_match_with_known_tail_moves_prev_to_our_last(verified: int) -> None:
    log = Log([0, 1, 1, 2, 2, 2])  # 1..6
    heartbeat = plan(log, 3, 1, [], verified=verified)
    assert heartbeat == AppendPlan(6, 2, [], False, 6, "match_known_tail")
    stale = plan(log, 2, 1, [entry(3, 1), entry(4, 2)], verified=verified)
    assert stale == AppendPlan(6, 2, [], False, 6, "match_known_tail")
    before = log.pairs()
    apply_like_pysyncobj(log, stale)
    assert log.pairs() == before


@pytest.mark.parametrize("verified", [0, 3, 4, 5])
def test_match_with_unverified_tail_suppresses_truncation(verified: int) -> None:
    log = Log([0, 1, 1, 2, 2, 2])  # 1..6, our tail after 4 is not known to match
    p = plan(log, 2, 1, [entry(3, 1), entry(4, 2)], verified=verified)
    assert p == AppendPlan(4, 2, [], True, 4, "match_keep_unverified_tail")
    heartbeat = plan(log, 3, 1, [], verified=verified)
    assert heartbeat == AppendPlan(3, 1, [], True, 3, "match_keep_unverified_tail")
    before = log.pairs()
    apply_like_pysyncobj(log, p)
    apply_like_pysyncobj(log, heartbeat)
    assert log.pairs() == before


def test_stale_resend_without_plan_would_have_truncated() -> None:
    """The PySyncObj bug this planner exists for: a re-sent, matching message below our
    last index. Unrewritten, PySyncObj would cut the tail; rewritten, nothing is lost."""
    msg = [entry(2, 1), entry(3, 1)]
    unrewritten = AppendPlan(1, 0, msg, False, 3, "raw")
    naive = Log([0, 1, 1, 1, 1])
    apply_like_pysyncobj(naive, unrewritten)
    assert naive.last == 3  # the bug: acknowledged entries 4 and 5 vanish
    for verified in (0, 5):
        kept = Log([0, 1, 1, 1, 1])
        apply_like_pysyncobj(kept, plan(kept, 1, 0, msg, verified))
        assert kept.last == 5


def test_plan_is_pure() -> None:
    log = Log([0, 1, 1])
    msg = [entry(2, 1), entry(3, 1), entry(4, 1)]
    copy_msg = list(msg)
    p1 = plan(log, 1, 0, msg)
    p2 = plan(log, 1, 0, msg)
    assert p1 == p2
    assert msg == copy_msg
    assert p1 is not None
    assert p1.entries is not msg


# =========================================================================== properties


@st.composite
def diverged_logs(draw: st.DrawFn) -> tuple[Log, Log, int, int]:
    """(leader, follower, common, verified): logs sharing the first ``common`` indexes.

    Terms never decrease along a log. After the common prefix the leader uses even
    terms and the follower odd ones, so no entry past the prefix has the same (index,
    term) in both (Raft's Log Matching property). The follower may have compacted a
    part of the common prefix. ``verified`` is a sound "known to match" bound.
    """
    prefix = [0, *sorted(draw(st.lists(st.integers(1, 2), max_size=6)))]
    common = len(prefix)
    base = prefix[-1]
    leader_tail = sorted(draw(st.lists(st.sampled_from([4, 6, 8]), max_size=8)))
    follower_tail = sorted(draw(st.lists(st.sampled_from([3, 5, 7]), max_size=8)))
    assert all(t > base for t in leader_tail + follower_tail)
    leader = Log(prefix + leader_tail)
    first = draw(st.integers(1, common))
    follower = Log((prefix + follower_tail)[first - 1 :], first=first)
    verified = draw(st.integers(0, common))
    return leader, follower, common, verified


def matching_prefix(follower: Log, leader: Log) -> int:
    """Highest index up to which the follower's log equals the leader's."""
    n = follower.first - 1
    while n + 1 <= follower.last and leader.term_at(n + 1) == follower.term_at(n + 1):
        n += 1
    return n


@st.composite
def leader_message(draw: st.DrawFn, leader: Log) -> tuple[int, int, list[Entry]]:
    prev = draw(st.integers(1, leader.last))
    hi = draw(st.integers(prev, leader.last))
    term = leader.term_at(prev)
    assert term is not None
    return prev, term, leader.slice(prev + 1, hi)


@settings(max_examples=400, derandomize=True, deadline=None)
@given(data=st.data(), logs=diverged_logs())
def test_one_message_never_loses_a_matching_entry(data: st.DataObject, logs: tuple[Log, Log, int, int]) -> None:
    leader, follower, common, verified = logs
    prev, prev_term, entries = data.draw(leader_message(leader))
    before = matching_prefix(follower, leader)
    assert before >= common
    before_pairs = follower.pairs()
    p = plan_append(follower.term_at, follower.last, prev, prev_term, entries, verified)
    if follower.term_at(prev) != prev_term:
        assert p is None
        return
    assert p is not None
    assert p.verified_index >= prev
    apply_like_pysyncobj(follower, p)
    after = matching_prefix(follower, leader)
    # Nothing the follower shared with the leader is ever removed...
    assert after >= before
    assert follower.pairs()[: before - follower.first + 1] == before_pairs[: before - follower.first + 1]
    # ...the message's own entries are now held...
    for e in entries:
        assert follower.term_at(e[1]) == e[2]
    assert after >= (entries[-1][1] if entries else prev)
    # ...and the first verified_index entries are the leader's.
    assert p.verified_index <= after
    assert follower.slice(1, p.verified_index) == leader.slice(follower.first, p.verified_index)
    # A truncation happens only on a real conflict.
    if p.decision != "truncate_conflict":
        assert len(follower.pairs()) >= len(before_pairs)


@settings(max_examples=300, derandomize=True, deadline=None)
@given(data=st.data(), logs=diverged_logs())
def test_message_sequence_converges_without_losing_matched_entries(
    data: st.DataObject, logs: tuple[Log, Log, int, int]
) -> None:
    """Stale, duplicated and reordered messages of one leader term, with the verified
    index tracked the way ``rdb._raft`` does."""
    leader, follower, _common, _ = logs
    verified = 0  # new term: nothing verified yet
    best = matching_prefix(follower, leader)
    for _ in range(data.draw(st.integers(1, 8))):
        prev, prev_term, entries = data.draw(leader_message(leader))
        p = plan_append(follower.term_at, follower.last, prev, prev_term, entries, verified)
        if apply_like_pysyncobj(follower, p):
            assert p is not None
            new_last = p.entries[-1][1] if p.entries else follower.last
            verified = max(p.verified_index, min(verified, new_last))
        now = matching_prefix(follower, leader)
        assert now >= best, "the log shrank below entries it shared with the leader"
        best = now
        assert verified <= now, "verified must never claim more than really matches"
        assert follower.slice(1, verified) == leader.slice(follower.first, verified)
    # Finally the leader sends everything after the follower's first entry.
    tail_before = follower.last
    first_term = follower.term_at(follower.first)
    assert first_term is not None
    p = plan_append(
        follower.term_at,
        follower.last,
        follower.first,
        first_term,
        leader.slice(follower.first + 1, leader.last),
        verified,
    )
    assert apply_like_pysyncobj(follower, p)
    assert p is not None
    # The follower now holds the whole leader log...
    assert matching_prefix(follower, leader) == leader.last
    assert follower.slice(1, leader.last) == leader.slice(follower.first, leader.last)
    # ...plus, at most, an old tail nothing has conflicted with yet (kept, not truncated).
    if follower.last > leader.last:
        assert p.suppress_truncation
        assert follower.last == tail_before


@settings(max_examples=200, derandomize=True, deadline=None)
@given(
    terms=st.lists(st.integers(0, 3), min_size=1, max_size=8).map(sorted),
    prev=st.integers(0, 10),
    prev_term=st.integers(0, 3),
    entries=st.lists(st.integers(0, 4), max_size=5),
    verified=st.integers(0, 10),
)
def test_plan_invariants_on_arbitrary_input(
    terms: list[int], prev: int, prev_term: int, entries: list[int], verified: int
) -> None:
    log = Log(terms)
    msg = [entry(prev + 1 + i, t) for i, t in enumerate(entries)]
    p = plan_append(log.term_at, log.last, prev, prev_term, msg, verified)
    if log.term_at(prev) != prev_term:
        assert p is None
        return
    assert p is not None
    assert log.term_at(p.prev_index) == p.prev_term
    assert p.entries == msg[len(msg) - len(p.entries) :]  # a suffix of the message
    assert p.decision in {"append", "truncate_conflict", "match", "match_known_tail", "match_keep_unverified_tail"}
    if p.entries:
        assert p.entries[0][1] == p.prev_index + 1
        assert not p.suppress_truncation
        assert p.verified_index == p.entries[-1][1]
        assert log.term_at(p.entries[0][1]) != p.entries[0][2]
    else:
        assert p.suppress_truncation == (p.prev_index < log.last)
        assert p.verified_index == p.prev_index
