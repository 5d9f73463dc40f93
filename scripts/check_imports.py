"""Import contracts: apps -> node -> fencing -> resync -> rdb; only rdb touches pysyncobj;
only node touches aiohttp; apps import only node's public app API (``node.app``)."""

from __future__ import annotations

import ast
import pathlib
import sys

ALLOWED = {
    "apps": {"node"},
    "rdb": set(),
    "resync": {"rdb"},
    "fencing": {"resync", "rdb"},
    "node": {"fencing", "resync", "rdb", "chaos"},  # chaos: only the CLI dispatches `rdbsync chaos` to it
    # The chaos harness talks HTTP only; its model and checkers stay independent of the code they check.
    "chaos": set(),
}
OWNED_THIRD_PARTY = {"pysyncobj": "rdb", "aiohttp": "node"}
#: The only modules of ours an app may import (users import no underscore module).
PUBLIC_FOR = {"apps": {"node.app"}}


def imported_modules(path: pathlib.Path) -> set[str]:
    modules: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules.add(node.module)
            modules.update(f"{node.module}.{alias.name}" for alias in node.names if node.module in ALLOWED)
    return modules


def imported_roots(path: pathlib.Path) -> set[str]:
    return {m.split(".")[0] for m in imported_modules(path)}


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
            public = PUBLIC_FOR.get(package)
            if public is not None:
                for module in sorted(imported_modules(path)):
                    top = module.split(".")[0]
                    if (
                        top in ALLOWED
                        and top != package
                        and not any(module == p or module.startswith(p + ".") for p in public)
                    ):
                        problems.append(
                            f"{path.relative_to(root)}: {package} may import only {sorted(public)}, not {module}"
                        )
    for line in problems:
        print(line)
    print(f"import contracts: {len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
