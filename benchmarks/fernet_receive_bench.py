"""The Raft transport's receive path, before and after checking each frame's MAC once.

PySyncObj read a frame's time with ``Fernet.extract_timestamp`` (which verifies the
token) and then called ``decrypt`` (which verifies it again); ``rdb._raft`` now reads the
time from the token's head and lets ``decrypt`` verify both. Same tokens, same process,
side by side, in rounds (the machine is shared: compare the ratio).

    .venv/bin/python benchmarks/fernet_receive_bench.py [--frames 20000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cryptography.fernet import Fernet  # noqa: E402

from rdb._raft import fernet_time  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--frames", type=int, default=20_000)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    f = Fernet(Fernet.generate_key())
    for size in (200, 4_000, 64_000):  # an ack, a small batch, a large AppendEntries
        tokens = [f.encrypt_at_time(bytes(size), 1_000 + i) for i in range(min(args.frames, 2_000))]
        n = args.frames
        before, after = [], []
        for _ in range(args.rounds):
            t0 = time.perf_counter()
            for i in range(n):
                token = tokens[i % len(tokens)]
                f.extract_timestamp(token)
                f.decrypt(token)
            before.append((time.perf_counter() - t0) / n)
            t0 = time.perf_counter()
            for i in range(n):
                token = tokens[i % len(tokens)]
                fernet_time(token)
                f.decrypt(token)
            after.append((time.perf_counter() - t0) / n)
        b, a = min(before), min(after)
        print(
            f"{size:>6} B frames: extract_timestamp + decrypt {b * 1e6:6.1f} us, "
            f"head + decrypt {a * 1e6:6.1f} us, ratio {a / b:.2f} (best of {args.rounds} rounds of {n})"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
