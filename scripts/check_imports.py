"""Import contracts: apps -> node -> fencing -> resync -> rdb; only rdb touches pysyncobj; only node touches aiohttp.

apps import only node's public app API, node.app (users import no underscore module).

rdbsync (the client and CLI) imports none of ours and no aiohttp, except that its CLI hands
`rdbsync node|run|chaos` to node.cli. node/launcher.py imports only the standard library, and
is the one module of node the chaos harness may use (it starts processes; it checks nothing).
prometheus_client is node's too: rdb and resync report timings through callbacks.
"""

from __future__ import annotations

import ast
import pathlib
import sys

ALLOWED = {
    "apps": {"node"},  # node.app only (ONLY_MODULE)
    "rdb": set(),
    "resync": {"rdb"},
    "fencing": {"resync", "rdb"},
    "node": {"fencing", "resync", "rdb", "chaos"},  # chaos: only the CLI dispatches `rdbsync chaos` to it
    # The chaos harness talks HTTP only; its model and checkers stay independent of the code they check.
    "chaos": {"node"},  # node.launcher only (ONLY_MODULE): it starts the processes, it checks nothing
    "rdbsync": {"node"},  # rdbsync/cli.py only, node.cli only, lazily (MODULE_RULES, ONLY_MODULE)
}
# module (path) -> the packages of ours it may import; None: none of ours and no third party
MODULE_RULES: dict[str, set[str] | None] = {
    "node/launcher.py": None,
    "rdbsync/cli.py": {"node"},
    # The daemon the harness runs beside each node: a user of the public agent library (the
    # code under test, in its own process), not part of what checks it.
    "chaos/agent_daemon.py": {"rdbsync"},
}
# package -> the one module of another package it may import
ONLY_MODULE = {("chaos", "node"): "node.launcher", ("rdbsync", "node"): "node.cli", ("apps", "node"): "node.app"}
OWNED_THIRD_PARTY = {
    "pysyncobj": "rdb",
    "aiohttp": "node",
    "prometheus_client": "node",
    "httpx": "rdbsync",
    "click": "rdbsync",
    "rich": "rdbsync",
}


def imported_modules(path: pathlib.Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def imported_roots(path: pathlib.Path) -> set[str]:
    return {name.split(".")[0] for name in imported_modules(path)}


def main() -> int:
    root = pathlib.Path(__file__).resolve().parent.parent
    problems = []
    for package, allowed in ALLOWED.items():
        for path in sorted((root / package).rglob("*.py")):
            rel = str(path.relative_to(root))
            rule = MODULE_RULES.get(rel, allowed if package != "rdbsync" else set())
            for module in imported_modules(path):
                name = module.split(".")[0]
                if rel == "node/launcher.py" and name not in sys.stdlib_module_names and name != "__future__":
                    problems.append(f"{rel}: the launcher imports only the standard library, not {module}")
                if name in ALLOWED and name != package and (rule is None or name not in rule):
                    problems.append(f"{rel}: {package} must not import {name}")
                only = ONLY_MODULE.get((package, name))
                if only is not None and module != only:
                    problems.append(f"{rel}: {package} may import only {only} of {name}, not {module}")
                owner = OWNED_THIRD_PARTY.get(name)
                if owner is not None and owner != package:
                    problems.append(f"{path.relative_to(root)}: only {owner} may import {name}")
    for line in problems:
        print(line)
    print(f"import contracts: {len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
