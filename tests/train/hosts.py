"""Two cluster hosts on one machine, for the multi-node tests (needs root, iproute2 and util-linux).

Each host is a network namespace with its own address on a veth pair (``10.77.X.1`` and ``10.77.X.2``)
and, when a command runs there, its own hostname (``unshare --uts``); ``ip netns exec`` mounts
``/etc/netns/NAME/hosts`` over ``/etc/hosts``, so each host resolves both names to those addresses.
They share the file system, as cluster nodes share NFS. Everything is removed on exit.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Host:
    netns: str
    """The network namespace."""
    name: str
    """Its hostname (resolvable on both hosts)."""
    addr: str
    """Its address on the link between the hosts."""

    def command(self, argv: list[str]) -> list[str]:
        """``argv`` run on this host: in its namespace, under its own hostname."""
        return ["ip", "netns", "exec", self.netns, "unshare", "--uts", "sh", "-c",
                f"hostname {self.name} && exec {shlex.join(argv)}"]


def cannot_make_hosts() -> str | None:
    """Why namespaces cannot be made here, or None when they can."""
    if os.geteuid() != 0:
        return "needs root (ip netns add)"
    for tool in ("ip", "unshare"):
        if shutil.which(tool) is None:
            return f"needs {tool} (apt-get install iproute2 util-linux)"
    return None


def _run(*argv: str) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {proc.stderr.strip()}")


@contextmanager
def two_hosts(tag: str | None = None) -> Iterator[tuple[Host, Host]]:
    """Make hosts A and B (removed afterwards, also on failure)."""
    tag = tag or str(os.getpid() % 100000)
    subnet = 10 + int(tag) % 200
    hosts = (Host(f"vqa{tag}a", f"vqa{tag}-a", f"10.77.{subnet}.1"), Host(f"vqa{tag}b", f"vqa{tag}-b", f"10.77.{subnet}.2"))
    links = (f"vq{tag}a", f"vq{tag}b")  # interface names: at most 15 characters
    made: list[Host] = []
    try:
        for h in hosts:
            _run("ip", "netns", "add", h.netns)
            made.append(h)
            etc = Path("/etc/netns") / h.netns
            etc.mkdir(parents=True, exist_ok=True)
            (etc / "hosts").write_text("127.0.0.1 localhost\n" + "".join(f"{x.addr} {x.name}\n" for x in hosts))
        _run("ip", "link", "add", links[0], "type", "veth", "peer", "name", links[1])
        for h, link in zip(hosts, links):
            _run("ip", "link", "set", link, "netns", h.netns)
            _run("ip", "-n", h.netns, "addr", "add", f"{h.addr}/24", "dev", link)
            _run("ip", "-n", h.netns, "link", "set", "lo", "up")
            _run("ip", "-n", h.netns, "link", "set", link, "up")
        yield hosts
    finally:
        for h in made:  # deleting a namespace deletes its end of the veth pair, and with it the pair
            left = subprocess.run(["ip", "netns", "pids", h.netns], capture_output=True, text=True).stdout.split()
            for pid in left:  # whatever a failed test left running on the host
                subprocess.run(["kill", "-9", pid], capture_output=True)
            subprocess.run(["ip", "netns", "del", h.netns], capture_output=True)
            shutil.rmtree(Path("/etc/netns") / h.netns, ignore_errors=True)
