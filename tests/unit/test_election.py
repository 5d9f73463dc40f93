"""Pre-vote (``rdb._election``): pure, no sockets."""

from __future__ import annotations

from typing import Any

from rdb._election import PreVoteAsk, PreVoteRound, would_vote

ASK = PreVoteAsk(term=6, last_index=40, last_term=5)


def _vote(ask: PreVoteAsk = ASK, **overrides: Any) -> bool:
    voter: dict[str, Any] = {
        "term": 5,
        "last_index": 40,
        "last_term": 5,
        "is_leader": False,
        "leader_contact_age": 2.0,
        "leader_link_up": True,
        "min_election_timeout": 0.6,
    }
    voter.update(overrides)
    return would_vote(ask, **voter)


def test_a_voter_without_a_live_leader_says_yes_to_an_up_to_date_candidate() -> None:
    assert _vote()
    assert _vote(PreVoteAsk(term=6, last_index=41, last_term=5))
    assert _vote(PreVoteAsk(term=6, last_index=2, last_term=6))  # a newer last term wins


def test_a_voter_that_hears_its_leader_says_no() -> None:
    assert not _vote(leader_contact_age=0.1)
    assert not _vote(is_leader=True, leader_contact_age=0.0)


def test_a_voter_whose_link_to_the_leader_closed_says_yes_at_once() -> None:
    # The leader's process died: its sockets closed; no need to wait out the timeout.
    assert _vote(leader_contact_age=0.1, leader_link_up=False)


def test_a_candidate_behind_in_term_or_log_gets_no() -> None:
    assert not _vote(PreVoteAsk(term=5, last_index=40, last_term=5))
    assert not _vote(PreVoteAsk(term=6, last_index=39, last_term=5))
    assert not _vote(PreVoteAsk(term=6, last_index=99, last_term=4))


def test_a_round_is_won_by_a_majority_counting_the_candidate() -> None:
    round_ = PreVoteRound(term=6, expires=1.0)
    assert not round_.won(["b", "c", "d", "e"])
    round_.answer("b", 6, True)
    round_.answer("c", 6, False)
    round_.answer("d", 5, True)  # an answer to an older round
    assert not round_.won(["b", "c", "d", "e"])
    round_.answer("e", 6, True)
    assert round_.won(["b", "c", "d", "e"])
    assert PreVoteRound(term=2, expires=1.0).won([])  # alone: its own yes is a majority
    three = PreVoteRound(term=2, expires=1.0)
    three.answer("x", 2, True)  # not a voter
    assert not three.won(["b", "c"])
