"""StateMachine.frozen(): the copy full resyncs project from outside the apply lock."""

from __future__ import annotations

from rdb import Reference, StateMachine
from rdb import _commands as cmds


def test_frozen_view_does_not_see_later_commits() -> None:
    sm = StateMachine(references=[Reference("c/", "p", "p/")])
    sm.apply(cmds.put("p/x", {}, request_id="1"), 1)
    sm.apply(cmds.put("c/1", {"p": "x"}, request_id="2"), 2)
    view = sm.frozen()
    sm.apply(cmds.put("c/2", {"p": "x"}, request_id="3"), 3)
    sm.apply(cmds.delete("c/1", request_id="4"), 4)
    sm.apply(cmds.put("z", 1, request_id="5"), 5)
    assert view.revision == 2 and sm.revision == 5
    assert [kv.key for kv in view.range("")[0]] == ["c/1", "p/x"]
    assert view.children("p/x") == {"c/1"} and sm.children("p/x") == {"c/2"}
    assert [e.revision for e in view.events_since(1)] == [1, 2]
    assert view.get("z") is None and sm.get("z") is not None
