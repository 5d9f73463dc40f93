"""File sinks: config parsing and the atomic write (a crash before the rename leaves
the previous file whole)."""

from __future__ import annotations

import os
from typing import Any

import pytest

from node import _sinks
from node._sinks import SinkConfigError, load_sink_config


def test_config_parses_and_resolves_paths_next_to_the_file(tmp_path: Any) -> None:
    (tmp_path / "t.j2").write_text("{{ tables.routes | length }}\n")
    (tmp_path / "s.toml").write_text(
        '[[sink]]\nname = "n"\ntables = ["routes"]\npath = "out.conf"\ntemplate = "t.j2"\nverify = "true"\n'
    )
    (spec,) = load_sink_config(str(tmp_path / "s.toml"))
    assert spec.path == str(tmp_path / "out.conf") and spec.template == str(tmp_path / "t.j2")
    assert spec.cwd == str(tmp_path) and spec.verify == "true" and spec.tables == frozenset({"routes"})


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ('[[sink]]\ntables = ["routes"]\npath = "x"\n', "needs a name and a path"),
        ('[[sink]]\nname = "n"\ntables = []\npath = "x"\n', "tables must be"),
        ('[[sink]]\nname = "n"\ntables = ["r"]\npath = "x"\ntemplate = "missing.j2"\n', "does not exist"),
        ('[[sink]]\nname = "n"\ntables = ["r"]\npath = "x"\nreload_cmd = "y"\n', "unknown setting"),
    ],
)
def test_bad_configs_name_the_problem(tmp_path: Any, body: str, problem: str) -> None:
    (tmp_path / "s.toml").write_text(body)
    with pytest.raises(SinkConfigError, match=problem):
        load_sink_config(str(tmp_path / "s.toml"))


def test_a_crash_before_the_rename_leaves_the_previous_file_whole(tmp_path: Any, monkeypatch: Any) -> None:
    path = str(tmp_path / "out.conf")
    _sinks._write_atomically(path, "old\n")
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd))[1])

    def crash(src: str, dst: str) -> None:
        raise OSError("failpoint: crash before rename")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="failpoint"):
        _sinks._write_atomically(path, "new\n")
    with open(path) as f:
        assert f.read() == "old\n"
    assert synced, "the temporary file is fsynced before the rename"
