"""Import contracts: node -> fencing -> resync -> rdb; only rdb touches pysyncobj; only node touches aiohttp
and prometheus_client (rdb and resync report timings through callbacks)."""

from __future__ import annotations

import ast
import pathlib
import sys

ALLOWED = {
    "rdb": set(),
    "resync": {"rdb"},
    "fencing": {"resync", "rdb"},
    "node": {"fencing", "resync", "rdb", "chaos"},  # chaos: only the CLI dispatches `rdbsync chaos` to it
    # The chaos harness talks HTTP only; its model and checkers stay independent of the code they check.
    "chaos": set(),
}
OWNED_THIRD_PARTY = {"pysyncobj": "rdb", "aiohttp": "node", "prometheus_client": "node"}


def imported_roots(path: pathlib.Path) -> set[str]:
    roots: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def main() -> int:
    root = pathlib.Path(__file__).resolve().parent.parent
    problems = []
    for package, allowed in ALLOWED.items():
        for path in sorted((root / package).rglob("*.py")):
            for name in imported_roots(path):
                if name in ALLOWED and name != package and name not in allowed:
                    problems.append(f"{path.relative_to(root)}: {package} must not import {name}")
                owner = OWNED_THIRD_PARTY.get(name)
                if owner is not None and owner != package:
                    problems.append(f"{path.relative_to(root)}: only {owner} may import {name}")
    for line in problems:
        print(line)
    print(f"import contracts: {len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
