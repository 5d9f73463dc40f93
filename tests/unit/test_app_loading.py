"""A bad app stops the node at start-up with a message naming the problem, never a
traceback: through the real entry points (``rdbsync node --app``, ``RDBSYNC_APP``,
``rdbsync run --app``), each kind of problem once."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from node._exceptions import AppError
from node._loading import app_identity, load_app
from node.app import App, BladeTable, Consumer, Table, UndeclaredRead

REPO = Path(__file__).resolve().parents[2]

HEADER = """
from pydantic import BaseModel
from node.app import App, BladeTable, Consumer, Table

class Thing(BaseModel):
    name: str
    parent: str = ""
"""

BAD_APPS = {
    "import_error": ("import no_such_module_anywhere\n", "cannot import 'badapp': ModuleNotFoundError"),
    "undeclared_read": (
        HEADER + 'app = App("x", "1", [Table("things", Thing)], [BladeTable("t", "b", "widgets")],'
        ' [Consumer("c", frozenset({"t"}))])\n',
        "blade table 't': its projection reads undeclared table 'widgets'",
    ),
    "undeclared_join": (
        HEADER + 'app = App("x", "1", [Table("things", Thing)], [BladeTable("t", "b", "things", joins=("parent",))],'
        ' [Consumer("c", frozenset({"t"}))])\n',
        "reads through things.parent, which is not a declared reference of 'things'",
    ),
    "undeclared_join_in_code": (
        HEADER + 'app = App("x", "1", [Table("p", Thing), Table("things", Thing, references={"parent": "p"})],'
        ' [BladeTable("t", "b", "things", where=lambda ctx, row: ctx.parent(row, "parent") is None)],'
        ' [Consumer("c", frozenset({"t"}))])\n',
        "blade table 't': its projection reads through undeclared join 'parent'",
    ),
    "duplicate_table": (
        HEADER + 'app = App("x", "1", [Table("things", Thing), Table("things", Thing)],'
        ' [BladeTable("t", "b", "things")], [Consumer("c", frozenset({"t"}))])\n',
        "two management tables are named 'things'",
    ),
    "unknown_reference": (
        HEADER + 'app = App("x", "1", [Table("things", Thing, references={"parent": "parents"})],'
        ' [BladeTable("t", "b", "things")], [Consumer("c", frozenset({"t"}))])\n',
        "table 'things': field 'parent' references unknown table 'parents'",
    ),
    "unknown_consumer_table": (
        HEADER + 'app = App("x", "1", [Table("things", Thing)], [BladeTable("t", "b", "things")],'
        ' [Consumer("c", frozenset({"t", "u"}))])\n',
        "consumer 'c' depends on unknown blade table(s) ['u']",
    ),
    "not_an_app": ("app = 42\n", "app is a int, not a node.app.App"),
    "missing_attribute": ("other = 1\n", "module 'badapp' has no attribute 'app'"),
}


def _node_argv(tmp_path: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "node",
        "node",
        "--id",
        "n1",
        "--raft",
        "127.0.0.1:1",
        "--http",
        "127.0.0.1:2",
        "--data-dir",
        str(tmp_path / "data"),
    ]


@pytest.mark.parametrize("case", sorted(BAD_APPS))
def test_a_bad_app_stops_the_node_with_a_message(tmp_path: Path, case: str) -> None:
    source, message = BAD_APPS[case]
    (tmp_path / "badapp.py").write_text(textwrap.dedent(source))
    env = dict(os.environ, RDBSYNC_SECRET="s", PYTHONPATH=str(REPO))
    proc = subprocess.run(
        [*_node_argv(tmp_path), "--app", "badapp:app"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "data").exists()  # refused before anything was started


def test_rdbsync_app_env_var_and_run_refuse_a_bad_app(tmp_path: Path) -> None:
    source, message = BAD_APPS["duplicate_table"]
    (tmp_path / "badapp.py").write_text(textwrap.dedent(source))
    env = dict(os.environ, RDBSYNC_SECRET="s", RDBSYNC_APP="badapp:app", PYTHONPATH=str(REPO))
    proc = subprocess.run(_node_argv(tmp_path), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr
    run = subprocess.run(
        [
            os.path.join(os.path.dirname(sys.executable), "rdbsync"),
            "run",
            "--app",
            "badapp:app",
            "--data-dir",
            str(tmp_path / "cluster"),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2 and message in run.stderr and "Traceback" not in run.stderr
    assert not (tmp_path / "cluster").exists()


def test_the_default_app_is_ontap_and_both_shipped_apps_load() -> None:
    assert load_app("apps.ontap:app").name == "ontap"
    assert load_app("apps.proxy:app").name == "proxy"
    with pytest.raises(AppError, match="must look like module:attribute"):
        load_app("apps.proxy")
    assert app_identity(load_app("apps.ontap:app")) != app_identity(load_app("apps.proxy:app"))


def test_a_projection_that_reads_through_an_undeclared_join_fails_its_resync() -> None:
    """Declarations are checked at start-up; a read outside them (in code) fails loudly
    when it runs instead of silently missing incremental updates."""
    from pydantic import BaseModel

    from node._blades import build_blades
    from node._tables import TableRegistry
    from rdb import StateMachine
    from rdb._commands import put

    class Thing(BaseModel):
        name: str
        other: str = "o"

    app = App(
        "x",
        "1",
        [Table("things", Thing, references={"other": "others"}), Table("others", Thing)],
        [BladeTable("t", "b", "things", where=lambda ctx, row: ctx.parent(row, "other") is None)],
        [Consumer("c", frozenset({"t"}))],
    )
    registry = TableRegistry(app)
    table = build_blades(app, registry, "n1")["b"]["t"]
    sm = StateMachine(references=registry.references)
    sm.apply(put("tables/others/o", {"name": "o", "other": "o"}, request_id="r0"), 1)
    sm.apply(put("tables/things/a", {"name": "a", "other": "o"}, request_id="r1"), 2)
    with pytest.raises(UndeclaredRead, match="reads through undeclared join 'other'"):
        table.desired_all(sm)


def test_rdbsync_run_passes_the_app_to_every_node(monkeypatch: pytest.MonkeyPatch) -> None:
    import node.cli

    seen: list[list[str]] = []
    monkeypatch.setattr(node.cli, "run_local_cluster", lambda args: seen.append(list(args.node_arg)) or 0)
    monkeypatch.setattr(node.cli, "setup_logging", lambda *a, **k: None)
    assert node.cli.main(["run", "--app", "apps.proxy:app", "--node-arg=--audit-interval=5"]) == 0
    assert seen == [["--audit-interval=5", "--app", "apps.proxy:app"]]  # every node gets it
    scripts_run = (REPO / "scripts" / "run").read_text()
    assert '"$@"' in scripts_run  # scripts/run --app ... reaches rdbsync run


def test_the_start_up_probe_finds_an_undeclared_join_in_a_real_projection() -> None:
    import dataclasses

    from node._loading import probe_projections

    ontap = load_app("apps.ontap:app")
    assert probe_projections(ontap) is None
    blades = [dataclasses.replace(b, joins=()) if b.name == "vldb" else b for b in ontap.blades]
    broken = dataclasses.replace(ontap, blades=blades)
    assert probe_projections(broken) == "blade table 'vldb': its projection reads through undeclared join 'aggregate'"
