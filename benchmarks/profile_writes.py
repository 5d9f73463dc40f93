"""A py-spy profile of the durable write path (or the read path) on a fresh three-node cluster.

    scripts/profile-writes [--duration 10] [--connections 64] [--out DIR] [--reads] [--gil]

Runs wrk with ``benchmarks/put.lua`` (with ``--reads``: ``get.lua`` over 1,000 preloaded
keys, linearizable reads) against a follower (as ``scripts/bench`` does) while
``py-spy record`` samples the follower and the leader (all threads, idle frames left
out; with ``--gil``, only the thread holding the GIL: where the Python time goes).
Writes the collapsed stacks to ``DIR/<role>.txt`` (flamegraph.pl input) and prints, per
node, the share of samples spent under the top functions (inclusive) and the top leaf
functions (self time). Exit status 0, or 2 if it could not run (no py-spy, no wrk).
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import BenchError, fresh_cluster, preload, progress, run_wrk

READ_KEYS = 1000
PY_SPY = os.path.join(os.path.dirname(sys.executable), "py-spy")


def summarise(path: str, top: int) -> str:
    """Inclusive and self shares of the ``top`` functions in a py-spy raw (collapsed) file."""
    inclusive: collections.Counter[str] = collections.Counter()
    leaf: collections.Counter[str] = collections.Counter()
    total = 0
    with open(path) as f:
        for line in f:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not stack:
                continue
            n = int(count)
            total += n
            # A frame is "function (file:line)"; group by function and file, not line.
            frames = [fr.rsplit(":", 1)[0] + ")" if ":" in fr else fr for fr in stack.split(";")[1:]]
            for name in set(frames):
                inclusive[name] += n
            if frames:
                leaf[frames[-1]] += n
    if not total:
        return "    (no samples)\n"
    out = [f"    {total} samples (non-idle)\n    inclusive:\n"]
    out += [f"      {100 * n / total:5.1f}%  {name}\n" for name, n in inclusive.most_common(top)]
    out.append("    self:\n")
    out += [f"      {100 * n / total:5.1f}%  {name}\n" for name, n in leaf.most_common(top)]
    return "".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=int, default=10)
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--timeout", type=int, default=5)
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--out", default=None, help="directory for the collapsed stacks (default: a temp dir)")
    p.add_argument("--reads", action="store_true", help="profile linearizable reads instead of writes")
    p.add_argument("--gil", action="store_true", help="sample only the thread holding the GIL (where Python time goes)")
    args = p.parse_args(argv)
    if not os.path.exists(PY_SPY) or shutil.which("wrk") is None:
        print("profile-writes: needs py-spy in the venv (dev extras) and wrk", file=sys.stderr)
        return 2
    out_dir = args.out or tempfile.mkdtemp(prefix="rdbsync-profile-")
    os.makedirs(out_dir, exist_ok=True)
    try:
        with fresh_cluster("rdbsync-profile-") as cluster:
            leader, follower = cluster.roles(15)
            if args.reads:
                preload(follower.url, READ_KEYS)
            spies = []
            for role, node in (("follower", follower), ("leader", leader)):
                assert node.proc is not None
                path = os.path.join(out_dir, f"{role}.txt")
                cmd = [PY_SPY, "record", "-p", str(node.proc.pid), "-d", str(args.duration), "-r", "200"]
                cmd += ["-f", "raw", "-o", path, "--nonblocking", *(["--gil"] if args.gil else [])]
                spies.append(
                    (role, node, path, subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
                )
            time.sleep(0.5)  # py-spy attaches
            if args.reads:
                run_wrk("reads", "get.lua", follower.url, args, [str(READ_KEYS)])
            else:
                run_wrk("writes", "put.lua", follower.url, args, [f"p{int(time.time())}"])
            for _, _, _, spy in spies:
                spy.wait(timeout=args.duration + 30)
    except BenchError as exc:
        print(f"profile-writes: {exc}", file=sys.stderr)
        return 2
    for role, node, path, spy in spies:
        print(f"\n{role} {node.id}: {path}")
        if spy.returncode != 0 or not os.path.exists(path):
            print(f"    py-spy failed: {spy.stderr.read().decode(errors='replace') if spy.stderr else ''}")
            continue
        progress(f"{role} profile written")
        print(summarise(path, args.top), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
