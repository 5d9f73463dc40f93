"""A fencing policy from a document (parsed JSON or TOML), validated with readable errors.

The document's shape (every key optional; TOML shown)::

    failures_to_fence = 1        # fence after this many failures in a row...
    fence_after_seconds = 0      # ...or after failing this long (0: off)
    backoff_initial = 0.1        # retry backoff: capped exponential
    backoff_max = 30
    backoff_factor = 2
    max_lag_revisions = 10000    # a table further behind than this has failed
    max_lag_seconds = 5

    [consumers.nfs]              # a protocol: replaces the default for nfs
    tables = ["vservers", "lifs", "export_rules", "vldb", "volumes"]
    quorum_grace = 5

    [[consumers.nfs.scoped]]     # these tables matter to nfs only for these vservers
    vservers = ["vs_secure"]
    tables = ["cifs_shares"]

    [consumers.backup]           # a client application on the node
    kind = "application"
    tables = ["volumes", "vldb"]

Consumers the document does not name keep their defaults (the app's policy).
Pure: no I/O; the caller reads and parses the file.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from fencing._errors import PolicyError
from fencing._policy import (
    DEFAULT_QUORUM_GRACE,
    MIN_QUORUM_GRACE,
    FencePolicy,
    ScopedDependency,
)

_NAME = r"[a-z][a-z0-9_-]{0,62}"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=False, frozen=True)


class _Scoped(_Strict):
    vservers: list[str] = Field(min_length=1)
    tables: list[str] = Field(min_length=1)


class _Consumer(_Strict):
    kind: Literal["protocol", "application"] = "protocol"
    tables: list[str] = Field(default_factory=list)
    scoped: list[_Scoped] = Field(default_factory=list)
    quorum_grace: float | None = Field(default=None, ge=MIN_QUORUM_GRACE, le=3600)

    @model_validator(mode="after")
    def _depends_on_something(self) -> _Consumer:
        if not self.tables and not self.scoped:
            raise ValueError("a consumer needs 'tables' or 'scoped' dependencies")
        return self


class _Document(_Strict):
    failures_to_fence: int = Field(default=1, ge=1, le=1_000_000)
    fence_after_seconds: float = Field(default=0.0, ge=0, le=86_400)
    backoff_initial: float = Field(default=0.1, gt=0, le=3600)
    backoff_max: float = Field(default=30.0, gt=0, le=86_400)
    backoff_factor: float = Field(default=2.0, ge=1, le=100)
    max_lag_revisions: int = Field(default=10_000, ge=1, le=1_000_000_000)
    max_lag_seconds: float = Field(default=5.0, gt=0, le=86_400)
    consumers: dict[str, _Consumer] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _backoff_in_order(self) -> _Document:
        if self.backoff_max < self.backoff_initial:
            raise ValueError("backoff_max must not be smaller than backoff_initial")
        return self


def _readable(err: ValidationError) -> str:
    parts = []
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"]) or "the document"
        parts.append(f"{where}: {e['msg']}")
    return "; ".join(parts)


def policy_from_document(
    doc: Mapping[str, Any],
    *,
    known_tables: Collection[str],
    quorum_grace: float = DEFAULT_QUORUM_GRACE,
    base: FencePolicy,
) -> FencePolicy:
    """Build the policy ``doc`` describes, over ``base`` (the app's default policy).
    ``quorum_grace`` is the grace of every consumer whose entry does not set its own.
    Raises ``PolicyError`` naming each bad field: unknown keys, out-of-range numbers,
    unknown tables."""
    try:
        parsed = _Document.model_validate(doc)
    except ValidationError as err:
        raise PolicyError(f"invalid fencing policy: {_readable(err)}") from None
    protocols = [n for n in base.consumers() if base.kind(n) == "protocol"]
    problems = []
    for name, consumer in parsed.consumers.items():
        if not re.fullmatch(_NAME, name):
            problems.append(f"consumers.{name}: a name is lowercase letters, digits, '-' or '_'")
        tables = set(consumer.tables).union(*(s.tables for s in consumer.scoped))
        unknown = sorted(tables - set(known_tables))
        if unknown:
            problems.append(f"consumers.{name}: unknown table(s) {unknown}; known: {sorted(known_tables)}")
        if name in protocols and consumer.kind != "protocol":
            problems.append(f"consumers.{name}: {name} is a protocol")
    if problems:
        raise PolicyError("invalid fencing policy: " + "; ".join(problems))
    dependencies = dict(base.dependencies)
    scoped = dict(base.scoped)
    applications = set(base.applications)
    grace = {name: base.grace(name) for name in base.consumers()}
    for name, consumer in parsed.consumers.items():
        dependencies[name] = frozenset(consumer.tables)
        scoped[name] = tuple(ScopedDependency(frozenset(s.vservers), frozenset(s.tables)) for s in consumer.scoped)
        if consumer.kind == "application":
            applications.add(name)
        grace[name] = quorum_grace if consumer.quorum_grace is None else consumer.quorum_grace
    return FencePolicy(
        dependencies=dependencies,
        scoped={k: v for k, v in scoped.items() if v},
        applications=frozenset(applications),
        failures_to_fence=parsed.failures_to_fence,
        fence_after_seconds=parsed.fence_after_seconds,
        backoff_initial=parsed.backoff_initial,
        backoff_max=parsed.backoff_max,
        backoff_factor=parsed.backoff_factor,
        max_lag_revisions=parsed.max_lag_revisions,
        max_lag_seconds=parsed.max_lag_seconds,
        quorum_grace=grace,
    )


def policy_to_document(policy: FencePolicy) -> dict[str, Any]:
    """The document that ``policy_from_document`` turns back into ``policy`` (what
    ``GET /v1/policy`` shows)."""
    consumers: dict[str, Any] = {}
    for name in policy.consumers():
        entry: dict[str, Any] = {
            "kind": policy.kind(name),
            "tables": sorted(policy.dependencies.get(name, ())),
            "quorum_grace": policy.grace(name),
        }
        if policy.scoped.get(name):
            entry["scoped"] = [
                {"vservers": sorted(rule.vservers), "tables": sorted(rule.tables)} for rule in policy.scoped[name]
            ]
        consumers[name] = entry
    return {
        "failures_to_fence": policy.failures_to_fence,
        "fence_after_seconds": policy.fence_after_seconds,
        "backoff_initial": policy.backoff_initial,
        "backoff_max": policy.backoff_max,
        "backoff_factor": policy.backoff_factor,
        "max_lag_revisions": policy.max_lag_revisions,
        "max_lag_seconds": policy.max_lag_seconds,
        "consumers": consumers,
    }
