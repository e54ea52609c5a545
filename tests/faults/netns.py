"""Network namespaces for fault tests: each node in its own namespace, wired to a "switch"
namespace, and network partitions made by moving switch ports between bridges.

`Fabric(n)` creates (all names carry a prefix and the creating process id, e.g. `fnf4242-n3`):

    <tag>-sw    the switch: bridges br0, br1, ... and one port p<i> per node
    <tag>-n<i>  node i: `lo` up and `eth0` (the other end of the veth pair p<i>) with the
                address 10.213.0.<i+1>/24

The subnet lives only inside these namespaces, so test traffic never reaches the host's
network and never collides with it. At creation every port is on br0 (one flat LAN).
`partition([[0, 1, 2], [3, 4]])` moves each group's ports onto a bridge of its own (`ip link
set p<i> master br<g>`): packets between groups are dropped silently, as in a real split (TCP
connections stay established and retransmit; no RST, no ICMP). `heal()` puts every port back
on br0. No iptables, no routing: a layer-2 cut.

Processes run in a node's namespace through `fabric.exec_prefix(i)` (`ip netns exec <ns>`);
a unix socket in a data dir stays reachable from the root namespace (sockets bound to a path
are not network-namespaced).

`Fabric.create()` first deletes namespaces left by an earlier run that crashed (same prefix,
creating process gone) and raises `NetnsUnavailable` (with the reason: no `ip`, not root, no
CAP_NET_ADMIN, ...) when it cannot make namespaces, so a test can skip. `destroy()` (also the
context manager's exit) deletes every namespace it made, which removes their veth pairs and
bridges; it does not kill processes still inside (stop them first).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from typing import Sequence

SUBNET = "10.213.0"          # /24, only inside the fabric's namespaces
PREFIX = "fnf"               # namespace names: <PREFIX><pid>-sw, <PREFIX><pid>-n<i>
IP_TIMEOUT = 10.0            # seconds for one `ip` invocation


class NetnsUnavailable(Exception):
    """This environment cannot make network namespaces (not the code under test's fault)."""


def _ip(*args: str, input: str | None = None) -> str:
    """Run `ip ARGS`; RuntimeError with ip's message when it fails."""
    r = subprocess.run(["ip", *args], input=input, capture_output=True, text=True, timeout=IP_TIMEOUT)
    if r.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed ({r.returncode}): {r.stderr.strip()}")
    return r.stdout


def list_namespaces() -> list[str]:
    """Names of the network namespaces `ip netns` knows."""
    return [line.split()[0] for line in _ip("netns", "list").splitlines() if line.strip()]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def cleanup_stale(prefix: str = PREFIX) -> list[str]:
    """Delete namespaces named `<prefix><pid>-...` whose creating process `pid` is gone
    (an earlier run that crashed before its cleanup); returns the names deleted. Namespaces
    of a live process (another run in progress) are left alone."""
    pattern = re.compile(rf"^{re.escape(prefix)}(\d+)-")
    deleted = []
    for name in list_namespaces():
        m = pattern.match(name)
        if m and not _pid_alive(int(m.group(1))):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=IP_TIMEOUT)
            deleted.append(name)
    return deleted


@dataclass
class Fabric:
    """`n` node namespaces on one switch namespace; see the module docstring."""

    n: int
    prefix: str = PREFIX
    subnet: str = SUBNET
    tag: str = ""
    made: list[str] = field(default_factory=list)
    bridges: int = 0
    groups: list[list[int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not 1 <= self.n <= 250:
            raise ValueError(f"a fabric holds 1 to 250 nodes, not {self.n}")
        self.tag = self.tag or f"{self.prefix}{os.getpid()}"

    # -- names -------------------------------------------------------------------------------

    @property
    def switch(self) -> str:
        return f"{self.tag}-sw"

    def namespace(self, i: int) -> str:
        return f"{self.tag}-n{i}"

    def address(self, i: int) -> str:
        """Node i's IPv4 address (on its `eth0`)."""
        return f"{self.subnet}.{i + 1}"

    def exec_prefix(self, i: int) -> list[str]:
        """The command prefix that runs a program in node i's namespace."""
        return ["ip", "netns", "exec", self.namespace(i)]

    # -- life cycle --------------------------------------------------------------------------

    def create(self) -> "Fabric":
        """Make the switch and node namespaces, one flat LAN on br0. NetnsUnavailable if this
        environment may not; on any other failure, whatever was made is removed again."""
        if shutil.which("ip") is None:
            raise NetnsUnavailable("iproute2's `ip` is not installed")
        try:
            cleanup_stale(self.prefix)
            self._add_namespace(self.switch)
        except (RuntimeError, OSError, subprocess.SubprocessError) as e:
            self.destroy()
            raise NetnsUnavailable(f"cannot create a network namespace (needs root or CAP_NET_ADMIN "
                                   f"and CAP_SYS_ADMIN): {e}") from None
        try:
            self._ensure_bridges(1)
            for i in range(self.n):
                ns = self.namespace(i)
                self._add_namespace(ns)
                _ip("-n", self.switch, "link", "add", f"p{i}", "type", "veth", "peer", "name", "eth0", "netns", ns)
                _ip("-n", ns, "addr", "add", f"{self.address(i)}/24", "dev", "eth0")
                _ip("-n", ns, "link", "set", "eth0", "up")
                _ip("-n", self.switch, "link", "set", f"p{i}", "master", "br0", "up")
        except BaseException:
            self.destroy()
            raise
        self.groups = [list(range(self.n))]
        return self

    def destroy(self) -> None:
        """Delete every namespace this fabric made (their links go with them). Never raises
        for a namespace already gone."""
        for ns in reversed(self.made):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=IP_TIMEOUT)
        self.made.clear()
        self.bridges = 0
        self.groups = []

    def __enter__(self) -> "Fabric":
        return self.create()

    def __exit__(self, *exc: object) -> None:
        self.destroy()

    # -- faults ------------------------------------------------------------------------------

    def partition(self, groups: Sequence[Sequence[int]]) -> None:
        """Split the network into `groups` (each node in exactly one): nodes of a group reach
        each other and nobody else. ValueError if the groups do not cover every node once."""
        flat = sorted(i for g in groups for i in g)
        if flat != list(range(self.n)) or any(not g for g in groups):
            raise ValueError(f"groups {list(map(list, groups))} must cover nodes 0..{self.n - 1} exactly once")
        self._ensure_bridges(len(groups))
        batch = "".join(f"link set p{i} master br{g}\n" for g, members in enumerate(groups) for i in members)
        _ip("-n", self.switch, "-batch", "-", input=batch)
        self.groups = [list(g) for g in groups]

    def heal(self) -> None:
        """Every node back on one LAN."""
        self.partition([list(range(self.n))])

    def reachable(self, a: int, b: int) -> bool:
        """Whether the current partition lets node a reach node b."""
        return any(a in g and b in g for g in self.groups)

    # -- helpers -----------------------------------------------------------------------------

    def _add_namespace(self, ns: str) -> None:
        _ip("netns", "add", ns)
        self.made.append(ns)
        _ip("-n", ns, "link", "set", "lo", "up")

    def _ensure_bridges(self, count: int) -> None:
        while self.bridges < count:
            br = f"br{self.bridges}"
            _ip("-n", self.switch, "link", "add", br, "type", "bridge")
            _ip("-n", self.switch, "link", "set", br, "up")
            self.bridges += 1
