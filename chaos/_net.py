"""Network namespaces for real partitions: one namespace per node on a bridge the harness
creates, on a free /24 of the benchmarking range 198.18.0.0/15, nftables rules for cuts
and random packet loss.

Only what this module created is ever touched: names carry a per-run tag, and
``teardown`` removes every namespace and the bridge, also after an interrupt.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import subprocess
from collections.abc import Iterable

BENCHMARK_RANGE = "198.18.0.0/15"  # RFC 2544: never routed off the machine
SUBNET_LOCK = "/tmp/rdbsync-chaos-subnet.lock"  # serialises picking a free /24 across runs


def free_subnet_prefix() -> str:
    """The first 198.18-19.x.0/24 no interface on this host uses yet (runs must not share
    one: two bridges on one subnet would send a run's requests to the other's nodes)."""
    out = subprocess.run(["ip", "-o", "-4", "addr", "show"], capture_output=True, text=True, timeout=10).stdout
    used = {f"{a}.{b}.{c}" for a, b, c in re.findall(r"inet (198)\.(1[89])\.(\d+)\.", out)}
    for second in (18, 19):
        for third in range(256):
            prefix = f"198.{second}.{third}"
            if prefix not in used:
                return prefix + "."
    raise NetUnavailable("every /24 of 198.18.0.0/15 is in use")


class NetUnavailable(Exception):
    """Namespaces cannot be made here (not root, or ip/nft missing, or the kernel says no)."""


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, check=check, capture_output=True, text=True, timeout=20)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class NetLab:
    """A bridge and one namespace per node. Use as a context manager."""

    def __init__(self, node_ids: Iterable[str], tag: str | None = None) -> None:
        # The owner's pid: stale labs of runs that died hard can be recognised and removed.
        self.tag = tag or str(os.getpid())
        self.bridge = f"rdbbr{self.tag}"
        self.nodes = list(node_ids)
        self.subnet_prefix = ""
        self.address: dict[str, str] = {}
        self.created_ns: list[str] = []
        self.bridge_created = False
        self.loss_percent = 0
        self.cuts: set[tuple[str, str]] = set()

    def namespace(self, nid: str) -> str:
        return f"rdbc{self.tag}{nid}"

    @staticmethod
    def check_available() -> None:
        if os.geteuid() != 0:
            raise NetUnavailable("network namespaces need root")
        for tool in ("ip", "nft"):
            if shutil.which(tool) is None:
                raise NetUnavailable(f"{tool} is not installed (iproute2, nftables)")

    @staticmethod
    def remove_stale() -> list[str]:
        """Remove namespaces and bridges left by chaos runs whose process is gone (one
        killed with SIGKILL cannot clean up after itself). Only our own names match."""
        removed = []
        listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10).stdout
        links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, timeout=10).stdout
        for name, pid in re.findall(r"^(rdbc(\d+)n\d+)", listing, re.M) + re.findall(r": (rdbbr(\d+))[:@]", links):
            if not _pid_alive(int(pid)):
                kind = ("netns", "del", name) if name.startswith("rdbc") else ("link", "del", name)
                _run("ip", *kind, check=False)
                removed.append(name)
        return removed

    def setup(self) -> None:
        self.check_available()
        self.remove_stale()
        try:
            # Pick and claim the subnet under a host-wide lock: two runs started at once
            # both saw the same /24 free and talked to each other's nodes.
            with open(SUBNET_LOCK, "a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                self.subnet_prefix = free_subnet_prefix()
                self.address = {nid: f"{self.subnet_prefix}{i + 2}" for i, nid in enumerate(self.nodes)}
                _run("ip", "link", "add", self.bridge, "type", "bridge")
                self.bridge_created = True
                _run("ip", "addr", "add", self.subnet_prefix + "1/24", "dev", self.bridge)
            _run("ip", "link", "set", self.bridge, "up")
            for nid in self.nodes:
                ns = self.namespace(nid)
                veth = f"rdbv{self.tag}{nid}"[:15]
                _run("ip", "netns", "add", ns)
                self.created_ns.append(ns)
                _run("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
                _run("ip", "link", "set", veth, "master", self.bridge, "up")
                _run("ip", "-n", ns, "addr", "add", self.address[nid] + "/24", "dev", "eth0")
                _run("ip", "-n", ns, "link", "set", "eth0", "up")
                _run("ip", "-n", ns, "link", "set", "lo", "up")
                self._nft(nid, "add table inet rdbchaos")
                for hook in ("input", "output"):
                    self._nft(nid, f"add chain inet rdbchaos {hook} {{ type filter hook {hook} priority 0; }}")
        except (subprocess.CalledProcessError, OSError) as exc:
            self.teardown()
            detail = exc.stderr.strip() if isinstance(exc, subprocess.CalledProcessError) else str(exc)
            raise NetUnavailable(f"cannot build the namespace lab: {detail}") from exc

    def _nft(self, nid: str, rule: str) -> None:
        _run("ip", "netns", "exec", self.namespace(nid), "nft", *rule.split())

    def prefix_argv(self, nid: str) -> list[str]:
        """Run a command inside node ``nid``'s namespace."""
        return ["ip", "netns", "exec", self.namespace(nid)]

    def apply(self, cuts: set[tuple[str, str]], loss_percent: int = 0) -> None:
        """Make the rules say exactly: no traffic between each (a, b) pair in ``cuts``
        (both ways), and ``loss_percent`` random loss on node-to-node packets."""
        self.cuts = {tuple(sorted(c)) for c in cuts}  # type: ignore[misc]
        self.loss_percent = loss_percent
        for nid in self.nodes:
            for hook in ("input", "output"):
                self._nft(nid, f"flush chain inet rdbchaos {hook}")
            peers = [b if a == nid else a for a, b in self.cuts if nid in (a, b)]
            for peer in peers:
                self._nft(nid, f"add rule inet rdbchaos output ip daddr {self.address[peer]} drop")
                self._nft(nid, f"add rule inet rdbchaos input ip saddr {self.address[peer]} drop")
            if loss_percent:
                others = ", ".join(self.address[o] for o in self.nodes if o != nid)
                rule = f"output ip daddr {{ {others} }} numgen random mod 100 < {loss_percent} drop"
                self._nft(nid, f"add rule inet rdbchaos {rule}")

    def heal(self) -> None:
        self.apply(set(), 0)

    def teardown(self) -> None:
        for ns in self.created_ns:
            _run("ip", "netns", "del", ns, check=False)
        self.created_ns = []
        if self.bridge_created:
            _run("ip", "link", "del", self.bridge, check=False)
            self.bridge_created = False

    def __enter__(self) -> NetLab:
        self.setup()
        return self

    def __exit__(self, *exc: object) -> None:
        self.teardown()
