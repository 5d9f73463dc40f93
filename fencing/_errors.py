"""The fencing package's exception tree."""

from __future__ import annotations


class FencingError(Exception):
    """Base of every error the fencing package raises."""


class PolicyError(FencingError, ValueError):
    """A fencing policy document is malformed; the message says where and why."""
