"""Installing a Debian package a test needs (as scripts/test does for nftables).

A test calls ``ensure_tool`` from its own set-up: the tool is installed with apt when it
is missing and the test runs as root; otherwise the test is skipped with the reason.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

_APT = ["apt-get", "-qq", "-o", "DPkg::Lock::Timeout=300"]


def install(packages: list[str]) -> str | None:
    """apt-get install ``packages``; None on success, else why it could not."""
    if os.geteuid() != 0:
        return "not root, so apt-get cannot install it"
    if shutil.which("apt-get") is None:
        return "no apt-get on this machine"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    result = subprocess.run(
        [*_APT, "install", "-y", "--no-install-recommends", *packages], env=env, capture_output=True, timeout=900
    )
    if result.returncode != 0:  # the package lists may be missing or stale: update once
        subprocess.run([*_APT, "update"], env=env, capture_output=True, timeout=600)
        result = subprocess.run(
            [*_APT, "install", "-y", "--no-install-recommends", *packages], env=env, capture_output=True, timeout=900
        )
    if result.returncode != 0:
        tail = result.stderr.decode(errors="replace").strip().splitlines()[-3:]
        return f"apt-get install {' '.join(packages)} failed: {' / '.join(tail)}"
    return None


def ensure_tool(binary: str, packages: list[str]) -> str:
    """The path of ``binary``, installing ``packages`` first if it is missing; skips the
    calling test with a clear message when that is impossible."""
    path = shutil.which(binary)
    if path is None:
        problem = install(packages)
        path = shutil.which(binary)
        if path is None:
            pytest.skip(f"{binary} (Debian: {' '.join(packages)}) is missing and cannot be installed: {problem}")
    return path
