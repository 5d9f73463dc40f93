"""Correctness checkers for chaos histories: pure functions, no I/O, no clock except the
linearizability search's own time cap.

Every checker returns a ``CheckResult`` whose ``status`` is

- ``"fail"``: at least one violation was found (``violations`` lists up to
  ``MAX_VIOLATIONS`` of them, ``violation_count`` counts them all);
- ``"inconclusive"``: no violation was found, but something could not be checked
  (a search cap was hit, a node's final read failed, the config log does not cover a
  revision an answer reports...); ``inconclusive`` says what. Never a pass;
- ``"pass"``: everything was checked and nothing is wrong.

History format (one dict per operation, as the runner records it)::

    {"id", "process", "kind": "register"|"set"|"dataplane"|"config",
     "f": "read"|"write"|"cas"|"add"|"nfs"|"cifs"|"put_row"|"delete_row",
     "key", "value", "node", "invoke", "complete" (None: never completed),
     "outcome": "ok"|"fail"|"unknown", "result"}

``outcome`` "fail" means definitely not applied; "unknown" means it may have been
applied, at any time after its invoke. The checkers judge the product against the
independent model in ``chaos._model``; they never import the product's code.
"""

from __future__ import annotations

import json
import math
import time
from bisect import bisect_right
from collections import defaultdict
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

from chaos._apps import ONTAP, AppModel

Op = Mapping[str, Any]

MAX_VIOLATIONS = 50
#: Ops shown around a non-linearizable point.
WINDOW_OPS = 20

DEFAULT_DEPENDENCIES: dict[str, frozenset[str]] = dict(ONTAP.dependencies)


# ------------------------------------------------------------------ results


@dataclass
class CheckResult:
    """The verdict of one checker. ``status`` is "pass" only when nothing is wrong *and*
    everything was checked; any violation makes it "fail"; otherwise anything left
    unchecked makes it "inconclusive" (with the reasons in ``inconclusive``)."""

    name: str
    status: str
    violations: list[dict[str, Any]] = field(default_factory=list)
    violation_count: int = 0
    stats: dict[str, Any] = field(default_factory=dict)
    inconclusive: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.status == "pass"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status,
            "violation_count": self.violation_count,
            "violations": list(self.violations),
            "inconclusive": list(self.inconclusive),
            "stats": dict(self.stats),
        }


class _Findings:
    """Collects violations (capped) and reasons for inconclusiveness (deduplicated)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.violations: list[dict[str, Any]] = []
        self.count = 0
        self.reasons: list[str] = []
        self.stats: dict[str, Any] = {}

    def violation(self, kind: str, **details: Any) -> None:
        self.count += 1
        if len(self.violations) < MAX_VIOLATIONS:
            self.violations.append({"type": kind, **details})

    def unsure(self, reason: str) -> None:
        if reason not in self.reasons:
            self.reasons.append(reason)

    def result(self) -> CheckResult:
        status = "fail" if self.count else "inconclusive" if self.reasons else "pass"
        return CheckResult(self.name, status, self.violations, self.count, self.stats, self.reasons)


def _canon(value: Any) -> str:
    """A canonical text for a JSON value (equal JSON values, equal texts)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=repr)


def _time(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        return None
    return float(value)


def _brief(op: Op) -> dict[str, Any]:
    """The fields of an op worth showing in a violation."""
    return {
        k: op.get(k) for k in ("id", "process", "f", "key", "value", "node", "invoke", "complete", "outcome", "result")
    }


# ------------------------------------------------------------------ linearizability

# Operation kinds inside the search.
_READ, _WRITE, _CAS_OK, _CAS_FAIL, _CAS_ANY = range(5)
_INF = math.inf


@dataclass
class _Reg:
    """One register op prepared for the search (values are interned ids)."""

    op: Op
    kind: int
    a: int  # read: value read; write: new value; cas: expected
    b: int  # cas: new value
    invoke: float
    ret: float  # +inf: may take effect at any later time, or never
    required: bool  # must be linearized (it completed ok)
    group: int = -1  # interchangeable unknown ops: used in ``rank`` order only
    rank: int = 0


class _Unseen:
    """The one value that stands for every value no op ever observes."""

    MARK = "<a value no read or cas observed>"


class _Interner:
    def __init__(self) -> None:
        self.ids: dict[str, int] = {_canon(None): 0}
        self.values: list[Any] = [None]

    def __call__(self, value: Any) -> int:
        text = _canon(value)
        got = self.ids.get(text)
        if got is None:
            got = self.ids[text] = len(self.values)
            self.values.append(value)
        return got


@dataclass
class _Prepared:
    regs: list[_Reg]
    values: list[Any]
    dropped: int = 0  # fail ops, and reads that did not complete ok
    pruned: int = 0  # unknown writes/cas that cannot matter
    promoted: int = 0  # unknown writes/cas bounded by the first read of their unique value
    malformed: list[Op] = field(default_factory=list)


def _prepare_register(ops: Sequence[Op]) -> _Prepared:
    """Turn one key's ops into search ops, with sound reductions for unknown writes.

    A value is *observed* if a completed read returned it or any cas expects it.

    1. Promotion: an unknown write/cas whose value is read by a completed op (or expected
       by a successful cas), and which is the only writer of that value (the initial None
       counts as a writer of None), must have taken effect before every such observer; its
       return time becomes the earliest observer's completion, which turns an open-ended
       op into an ordinary one.
    2. Pruning: an unknown write/cas whose value is not observed can be dropped when the
       key has no failed cas: it could only turn the register into a value that every
       later op ignores until the next write, so a linearization with it is one without it.
    3. Collapse: every value that is not observed is replaced by one id, ``UNSEEN``. No read
       or cas can tell such values apart (a failed cas only sees "not the expected one").
    4. Grouping: unknown ops that still write ``UNSEEN`` are interchangeable within a group
       (writes; cas with the same expected value) except for their invoke times, so the
       search uses the members of a group in invoke order only (``_Reg.group``/``rank``).
    """
    intern = _Interner()
    regs: list[_Reg] = []
    prep = _Prepared(regs, intern.values)
    for op in ops:
        outcome = op.get("outcome")
        f = op.get("f")
        invoke = _time(op.get("invoke"))
        complete = _time(op.get("complete"))
        if outcome == "fail":
            prep.dropped += 1
            continue
        if invoke is None or outcome not in ("ok", "unknown") or (complete is not None and complete < invoke):
            prep.malformed.append(op)
            continue
        done = outcome == "ok" and complete is not None
        if f == "read":
            if done:
                regs.append(_Reg(op, _READ, intern(op.get("result")), 0, invoke, float(complete or 0.0), True))
            else:
                prep.dropped += 1
        elif f == "write":
            ret = float(complete) if done and complete is not None else _INF
            regs.append(_Reg(op, _WRITE, intern(op.get("value")), 0, invoke, ret, done))
        elif f == "cas":
            value = op.get("value")
            if not isinstance(value, list | tuple) or len(value) != 2:
                prep.malformed.append(op)
                continue
            expected, new = intern(value[0]), intern(value[1])
            if not done:
                regs.append(_Reg(op, _CAS_ANY, expected, new, invoke, _INF, False))
            elif op.get("result") is True:
                regs.append(_Reg(op, _CAS_OK, expected, new, invoke, float(complete or 0.0), True))
            elif op.get("result") is False:
                regs.append(_Reg(op, _CAS_FAIL, expected, 0, invoke, float(complete or 0.0), True))
            else:
                prep.malformed.append(op)
        else:
            prep.malformed.append(op)

    has_cas_fail = any(r.kind == _CAS_FAIL for r in regs)
    observers: dict[int, list[_Reg]] = defaultdict(list)  # value -> completed ops that saw it
    expected_anywhere: set[int] = set()
    writers: dict[int, int] = defaultdict(int)
    writers[0] = 1  # the initial None
    for r in regs:
        if r.kind == _READ:
            observers[r.a].append(r)
        elif r.kind == _CAS_OK:
            observers[r.a].append(r)
        if r.kind in (_CAS_OK, _CAS_FAIL, _CAS_ANY):
            expected_anywhere.add(r.a)
        if r.kind == _WRITE:
            writers[r.a] += 1
        elif r.kind in (_CAS_OK, _CAS_ANY):
            writers[r.b] += 1
    kept: list[_Reg] = []
    for r in regs:
        if not r.required:
            value = r.a if r.kind == _WRITE else r.b
            seen_by = observers.get(value, [])
            if seen_by and writers[value] == 1:
                r.ret = max(r.invoke, min(o.ret for o in seen_by))
                r.required = True
                prep.promoted += 1
            elif not seen_by and value not in expected_anywhere and not has_cas_fail:
                prep.pruned += 1
                continue
        kept.append(r)
    observed = set(observers) | expected_anywhere
    unseen = len(intern.values)  # a fresh id, equal to no value that was interned
    intern.values.append(_Unseen.MARK)
    groups: dict[tuple[int, int], list[_Reg]] = defaultdict(list)
    for r in kept:
        if r.kind == _WRITE and r.a not in observed:
            r.a = unseen
        elif r.kind in (_CAS_OK, _CAS_ANY) and r.b not in observed:
            r.b = unseen
        if not r.required and (r.a if r.kind == _WRITE else r.b) == unseen:
            groups[(r.kind, r.a if r.kind != _WRITE else -1)].append(r)
    for g, members in enumerate(groups.values()):
        for rank, r in enumerate(sorted(members, key=lambda m: m.invoke)):
            r.group, r.rank = g, rank
    prep.regs = kept
    return prep


class _Capped(Exception):
    def __init__(self, why: str, states: int) -> None:
        super().__init__(why)
        self.why = why
        self.states = states


@dataclass
class _SearchOutcome:
    ok: bool
    states: int
    best_path: list[int]
    best_state: int


def _wgl(regs: Sequence[_Reg], deadline: float, max_states: int) -> _SearchOutcome:
    """Wing & Gong's search with Lowe's memoization over (linearized set, register value).

    Events (calls and returns, ordered by time, a call before a return at the same time)
    sit in a doubly linked list. The candidates to linearize next are the calls before the
    first remaining return. Linearizing one lifts its call and return out of the list;
    reaching a return means the op it closes could not be placed: backtrack. A
    configuration (set, value) already explored is never explored again. Required ops
    are tried before optional (unknown) ones. Success: every required op is linearized
    (optional ops left over simply never took effect).

    Raises ``_Capped`` when ``max_states`` configurations are cached or the deadline passes.
    """
    n = len(regs)
    n_required = sum(1 for r in regs if r.required)
    events = sorted(
        [(r.invoke, 0, i) for i, r in enumerate(regs)] + [(r.ret, 1, i) for i, r in enumerate(regs)],
    )
    size = len(events)
    tail = size + 1
    nxt = [*range(1, size + 2), tail]
    prv = [0, *range(0, size + 1)]
    is_call = [False] * (size + 2)
    op_of = [0] * (size + 2)
    call_entry = [0] * n
    ret_entry = [0] * n
    for pos, (_, is_ret, i) in enumerate(events, start=1):
        is_call[pos] = not is_ret
        op_of[pos] = i
        if is_ret:
            ret_entry[i] = pos
        else:
            call_entry[i] = pos
    kinds = [r.kind for r in regs]
    arg_a = [r.a for r in regs]
    arg_b = [r.b for r in regs]
    required = [r.required for r in regs]
    group = [r.group for r in regs]
    rank = [r.rank for r in regs]
    group_next = [0] * (max(group, default=-1) + 1)  # members of each group used so far

    def candidates() -> list[int]:
        first: list[int] = []
        later: list[int] = []
        e = nxt[0]
        while e != tail and is_call[e]:
            i = op_of[e]
            if required[i]:
                first.append(i)
            elif group[i] < 0 or rank[i] == group_next[group[i]]:
                later.append(i)
            e = nxt[e]
        return first + later

    cache: set[int] = set()
    stack: list[tuple[list[int], int, int]] = []  # (candidates, next index, state before)
    path: list[int] = []
    best_path: list[int] = []
    best_state = 0
    state = 0
    lin = 0
    done_required = 0
    cands = candidates()
    idx = 0
    steps = 0
    while done_required < n_required:
        steps += 1
        if steps & 1023 == 0 and time.monotonic() > deadline:
            raise _Capped("time limit", len(cache))
        moved = False
        while idx < len(cands):
            i = cands[idx]
            idx += 1
            kind = kinds[i]
            if kind == _READ:
                if state != arg_a[i]:
                    continue
                new = state
            elif kind == _WRITE:
                new = arg_a[i]
            elif kind == _CAS_OK:
                if state != arg_a[i]:
                    continue
                new = arg_b[i]
            elif kind == _CAS_FAIL:
                if state == arg_a[i]:
                    continue
                new = state
            else:  # _CAS_ANY: taking effect as a no-op is the same as never taking effect
                if state != arg_a[i]:
                    continue
                new = arg_b[i]
            new_lin = lin | (1 << i)
            memo = new_lin | (new << n)
            if memo in cache:
                continue
            cache.add(memo)
            if len(cache) > max_states:
                raise _Capped("state limit", len(cache))
            stack.append((cands, idx, state))
            path.append(i)
            c, r = call_entry[i], ret_entry[i]
            nxt[prv[c]] = nxt[c]
            prv[nxt[c]] = prv[c]
            nxt[prv[r]] = nxt[r]
            prv[nxt[r]] = prv[r]
            lin, state = new_lin, new
            if required[i]:
                done_required += 1
            if group[i] >= 0:
                group_next[group[i]] += 1
            if len(path) > len(best_path):
                best_path, best_state = list(path), state
            cands, idx = candidates(), 0
            moved = True
            break
        if moved:
            continue
        if not stack:
            return _SearchOutcome(False, len(cache), best_path, best_state)
        cands, idx, state = stack.pop()
        i = path.pop()
        c, r = call_entry[i], ret_entry[i]
        prv[nxt[r]] = r
        nxt[prv[r]] = r
        prv[nxt[c]] = c
        nxt[prv[c]] = c
        lin &= ~(1 << i)
        if required[i]:
            done_required -= 1
        if group[i] >= 0:
            group_next[group[i]] -= 1
    return _SearchOutcome(True, len(cache), path, state)


def _nonlinearizable_window(key: str, prep: _Prepared, outcome: _SearchOutcome) -> dict[str, Any]:
    """Describe where the deepest partial linearization got stuck: the value the register
    held there (and the op that wrote it), the last ops placed, and the pending ops that
    were invoked before the earliest pending required op completed (at most WINDOW_OPS,
    always including that blocking op)."""
    regs = prep.regs
    placed = set(outcome.best_path)
    pending = [i for i, r in enumerate(regs) if i not in placed]
    blocking = min((i for i in pending if regs[i].required), key=lambda i: regs[i].ret, default=None)
    horizon = regs[blocking].ret if blocking is not None else _INF
    window = sorted((i for i in pending if regs[i].invoke <= horizon), key=lambda i: (regs[i].invoke, i))
    if len(window) > WINDOW_OPS:
        keep = window[: WINDOW_OPS - 1]
        if blocking is not None and blocking not in keep:
            keep.append(blocking)
        window = sorted(keep, key=lambda i: (regs[i].invoke, i))
    writer = next((i for i in reversed(outcome.best_path) if regs[i].kind in (_WRITE, _CAS_OK, _CAS_ANY)), None)
    if writer is None:
        value: Any = None
    else:
        raw: Any = regs[writer].op.get("value")
        value = raw if regs[writer].kind == _WRITE else raw[1]
    return {
        "key": key,
        "message": (
            f"after linearizing {len(outcome.best_path)} of {len(regs)} ops the register holds {_canon(value)}, "
            "and none of the pending ops can take effect next consistently with real time"
        ),
        "value_at_stuck_point": value,
        "written_by_op": regs[writer].op.get("id") if writer is not None else None,
        "blocking_op": regs[blocking].op.get("id") if blocking is not None else None,
        "last_linearized": [_brief(regs[i].op) for i in outcome.best_path[-3:]],
        "window": [_brief(regs[i].op) for i in window],
    }


def check_linearizability(ops: Iterable[Op], *, time_limit_s: float = 20.0, max_states: int = 2_000_000) -> CheckResult:
    """Are the register ops linearizable, key by key (a register per key, initially None)?

    Semantics: read returns the value (None when absent); write sets it; cas
    ``[expected, new]`` succeeds (result True) iff the value equals ``expected``, then sets
    ``new``; else result False and nothing changes. An op with outcome "fail" never
    happened. A write/cas with outcome "unknown" (or never completed) may take effect at
    any time after its invoke, or never. A read that did not complete ok imposes nothing.

    The search (``_wgl``) runs per key, smallest keys first, against one shared deadline
    ``time_limit_s``; each key's memo is capped at ``max_states`` configurations (memory).
    A key that hits either cap, or holds malformed ops, is inconclusive, never passed.
    A key that fails reports the deepest partial linearization and the ops pending there.
    """
    found = _Findings("linearizability")
    by_key: dict[str, list[Op]] = defaultdict(list)
    for op in ops:
        if op.get("kind") == "register":
            by_key[str(op.get("key"))].append(op)
    deadline = time.monotonic() + time_limit_s
    started = time.monotonic()
    totals = {"keys": len(by_key), "ops": 0, "searched_ops": 0, "dropped": 0, "pruned_unknown": 0}
    totals |= {"promoted_unknown": 0, "states": 0, "max_states_per_key": 0}
    failed_keys: list[str] = []
    capped_keys: list[str] = []
    for key in sorted(by_key, key=lambda k: (len(by_key[k]), k)):
        key_ops = sorted(by_key[key], key=lambda o: (_time(o.get("invoke")) or 0.0, str(o.get("id"))))
        prep = _prepare_register(key_ops)
        totals["ops"] += len(key_ops)
        totals["searched_ops"] += len(prep.regs)
        totals["dropped"] += prep.dropped
        totals["pruned_unknown"] += prep.pruned
        totals["promoted_unknown"] += prep.promoted
        if prep.malformed:
            found.unsure(f"key {key!r}: {len(prep.malformed)} malformed op(s), e.g. id {prep.malformed[0].get('id')}")
            capped_keys.append(key)
            continue
        try:
            outcome = _wgl(prep.regs, deadline, max_states)
        except _Capped as capped:
            totals["states"] += capped.states
            found.unsure(
                f"key {key!r}: search stopped at the {capped.why} ({len(prep.regs)} ops, {capped.states} states)"
            )
            capped_keys.append(key)
            continue
        totals["states"] += outcome.states
        totals["max_states_per_key"] = max(totals["max_states_per_key"], outcome.states)
        if not outcome.ok:
            failed_keys.append(key)
            found.violation("nonlinearizable", **_nonlinearizable_window(key, prep, outcome))
    found.stats = {
        **totals,
        "failed_keys": failed_keys,
        "inconclusive_keys": capped_keys,
        "elapsed_s": round(time.monotonic() - started, 3),
        "time_limit_s": time_limit_s,
        "max_states": max_states,
    }
    return found.result()


# ------------------------------------------------------------------ lost / duplicated writes


def check_set(ops: Iterable[Op], final_reads: Mapping[str, Mapping[str, Mapping[str, Any]] | None]) -> CheckResult:
    """No acknowledged write lost, none duplicated, none invented, every node agreeing.

    ``ops``: the "set" ops (``f`` "add", ``key`` the element's key, ``value`` its value;
    each key is meant to be added once). ``final_reads``: ``{node: {key: {"value",
    "version"}}}``, every key under the set prefix read from each node after healing
    (keys as in the ops), or ``{node: None}`` if that node's final read failed.

    Violations: ``lost_write`` (an ok add missing on a node), ``corrupt_value`` (a value
    that no add of that key wrote), ``duplicate_write`` (version > 1: applied twice),
    ``phantom_write`` (a key nobody added), ``failed_write_applied`` (a key whose every
    add failed, i.e. was definitely not applied), ``divergent`` (nodes disagree on a key).
    An unknown add may be present or absent, but the same on every node.
    """
    found = _Findings("set")
    adds: dict[str, list[Op]] = defaultdict(list)
    for op in ops:
        if op.get("kind") == "set" and op.get("f") == "add":
            adds[str(op.get("key"))].append(op)
    readable = {n: r for n, r in final_reads.items() if r is not None}
    for node in sorted(set(final_reads) - set(readable)):
        found.unsure(f"the final read from node {node} failed")
    if not readable:
        found.unsure("no final reads: nothing to check the acknowledged adds against")
    flagged: set[str] = set()

    for key in sorted(adds):
        for op in adds[key]:
            if op.get("outcome") != "ok":
                continue
            want = _canon(op.get("value"))
            for node in sorted(readable):
                got = readable[node].get(key)
                if got is None:
                    flagged.add(key)
                    found.violation("lost_write", key=key, node=node, op=_brief(op))
                elif _canon(got.get("value")) != want:
                    flagged.add(key)
                    found.violation("corrupt_value", key=key, node=node, read=dict(got), op=_brief(op))

    for node in sorted(readable):
        for key, got in sorted(readable[node].items()):
            attempts = adds.get(key, [])
            if not attempts:
                flagged.add(key)
                found.violation("phantom_write", key=key, node=node, read=dict(got))
                continue
            if all(a.get("outcome") == "fail" for a in attempts):
                flagged.add(key)
                found.violation(
                    "failed_write_applied", key=key, node=node, read=dict(got), ops=[_brief(a) for a in attempts]
                )
                continue
            written = {_canon(a.get("value")) for a in attempts if a.get("outcome") != "fail"}
            if _canon(got.get("value")) not in written and key not in flagged:
                flagged.add(key)
                found.violation("corrupt_value", key=key, node=node, read=dict(got), ops=[_brief(a) for a in attempts])
            version = got.get("version")
            if isinstance(version, int) and not isinstance(version, bool) and version > 1:
                flagged.add(key)
                found.violation(
                    "duplicate_write", key=key, node=node, read=dict(got), ops=[_brief(a) for a in attempts]
                )

    all_keys = sorted({k for reads in readable.values() for k in reads} | set(adds))
    for key in all_keys:
        if key in flagged:
            continue
        seen = {node: readable[node].get(key) for node in sorted(readable)}
        shapes = {_canon(None if v is None else [v.get("value"), v.get("version")]) for v in seen.values()}
        if len(shapes) > 1:
            found.violation("divergent", key=key, reads={n: (None if v is None else dict(v)) for n, v in seen.items()})

    outcomes: dict[str, int] = defaultdict(int)
    for attempts in adds.values():
        for a in attempts:
            outcomes[str(a.get("outcome"))] += 1
    unknown_keys = [k for k, a in adds.items() if any(o.get("outcome") == "unknown" for o in a)]
    first = readable[min(readable)] if readable else {}
    found.stats = {
        "keys_attempted": len(adds),
        "adds_by_outcome": dict(outcomes),
        "unknown_keys_present": sum(1 for k in unknown_keys if k in first),
        "unknown_keys_absent": sum(1 for k in unknown_keys if k not in first),
        "keys_per_node": {n: len(r) for n, r in sorted(readable.items())},
        "nodes": sorted(final_reads),
    }
    return found.result()


# ------------------------------------------------------------------ convergence


def _row_diff(want: Mapping[str, Any], have: Mapping[str, Any]) -> dict[str, Any]:
    missing = sorted(k for k in want if k not in have)
    extra = sorted(k for k in have if k not in want)
    different = sorted(k for k in want if k in have and _canon(want[k]) != _canon(have[k]))
    return {
        "missing": missing[:10],
        "missing_count": len(missing),
        "extra": extra[:10],
        "extra_count": len(extra),
        "different": [{"key": k, "expected": want[k], "blade": have[k]} for k in different[:5]],
        "different_count": len(different),
    }


def check_convergence(
    blades: Mapping[str, Mapping[str, Mapping[str, Any]] | None],
    committed: Mapping[str, Mapping[str, Mapping[str, Any]]],
    revision: int,
    *,
    model: AppModel = ONTAP,
) -> CheckResult:
    """After healing, does every node's every blade table equal its projection of committed state?

    ``blades``: ``{node: {table: {"revision": int, "rows": {key: row}}}}`` (the
    ``/v1/blades/...`` answers for the seven blade tables; ``{node: None}`` if the node
    could not be read). ``committed``: ``{management table: {key: row}}`` read at
    ``revision`` (after the workload stopped). A table reporting ``revision`` or later
    must equal ``model.project_table`` of ``committed`` for its node (``chaos._apps``)
    (``table_differs``); a table reporting an older revision is ``lagging`` after heal;
    a blade table missing from a node's answer is ``missing_table``.
    """
    found = _Findings("convergence")
    checked = 0
    for node in sorted(blades):
        tables = blades[node]
        if tables is None:
            found.unsure(f"node {node}'s blade tables could not be read")
            continue
        for table in model.blade_tables:
            entry = tables.get(table)
            if entry is None:
                found.violation("missing_table", node=node, table=table)
                continue
            table_revision = entry.get("revision")
            rows = entry.get("rows")
            if not isinstance(table_revision, int) or not isinstance(rows, Mapping):
                found.violation("malformed_table", node=node, table=table, answer_keys=sorted(entry))
                continue
            checked += 1
            if table_revision < revision:
                found.violation(
                    "lagging", node=node, table=table, table_revision=table_revision, committed_revision=revision
                )
                continue
            want = model.project_table(committed, node, table)
            if {k: _canon(v) for k, v in want.items()} != {str(k): _canon(v) for k, v in rows.items()}:
                found.violation(
                    "table_differs",
                    node=node,
                    table=table,
                    table_revision=table_revision,
                    committed_revision=revision,
                    **_row_diff(want, rows),
                )
    found.stats = {
        "nodes": sorted(blades),
        "tables_checked": checked,
        "committed_revision": revision,
        "committed_rows": {t: len(committed.get(t, {})) for t in model.management_tables},
    }
    return found.result()


# ------------------------------------------------------------------ data plane


@dataclass
class _Timeline:
    """Committed management config over revisions, rebuilt from the config log."""

    revisions: list[int]  # distinct revisions that changed a table row, ascending
    changes: list[list[tuple[str, Mapping[str, Any] | None]]]  # the changes at each of them
    seen_at: list[float]  # observation times, ascending
    seen_max: list[int]  # the highest revision observed at or before seen_at[i]
    through: int  # the log is complete through this revision
    model: AppModel

    def index(self, revision: int) -> int:
        """How many change revisions are <= ``revision`` (0: the empty config)."""
        return bisect_right(self.revisions, revision)

    def observed_by(self, t: float) -> int:
        """The highest revision observed at or before time ``t`` (0 if none)."""
        i = bisect_right(self.seen_at, t)
        return self.seen_max[i - 1] if i else 0

    def configs(self, indexes: Iterable[int]) -> Iterator[tuple[int, Mapping[str, Mapping[str, Any]]]]:
        """``(index, config)`` for each distinct index, ascending, replaying the log
        forward once. The config is one object changed in place: use it before the next."""
        config: dict[str, dict[str, Any]] = {t: {} for t in self.model.management_tables}
        applied = 0
        for index in sorted(set(indexes)):
            while applied < index:
                for key, row in self.changes[applied]:
                    where = _split(self.model, key)
                    if where is not None:
                        if row is None:
                            config[where[0]].pop(where[1], None)
                        else:
                            config[where[0]][where[1]] = dict(row)
                applied += 1
            yield index, config

    def decide_many(self, wanted: Mapping[int, Collection[tuple[str, ...]]]) -> dict[tuple[int, tuple[str, ...]], Any]:
        """Decisions for ``{index: {query}}``. Each value is a list of acceptable
        decisions, or an error text."""
        out: dict[tuple[int, tuple[str, ...]], Any] = {}
        for index, config in self.configs(wanted):
            for query in wanted[index]:
                out[(index, query)] = _decide(self.model, config, query)
        return out


def _split(model: AppModel, key: str) -> tuple[str, str] | None:
    """``tables/<table>/<row>`` of one of the model's management tables, or None."""
    if not key.startswith("tables/"):
        return None
    table, sep, row_key = key[len("tables/") :].partition("/")
    if table not in model.management_tables or not sep or not row_key:
        return None
    return table, row_key


def _decide(model: AppModel, config: Mapping[str, Any], query: tuple[str, ...]) -> Any:
    try:
        return model.decide(config, query)
    except ValueError as exc:
        return f"the model rejects the probe: {exc}"


def _build_timeline(
    config_log: Sequence[Mapping[str, Any]], complete_through: int | None, model: AppModel
) -> tuple[_Timeline | None, str | None]:
    entries: list[tuple[int, float, str, Mapping[str, Any] | None]] = []
    for n, entry in enumerate(config_log):
        revision, at, key, row = entry.get("revision"), _time(entry.get("at")), entry.get("key"), entry.get("row")
        if not isinstance(revision, int) or isinstance(revision, bool) or revision < 1:
            return None, f"config_log[{n}] has no valid revision"
        if at is None or not isinstance(key, str) or not (row is None or isinstance(row, Mapping)):
            return None, f"config_log[{n}] (revision {revision}) is malformed"
        entries.append((revision, at, key, row))
    if any(b[0] < a[0] for a, b in pairwise(entries)):
        return None, "config_log is not ordered by revision"
    revisions: list[int] = []
    changes: list[list[tuple[str, Mapping[str, Any] | None]]] = []
    for revision, _, key, row in entries:
        if _split(model, key) is None:
            continue  # a revision of the generic key space: changes no table
        if not revisions or revisions[-1] != revision:
            revisions.append(revision)
            changes.append([])
        changes[-1].append((key, row))
    seen = sorted((at, revision) for revision, at, _, _ in entries)
    seen_max: list[int] = []
    for _, revision in seen:
        seen_max.append(max(revision, seen_max[-1] if seen_max else 0))
    last = entries[-1][0] if entries else 0
    through = last if complete_through is None else complete_through
    if through < last:
        return None, f"log_complete_through={through} is below the log's last revision {last}"
    return _Timeline(revisions, changes, [s[0] for s in seen], seen_max, through, model), None


def _spans(
    windows: Iterable[Mapping[str, Any]], found: _Findings, kind: str
) -> dict[str, list[tuple[float, float, str]]]:
    """Node -> (start, end, table) of fault or drift windows (``check_dataplane``); an
    open end is infinite, and one without a start makes the result inconclusive."""
    spans: dict[str, list[tuple[float, float, str]]] = defaultdict(list)
    for w in windows:
        start, end = _time(w.get("start")), _time(w.get("end"))
        if start is None:
            found.unsure(f"a {kind} window has no start: {dict(w)}")
            continue
        spans[str(w.get("node"))].append((start, _INF if end is None else end, str(w.get("table"))))
    return spans


def _served_while_failed(
    found: _Findings,
    op: Op,
    node: str,
    invoke: float,
    spans: Mapping[str, list[tuple[float, float, str]]],
    tables: Collection[str],
    slack_s: float,
    **what: Any,
) -> None:
    """Report ``op`` if it was served inside ``[start + slack_s, end]`` of a fault window
    on ``node`` for one of ``tables`` (the first such window only)."""
    for start, end, table in spans.get(node, []):
        if table in tables and start + slack_s <= invoke <= end:
            found.violation(
                "served_while_failed",
                node=node,
                **what,
                table=table,
                window={"start": start, "end": None if end == _INF else end},
                op=_brief(op),
            )
            return


def check_dataplane(
    ops: Iterable[Op],
    config_log: Sequence[Mapping[str, Any]],
    fault_windows: Iterable[Mapping[str, Any]],
    *,
    staleness_bound_s: float = 5.0,
    fence_slack_s: float = 0.5,
    dependencies: Mapping[str, Collection[str]] | None = None,
    log_complete_from: int = 1,
    log_complete_through: int | None = None,
    drift_windows: Iterable[Mapping[str, Any]] = (),
    model: AppModel = ONTAP,
) -> CheckResult:
    """Is every data-plane answer true, fresh enough, and never served from failed config?

    ``model``: the app under test (``chaos._apps``): its probes, decisions and default
    dependencies. The rest of this text describes the ONTAP app's probes.

    ``ops``: the "dataplane" ops; ``f`` "nfs" (``value`` ``{"vserver", "path", "client"}``)
    or "cifs" (``{"vserver", "share"[, "user"]}``); an ok op's ``result`` is the answer
    ``{"access", "reason", "volume", "aggregate", "node", "revision"}``. Ops that failed
    (503 fenced, errors) or are unknown impose nothing.

    ``config_log``: the committed changes in revision order, ``{"revision", "at" (when
    observed, seconds since run start), "key": "tables/<table>/<key>", "row" (None:
    deleted)}``; entries for other keys are allowed and change no table. It must be
    complete from ``log_complete_from`` (1: the start; otherwise the base config is
    unknown and nothing can be judged) through ``log_complete_through`` (default: its
    last revision). An answer reporting a revision beyond that is inconclusive, as the
    log may miss changes it depends on. The runner should pass the revision its watch had
    reached when it stopped.

    ``fault_windows``: ``{"node", "table", "start", "end" (None: until the end)}``: an
    injected resync fault on that node's blade table. ``start`` must be a time by which a
    resync of the table has failed (e.g. the runner forced one after injecting).

    ``drift_windows``: ``{"node", "start", "end"}``: times when node N's blade rows were
    knowingly made to differ from committed state behind the resync engine's back
    (``/v1/debug/tamper``), until the audit must have repaired them (the runner adds the
    audit bound to ``end``). A wrong answer from N (or from "shared", which may be N)
    invoked inside such a window is excused and counted in ``excused_wrong_answers``,
    never silently: staleness and fencing are still checked.

    Violations:
    - ``wrong_answer``: the answer's access/volume/aggregate/node is none of the model's
      acceptable decisions at the revision it reports (``chaos._model``);
    - ``stale_answer``: the answer is right for its revision R, but R is older than the
      highest revision observed at or before ``invoke - staleness_bound_s``, and the answer
      would be wrong at that revision (an irrelevant newer change does not count);
    - ``served_while_failed``: an ok answer from node N for protocol P invoked within
      ``[start + fence_slack_s, end]`` of a fault window on N for a table P depends on
      (``dependencies``, default ``DEFAULT_DEPENDENCIES``). Ops sent to the shared address
      ("shared") cannot be attributed to a node and are not fence-checked;
    - ``malformed_answer``: an ok op without an answer and an integer revision.
    """
    found = _Findings("dataplane")
    deps = {p: frozenset(t) for p, t in (dependencies or model.dependencies).items()}
    windows = _spans(fault_windows, found, "fault")
    drift = _spans(drift_windows, found, "drift")

    def excused(node: str, t: float) -> bool:
        spans = [s for spans in drift.values() for s in spans] if node == "shared" else drift.get(node, [])
        return any(start <= t <= end for start, end, _ in spans)

    timeline, log_problem = _build_timeline(config_log, log_complete_through, model)
    if log_problem is None and log_complete_from > 1:
        log_problem = f"config_log starts at revision {log_complete_from}, not 1: the base config is unknown"

    stats: dict[str, Any] = defaultdict(int)
    pending: list[tuple[Op, Mapping[str, Any], tuple[str, ...], int, int, int]] = []
    wanted: dict[int, set[tuple[str, ...]]] = defaultdict(set)
    beyond_log = 0
    for op in ops:
        if op.get("kind") != "dataplane":
            continue
        stats["probes"] += 1
        outcome = op.get("outcome")
        stats[f"outcome_{outcome}"] += 1
        if outcome != "ok":
            continue
        answer = op.get("result")
        revision = answer.get("revision") if isinstance(answer, Mapping) else None
        if not isinstance(answer, Mapping) or not isinstance(revision, int) or isinstance(revision, bool):
            found.violation("malformed_answer", op=_brief(op))
            continue
        query = model.query_of(op)
        invoke = _time(op.get("invoke"))
        if query is None or invoke is None:
            found.unsure(f"malformed data-plane probe(s), e.g. id {op.get('id')}")
            stats["unchecked_malformed"] += 1
            continue

        node = str(op.get("node"))
        if node == "shared":
            stats["fence_unattributable"] += 1
        _served_while_failed(
            found, op, node, invoke, windows, deps.get(query[0], frozenset()), fence_slack_s, protocol=query[0]
        )

        if timeline is None or log_problem is not None:
            stats["unchecked_no_log"] += 1
            continue
        if revision > timeline.through:
            beyond_log += 1
            continue
        reference = timeline.observed_by(invoke - staleness_bound_s)
        index = timeline.index(revision)
        ref_index = timeline.index(reference) if reference > revision else index
        wanted[index].add(query)
        wanted[ref_index].add(query)
        pending.append((op, answer, query, revision, index, ref_index if reference > revision else -1))
        stats["checked"] += 1

    if log_problem is not None and stats["outcome_ok"]:
        found.unsure(f"config_log unusable, {stats['unchecked_no_log']} answer(s) unchecked: {log_problem}")
    if beyond_log and timeline is not None:
        found.unsure(
            f"{beyond_log} answer(s) report revisions beyond {timeline.through}, where the config log is "
            "known complete; pass log_complete_through"
        )
    stats["unchecked_beyond_log"] = beyond_log

    if timeline is not None and pending:
        decisions = timeline.decide_many(wanted)
        wrong: list[tuple[Op, Mapping[str, Any], tuple[str, ...], int, int]] = []
        for op, answer, query, revision, index, ref_index in pending:
            expected = decisions[(index, query)]
            if isinstance(expected, str) or not model.acceptable(answer, expected):
                if excused(str(op.get("node")), float(op["invoke"])):
                    stats["excused_wrong_answers"] += 1
                else:
                    wrong.append((op, answer, query, revision, index))
                continue
            if ref_index >= 0:
                stats["older_than_bound"] += 1
                fresh = decisions[(ref_index, query)]
                if isinstance(fresh, list) and not model.acceptable(answer, fresh):
                    found.violation(
                        "stale_answer",
                        node=op.get("node"),
                        answer_revision=revision,
                        required_revision=timeline.revisions[ref_index - 1],
                        staleness_bound_s=staleness_bound_s,
                        expected_now=fresh,
                        op=_brief(op),
                    )
        _report_wrong(found, timeline, wrong)

    found.stats = dict(stats) | {
        "fault_windows": sum(len(w) for w in windows.values()),
        "drift_windows": sum(len(w) for w in drift.values()),
        "config_changes": sum(len(c) for c in timeline.changes) if timeline else 0,
        "log_complete_through": timeline.through if timeline else None,
    }
    return found.result()


def check_agents(
    ops: Iterable[Op],
    config_log: Sequence[Mapping[str, Any]],
    fault_windows: Iterable[Mapping[str, Any]],
    *,
    table: str,
    staleness_bound_s: float = 5.0,
    fence_slack_s: float = 1.0,
    log_complete_through: int | None = None,
    drift_windows: Iterable[Mapping[str, Any]] = (),
    model: AppModel = ONTAP,
    final: Mapping[str, Any] | None = None,
) -> CheckResult:
    """Does every daemon serve exactly its node's projection of committed config, fresh
    enough, never while its node's table has failed, and converge after healing?

    ``ops``: the "agent" ops (``chaos._agents.AgentProbe``); an ok op's ``result`` is
    ``{"revision", "rows"}``: the rows of blade table ``table`` the daemon serves and the
    revision they are exactly at. ``config_log``, ``log_complete_through``,
    ``fault_windows`` and ``drift_windows`` as for ``check_dataplane``.

    Violations:
    - ``wrong_rows``: the rows are not ``model.project_table`` of the config at their
      revision for that node (outside a drift window on the node);
    - ``stale_rows``: right for their revision R, but R is older than the highest revision
      observed at or before ``invoke - staleness_bound_s`` and the projection at that
      revision differs;
    - ``served_while_failed``: served within ``[start + fence_slack_s, end]`` of a fault
      window on the node's ``table`` (the node fences the consumers that depend on the
      agent; the daemon hears of it within a stream heartbeat);
    - ``malformed_answer``: an ok op without rows and an integer revision;
    - ``not_converged``: after healing (``final``: ``{"want": {node: rows}, "served":
      {node: {"serving", "rows"} or None}}``), a daemon that does not serve exactly its
      node's projection of the final committed config.
    """
    found = _Findings("agents")
    for node, want in sorted(((final or {}).get("want") or {}).items()):
        got = (final or {}).get("served", {}).get(node)
        if got is None or not got.get("serving") or _canon(got.get("rows")) != _canon(want):
            found.violation("not_converged", node=node, served=got, expected=want)
    windows = _spans(fault_windows, found, "fault")
    drift = _spans(drift_windows, found, "drift")
    timeline, log_problem = _build_timeline(config_log, log_complete_through, model)
    stats: dict[str, Any] = defaultdict(int)
    pending: list[tuple[Op, Mapping[str, Any], int, int]] = []
    for op in ops:
        if op.get("kind") != "agent":
            continue
        stats["probes"] += 1
        stats[f"outcome_{op.get('outcome')}"] += 1
        if op.get("outcome") != "ok":
            continue
        answer = op.get("result")
        revision = answer.get("revision") if isinstance(answer, Mapping) else None
        invoke = _time(op.get("invoke"))
        if (
            not isinstance(answer, Mapping)
            or not isinstance(answer.get("rows"), Mapping)
            or not isinstance(revision, int)
            or isinstance(revision, bool)
            or invoke is None
        ):
            found.violation("malformed_answer", op=_brief(op))
            continue
        node = str(op.get("node"))
        _served_while_failed(found, op, node, invoke, windows, (table,), fence_slack_s)
        if timeline is None or log_problem is not None:
            stats["unchecked_no_log"] += 1
            continue
        if revision > timeline.through:
            stats["unchecked_beyond_log"] += 1
            continue
        reference = timeline.observed_by(invoke - staleness_bound_s)
        ref_index = timeline.index(reference) if reference > revision else -1
        pending.append((op, answer, timeline.index(revision), ref_index))
        stats["checked"] += 1
    if log_problem is not None and stats["outcome_ok"]:
        found.unsure(f"config_log unusable, {stats['unchecked_no_log']} answer(s) unchecked: {log_problem}")
    if stats["unchecked_beyond_log"]:
        found.unsure(f"{stats['unchecked_beyond_log']} answer(s) beyond the complete config log")
    if timeline is not None and pending:
        wanted = {i for _, _, index, ref in pending for i in (index, ref) if i >= 0}
        nodes = {str(op.get("node")) for op, _, _, _ in pending}
        projected = {
            (index, node): {k: _canon(r) for k, r in model.project_table(config, node, table).items()}
            for index, config in timeline.configs(wanted)
            for node in nodes
        }
        for op, answer, index, ref_index in pending:
            node = str(op.get("node"))
            rows = {k: _canon(r) for k, r in answer["rows"].items()}
            want = projected[(index, node)]
            if rows != want:
                if any(start <= float(op["invoke"]) <= end for start, end, _ in drift.get(node, [])):
                    stats["excused_wrong_rows"] += 1
                    continue
                found.violation(
                    "wrong_rows",
                    node=node,
                    revision=answer["revision"],
                    diff=_row_diff(_uncanon(want), answer["rows"]),
                    op=_brief(op),
                )
                continue
            if ref_index >= 0:
                stats["older_than_bound"] += 1
                if projected[(ref_index, node)] != rows:
                    found.violation(
                        "stale_rows",
                        node=node,
                        revision=answer["revision"],
                        required_revision=timeline.revisions[ref_index - 1],
                        diff=_row_diff(_uncanon(projected[(ref_index, node)]), answer["rows"]),
                        op=_brief(op),
                    )
    on_table = sum(1 for spans in windows.values() for span in spans if span[2] == table)
    found.stats = dict(stats) | {"table": table, "fault_windows": on_table}
    return found.result()


def _uncanon(rows: Mapping[str, str]) -> dict[str, Any]:
    return {k: json.loads(v) for k, v in rows.items()}


def _report_wrong(
    found: _Findings,
    timeline: _Timeline,
    wrong: Sequence[tuple[Op, Mapping[str, Any], tuple[str, ...], int, int]],
    radius: int = 10,
) -> None:
    """Report wrong answers; for the first few, name nearby revisions the answer would fit."""
    near: dict[int, set[tuple[str, ...]]] = defaultdict(set)
    shown = wrong[:MAX_VIOLATIONS]
    for _, _, query, _, index in shown:
        for j in range(max(0, index - radius), min(len(timeline.revisions), index + radius) + 1):
            near[j].add(query)
    around = timeline.decide_many(near)
    for n, (op, answer, query, _, index) in enumerate(wrong):
        if n >= len(shown):
            found.violation("wrong_answer", op=_brief(op))
            continue
        expected = around[(index, query)]
        fits = [
            timeline.revisions[j - 1] if j else 0
            for j in range(max(0, index - radius), min(len(timeline.revisions), index + radius) + 1)
            if isinstance(around[(j, query)], list) and timeline.model.acceptable(answer, around[(j, query)])
        ]
        found.violation(
            "wrong_answer",
            node=op.get("node"),
            answer={f: answer.get(f) for f in (*timeline.model.decision_fields, "revision")},
            expected=expected,
            fits_config_at_revisions=fits,
            op=_brief(op),
        )


# ------------------------------------------------------------------ fault outcomes

#: What each kind's record must say (``record["detail"][flag]`` true), and the
#: violation named when it does not. A kind not listed has no outcome to check.
FAULT_EXPECTATIONS: dict[str, tuple[tuple[str, str], ...]] = {
    "kill_all": (("ready_after", "not_ready_after_restart"),),
    "disk_full": (
        ("stopped", "kept_running_on_full_disk"),
        ("said_why", "stopped_without_saying_why"),
        ("ready_after", "not_ready_after_space_freed"),
    ),
    "corrupt_restart": (
        ("refused", "started_on_corrupt_data"),
        ("said_why", "refused_without_saying_why"),
        ("served", "cluster_stopped_serving"),
        ("rejoined", "did_not_rejoin_after_wipe"),
    ),
    "compaction_crash": (("ready_after", "not_ready_after_compaction_crash"),),
    "member_cycle": (
        ("rejoined", "membership_change_failed"),
        ("ready_after", "not_ready_after_membership_change"),
    ),
}


def check_fault_outcomes(records: Iterable[Mapping[str, Any]]) -> CheckResult:
    """Each injected fault did what the product promises for it (the data itself is
    judged by the set and register checkers: nothing acknowledged lost).

    ``records``: the executed faults as the runner reports them (``kind``, ``target``,
    ``start``, ``detail``). Per kind (``FAULT_EXPECTATIONS``): a node whose disk filled
    up stopped by itself and said why in its log (``kept_running_on_full_disk``,
    ``stopped_without_saying_why``), and is ready again once space is freed; a node
    restarted on a damaged snapshot or journal refused to start and said why, naming
    the file (``started_on_corrupt_data``, ``refused_without_saying_why``), the others
    kept accepting writes (``cluster_stopped_serving``) and, wiped, it rejoined
    (``did_not_rejoin_after_wipe``); a membership change went through
    (``membership_change_failed``); a restarted cluster or node became ready.

    A record with ``detail.injected`` false (nothing to damage yet, the failpoint never
    fired) is counted and not judged; a record of a checked kind that never ended
    (``end`` None) makes the result inconclusive. ``stats``: per kind, injected and
    judged counts."""
    found = _Findings("fault_outcomes")
    stats: dict[str, dict[str, int]] = {}
    for record in records:
        kind = str(record.get("kind"))
        expectations = FAULT_EXPECTATIONS.get(kind)
        if expectations is None:
            continue
        detail = record.get("detail") or {}
        counts = stats.setdefault(kind, {"injected": 0, "judged": 0})
        if detail.get("injected", True) is False:
            continue
        counts["injected"] += 1
        if record.get("end") is None:
            found.unsure(f"a {kind} fault at {record.get('start')} s never ended")
            continue
        counts["judged"] += 1
        for flag, violation in expectations:
            if detail.get(flag) is not True:
                found.violation(
                    violation,
                    fault=kind,
                    target=record.get("target"),
                    start=record.get("start"),
                    detail={k: v for k, v in detail.items() if k not in ("log_offset",)},
                )
    found.stats = {"by_kind": stats}
    return found.result()
