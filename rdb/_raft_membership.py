"""The membership half of ``RaftNode``: the leader's one-change-at-a-time rule, the
Raft port's utility add/remove commands turned off, and learners (non-voting nodes).

Mixed into ``rdb._raft.RaftNode`` (before ``SyncObj`` in its bases). The rules
themselves are the pure functions of ``rdb._membership``.

Threading: ``_SyncObj__changeCluster`` and the utility refusal run on the tick thread;
``membership_pending``, ``promotion_ready`` and ``is_learner`` read plain attributes
and are safe from any thread (a stale answer is harmless: the leader's check on the
tick thread is the one that counts).
"""

from __future__ import annotations

import logging
from typing import Any

from pysyncobj.config import FAIL_REASON

from rdb._membership import may_promote, pending_change_index

log = logging.getLogger("rdb.membership")

#: PySyncObj's utility commands over the Raft port that change the membership; anyone
#: holding the cluster secret could send them, bypassing every rule here.
DISABLED_UTILITY_COMMANDS = ("add", "remove")


def _refuse_utility(args: Any, callback: Any) -> None:
    """Answers a disabled utility command with FAIL (tick thread)."""
    log.warning(
        "refused a membership utility command over the Raft port",
        extra={"event": "membership_utility_refused", "fields": {"command": str(args)}},
    )
    callback(None, FAIL_REASON.REQUEST_DENIED)


def disable_utility_membership(transport: Any) -> None:
    """Replace the transport's utility add/remove handlers with a refusal."""
    for command in DISABLED_UTILITY_COMMANDS:
        transport.setOnUtilityMessageCallback(command, _refuse_utility)


class MembershipRules:
    """Leader-side rules for membership entries, and learner support."""

    #: Why the leader last refused a membership change (for logs and tests).
    last_membership_refusal: str = ""

    # --------------------------------------------------------------- the leader's rule

    def membership_pending(self) -> int | None:
        """Index of a membership entry above this node's commit index, if any."""
        raft: Any = self
        log_ = raft._SyncObj__raftLog
        commit = int(raft.raftCommitIndex)
        try:
            first = log_[0][1]
            last = log_[-1][1]
        except IndexError:
            return None
        parse = raft._SyncObj__parseChangeClusterRequest
        tail = ((i, parse(log_[i - first][0]) is not None) for i in range(max(commit + 1, first), last + 1))
        return pending_change_index(tail, commit)

    def _SyncObj__changeCluster(self, request: Any) -> bool:  # noqa: N802 - PySyncObj's name
        """The leader appends a membership entry only if this returns True (tick thread).

        Replaces PySyncObj's check, whose ``__changeClusterIDx`` is never set. Refused:
        before the leader's own no-op is applied (a change must follow an entry of the
        current term), while another membership entry is uncommitted, and the removal
        of the leader itself, which hands the leadership over first (the caller retries
        on the new leader).
        """
        raft: Any = self
        if raft.raftLastApplied < raft._SyncObj__noopIDx:
            self.last_membership_refusal = "leader_not_settled"
            return False
        pending = self.membership_pending()
        if pending is not None:
            self.last_membership_refusal = "membership_change_pending"
            log.info(
                "refused a membership change: the previous one is not committed yet",
                extra={
                    "event": "membership_change_refused",
                    "fields": {"change": [str(x) for x in request[:2]], "pending_index": pending},
                },
            )
            return False
        if request[0] == "rem" and raft.selfNode is not None and request[1] == raft.selfNode.id:
            self.last_membership_refusal = "leader_removal"
            log.info("handing the leadership over before this leader is removed", extra={"event": "leader_transfer"})
            raft.transferLeadership(None, None)
            return False
        done = bool(raft._SyncObj__doChangeCluster(request))
        self.last_membership_refusal = "" if done else "no_such_change"
        return done

    # --------------------------------------------------------------- learners

    @property
    def is_learner(self) -> bool:
        """True for a node that replicates the log but does not vote (read-only node)."""
        return getattr(self, "selfNode", None) is None

    def promotion_ready(self, address: str) -> bool:
        """True once a learner that will vote as ``address`` holds every entry the
        leader committed and the newest change for it is a committed add: it may then
        restart as a voter (``rdb._membership.may_promote``). Safe from any thread."""
        raft: Any = self
        if not self.is_learner:
            return False
        newest: tuple[int, str] | None = None
        try:
            members = {n.id for n in list(raft._SyncObj__otherNodes)}
            log_ = raft._SyncObj__raftLog
            first = log_[0][1]
            last = log_[-1][1]
            parse = raft._SyncObj__parseChangeClusterRequest
            for index in range(last, first - 1, -1):
                request = parse(log_[index - first][0])
                if request is not None and request[1] == address:
                    newest = (index, str(request[0]))
                    break
        except (IndexError, RuntimeError):  # the tick thread changed the log or the set: ask again later
            return False
        return may_promote(address in members, newest, last, int(raft.raftCommitIndex), raft.leader_commit_index)
