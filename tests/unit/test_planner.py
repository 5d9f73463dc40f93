"""Unit and property tests of the pure resync planner (``resync.plan``).

The reference is the obvious one: after the plan, the table equals the desired rows. With
``keys`` (an incremental resync) only those keys may change.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from resync import Action, apply_plan, plan

KEYS = st.sampled_from(["a", "b", "c", "d", "e", "f"])
ROWS = st.fixed_dictionaries({"v": st.integers(0, 2)}, optional={"w": st.sampled_from(["x", "y"])})
TABLES = st.dictionaries(KEYS, ROWS, max_size=6)
ORDER = {"remove": 0, "modify": 1, "add": 2}


def naive(desired: dict[str, Any], actual: dict[str, Any], keys: set[str] | None = None) -> set[tuple[str, str]]:
    """(kind, key) of every action a correct plan must contain, computed the obvious way."""
    out = set()
    for key in set(desired) | set(actual) if keys is None else keys:
        if key in desired and key not in actual:
            out.add(("add", key))
        elif key in actual and key not in desired:
            out.add(("remove", key))
        elif key in desired and desired[key] != actual[key]:
            out.add(("modify", key))
    return out


@given(TABLES, TABLES)
def test_plan_turns_actual_into_desired(desired: dict[str, Any], actual: dict[str, Any]) -> None:
    actions = plan(desired, actual)
    assert apply_plan(actual, actions) == desired
    assert {(a.kind, a.key) for a in actions} == naive(desired, actual)
    assert (actions == []) == (desired == actual)


@given(TABLES, TABLES)
def test_plan_is_sorted_by_kind_then_key_with_one_action_per_key(
    desired: dict[str, Any], actual: dict[str, Any]
) -> None:
    actions = plan(desired, actual)
    assert actions == sorted(actions, key=lambda a: (ORDER[a.kind], a.key))
    assert len({a.key for a in actions}) == len(actions)
    assert plan(desired, actual) == actions  # deterministic


@given(TABLES, TABLES)
def test_no_action_for_an_equal_row(desired: dict[str, Any], actual: dict[str, Any]) -> None:
    touched = {a.key for a in plan(desired, actual)}
    for key in set(desired) & set(actual):
        if desired[key] == actual[key]:
            assert key not in touched


@given(TABLES, TABLES, st.sets(KEYS))
def test_plan_restricted_to_keys(desired: dict[str, Any], actual: dict[str, Any], keys: set[str]) -> None:
    actions = plan(desired, actual, keys)
    assert {a.key for a in actions} <= keys
    assert {(a.kind, a.key) for a in actions} == naive(desired, actual, keys)
    result = apply_plan(actual, actions)
    for key in set(desired) | set(actual):
        source = desired if key in keys else actual
        assert result.get(key) == source.get(key)
    assert actions == sorted(actions, key=lambda a: (ORDER[a.kind], a.key))


@given(TABLES, TABLES)
def test_plan_over_every_key_equals_the_full_plan(desired: dict[str, Any], actual: dict[str, Any]) -> None:
    assert plan(desired, actual, set(desired) | set(actual) | {"zz"}) == plan(desired, actual)


def test_plan_examples() -> None:
    desired = {"a": {"v": 1}, "b": {"v": 2}, "c": {"v": 3}}
    actual = {"b": {"v": 2}, "c": {"v": 0}, "d": {"v": 4}}
    assert plan(desired, actual) == [
        Action("remove", "d", None),
        Action("modify", "c", {"v": 3}),
        Action("add", "a", {"v": 1}),
    ]
    assert plan(desired, actual, ["a"]) == [Action("add", "a", {"v": 1})]
    assert plan(desired, actual, []) == []
    assert plan({}, {}) == []


def test_rows_compare_by_value_whatever_the_mapping_type() -> None:
    assert plan({"a": MappingProxyType({"v": 1})}, {"a": {"v": 1}}) == []
    assert plan({"a": {"v": [1, 2]}}, {"a": {"v": [1, 2]}}) == []


def test_apply_plan_does_not_mutate_its_input() -> None:
    actual = {"a": {"v": 1}}
    out = apply_plan(actual, [Action("remove", "a", None), Action("add", "b", {"v": 2})])
    assert actual == {"a": {"v": 1}}
    assert out == {"b": {"v": 2}}


def test_action_to_dict() -> None:
    assert Action("add", "k", {"v": 1}).to_dict() == {"action": "add", "key": "k", "row": {"v": 1}}
    assert Action("remove", "k", None).to_dict() == {"action": "remove", "key": "k", "row": None}
