"""Pre-vote (Raft thesis, section 9.6): pure, no I/O, no clock.

Before a node stands for election (which raises its term and deposes any leader that
hears of it), it asks the other voters whether they *would* vote for it. A voter says
yes only if the candidate's log is at least as up to date as its own and it has no live
leader of its own: it is not the leader itself, and it has not heard from its leader
within the minimum election timeout or has lost its link to it. So a node that only
lost its own link to a healthy leader (a partition, a pause) cannot disrupt it, while a
leader that died (both followers saw its connections close) is replaced at once.

The node stands once a majority of the voters (itself included) said yes.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class PreVoteAsk:
    """A pre-vote question: the term the candidate would stand in, and its last entry."""

    term: int
    last_index: int
    last_term: int


def would_vote(
    ask: PreVoteAsk,
    *,
    term: int,
    last_index: int,
    last_term: int,
    is_leader: bool,
    leader_contact_age: float,
    leader_link_up: bool,
    min_election_timeout: float,
) -> bool:
    """This voter's answer to ``ask``, given its own term, last entry and leader."""
    if ask.term <= term:
        return False  # the candidate is behind: it could not win that term
    if (ask.last_term, ask.last_index) < (last_term, last_index):
        return False  # its log lacks entries this voter has (they may be committed)
    if is_leader:
        return False
    return not (leader_link_up and leader_contact_age < min_election_timeout)


@dataclass
class PreVoteRound:
    """One node's pre-vote: the answers it has for standing in ``term``."""

    term: int
    expires: float
    yes: set[Hashable] = field(default_factory=set)

    def answer(self, voter: Hashable, term: int, granted: bool) -> None:
        if granted and term == self.term:
            self.yes.add(voter)

    def won(self, voters: Iterable[Hashable]) -> bool:
        """True once a majority of the cluster (``voters``: the others; this node says
        yes to itself) would vote for it."""
        others = list(voters)
        return len(self.yes.intersection(others)) + 1 > (len(others) + 1) / 2
