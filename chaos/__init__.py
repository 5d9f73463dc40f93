"""chaos: the rdbsync chaos harness (``rdbsync chaos`` / ``scripts/chaos``).

It starts its own cluster, drives client workloads under a seeded fault schedule, heals,
and checks the guarantees with independent checkers (``chaos._checkers``).
"""

from chaos._runner import main

__all__ = ["main"]
