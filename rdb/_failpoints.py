"""Failpoints: named hooks where a test makes the process crash or fail at one precise step.

Armed through the environment when the process starts (as etcd's gofail), for example::

    RDBSYNC_FAILPOINTS="journal.compact.before_header=crash,snapshot.install.before_rename=enospc@2"

Each item is ``NAME=ACTION`` (fire at the first hit), ``NAME=ACTION@N`` (at the N-th
hit only) or ``NAME=ACTION@N+`` (at every hit from the N-th on). Actions:

- ``crash``: SIGKILL this process at once (nothing is flushed: like ``kill -9`` or a
  power cut for everything already written to the kernel);
- ``enospc`` / ``error``: raise ``OSError(ENOSPC)`` / ``OSError(EIO)`` at that step.

Before it fires, a failpoint writes one line to stderr (``failpoint NAME: ACTION``), so
a test can tell that the crash happened where it asked. ``FAILPOINTS`` lists every name
the code defines (README, Development). Unarmed, ``failpoint(name)`` is one global load
and a comparison with None.

Threading: ``failpoint`` may be called from any thread; ``arm`` is for tests, before
the code under test runs.
"""

from __future__ import annotations

import errno
import os
import signal
import threading

ENV = "RDBSYNC_FAILPOINTS"

#: Every failpoint in rdb, in the order a compaction or an install passes them.
FAILPOINTS = {
    "snapshot.before_rename": "compaction: the new snapshot is written and fsynced, not yet renamed",
    "snapshot.after_rename": "compaction: the snapshot is renamed into place, the directory not yet fsynced",
    "journal.compact.before_header": "compaction: the snapshot and the pending entries are durable, the header not yet",
    "journal.compact.after_header": "compaction: the header names the first kept record and is fdatasynced",
    "journal.reclaim.during_rewrite": "compaction: half of the copy of the live records is in its temporary file",
    "journal.reclaim.before_rename": "compaction: the copy of the live records is fsynced, not yet renamed",
    "journal.reclaim.after_rename": "compaction: the copy is renamed over the journal, the directory not yet fsynced",
    "snapshot.install.before_fsync": "install: the leader's snapshot is received into a temporary file",
    "snapshot.install.before_rename": "install: the received snapshot is fsynced, not yet renamed",
    "snapshot.install.after_rename": "install: the received snapshot is renamed, the directory not yet fsynced",
    "snapshot.install.after_fsync": "install: the snapshot is durable, the journal not yet reset",
    "journal.reset.during_rewrite": "install or load: half of the journal holding the snapshot's entries is written",
    "journal.reset.before_rename": "install or load: the journal holding only the snapshot's entries is fsynced",
    "journal.reset.after_rename": "install or load: that journal is renamed, the directory not yet fsynced",
    "journal.truncate.before": "truncation (deleteEntriesFrom): before the ftruncate",
    "journal.truncate.after": "truncation: after the ftruncate, before its fsync",
    "journal.sync.before_write": "group commit: before the buffered entries are written",
    "journal.sync.before_fsync": "group commit: the entries are written, not yet fdatasynced",
    "journal.meta.before_write": "term, vote or commit index: before the meta file is rewritten",
    "journal.convert.during_rewrite": "open: half of a journal of the old format is copied to the header format",
    "journal.convert.before_rename": "open: the converted journal is fsynced, not yet renamed",
    "journal.convert.after_rename": "open: the converted journal is renamed, the directory not yet fsynced",
}

_ACTIONS = ("crash", "enospc", "error")

_armed: dict[str, tuple[str, int, bool]] | None = None  # name -> (action, hit n, and after)
_hits: dict[str, int] = {}
_lock = threading.Lock()


def parse(spec: str) -> dict[str, tuple[str, int, bool]]:
    """``NAME=ACTION[@N[+]],...`` as a map. Raises ``ValueError`` naming a bad item. Pure."""
    armed: dict[str, tuple[str, int, bool]] = {}
    for item in (part.strip() for part in spec.split(",")):
        if not item:
            continue
        name, sep, action = item.partition("=")
        action, _, nth = action.partition("@")
        if not sep or name not in FAILPOINTS or action not in _ACTIONS:
            raise ValueError(f"{ENV}: bad item {item!r} (names: {', '.join(FAILPOINTS)}; actions: {_ACTIONS})")
        onwards = nth.endswith("+")
        nth = nth.removesuffix("+")
        if (nth or onwards) and not (nth.isdigit() and int(nth) >= 1):
            raise ValueError(f"{ENV}: bad hit count in {item!r}")
        armed[name] = (action, int(nth or "1"), onwards)
    return armed


def arm(spec: str | None) -> None:
    """Arm the failpoints of ``spec`` (None or "" disarms all) and reset the hit counts."""
    global _armed
    parsed = parse(spec or "")
    with _lock:
        _hits.clear()
        _armed = parsed or None


def failpoint(name: str) -> None:
    """Fire the failpoint ``name`` if armed (crash, or raise ``OSError``); else nothing."""
    if _armed is None:
        return
    _fire(name)


def _fire(name: str) -> None:
    armed = _armed
    if armed is None or name not in armed:
        return
    action, nth, onwards = armed[name]
    with _lock:
        hit = _hits[name] = _hits.get(name, 0) + 1
    if hit < nth or (hit > nth and not onwards):
        return
    os.write(2, f"failpoint {name}: {action}\n".encode())
    if action == "crash":
        os.kill(os.getpid(), signal.SIGKILL)
    code = errno.ENOSPC if action == "enospc" else errno.EIO
    raise OSError(code, f"{os.strerror(code)} (failpoint {name})")


arm(os.environ.get(ENV))
