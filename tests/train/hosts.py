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
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

IFNAME = "vqnet0"
"""The name of the link between the hosts on each host (for GLOO_SOCKET_IFNAME)."""


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
        for h, link in zip(hosts, links):  # inside each host the link is IFNAME, as cluster nodes name theirs alike
            _run("ip", "link", "set", link, "netns", h.netns)
            _run("ip", "-n", h.netns, "link", "set", link, "name", IFNAME)
            _run("ip", "-n", h.netns, "addr", "add", f"{h.addr}/24", "dev", IFNAME)
            _run("ip", "-n", h.netns, "link", "set", "lo", "up")
            _run("ip", "-n", h.netns, "link", "set", IFNAME, "up")
        yield hosts
    finally:
        for h in made:  # deleting a namespace deletes its end of the veth pair, and with it the pair
            left = subprocess.run(["ip", "netns", "pids", h.netns], capture_output=True, text=True).stdout.split()
            for pid in left:  # whatever a failed test left running on the host
                subprocess.run(["kill", "-9", pid], capture_output=True)
            subprocess.run(["ip", "netns", "del", h.netns], capture_output=True)
            shutil.rmtree(Path("/etc/netns") / h.netns, ignore_errors=True)


@contextmanager
def sshd_on(hosts: tuple[Host, ...], workdir: Path) -> Iterator[list[str]]:
    """An sshd on port 22 of every host that lets root in with a key made here (nothing outside ``workdir`` is
    changed); yields the ssh options that use it (for ``PDSH_SSH_ARGS_APPEND``). Needs openssh-server."""
    workdir.mkdir(parents=True, exist_ok=True)
    key, hostkey = workdir / "id_ed25519", workdir / "ssh_host_ed25519_key"
    for k in (key, hostkey):
        _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(k))
    (workdir / "authorized_keys").write_text(key.with_suffix(".pub").read_text())
    Path("/run/sshd").mkdir(parents=True, exist_ok=True)  # sshd's privilege-separation directory
    daemons = []
    try:
        for h in hosts:
            cfg = workdir / f"sshd_{h.netns}.conf"
            cfg.write_text(f"Port 22\nListenAddress {h.addr}\nHostKey {hostkey}\nAuthorizedKeysFile {workdir}/authorized_keys\n"
                           "PermitRootLogin prohibit-password\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
                           f"UsePAM no\nStrictModes no\nPidFile {workdir}/sshd_{h.netns}.pid\n")
            daemons.append(subprocess.Popen(h.command([shutil.which("sshd") or "/usr/sbin/sshd", "-D", "-e", "-f", str(cfg)]),
                                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
        opts = ["-i", str(key), "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                "-o", "LogLevel=ERROR", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10"]
        yield opts
    finally:
        for d in daemons:
            d.kill()
            d.communicate(timeout=10)


def cannot_ssh() -> str | None:
    """Why the ssh tests cannot run here, or None."""
    for tool in ("sshd", "ssh", "ssh-keygen", "pdsh"):
        if shutil.which(tool) is None and not (tool == "sshd" and Path("/usr/sbin/sshd").exists()):
            return f"needs {tool} (apt-get install openssh-server openssh-client pdsh)"
    return None


def _sbin(tool: str) -> str:
    """A daemon's path: from PATH, else /usr/sbin (not on every user's PATH)."""
    return shutil.which(tool) or f"/usr/sbin/{tool}"


def cannot_slurm() -> str | None:
    """Why the SLURM test cannot run here, or None."""
    for tool in ("slurmctld", "slurmd", "sbatch", "scontrol", "squeue", "munged"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            return f"needs {tool} (apt-get install slurmctld slurmd slurm-client munge)"
    return None


# ip netns exec mounts a fresh /sys without the cgroup hierarchies, and slurmd 22.05 will not start without its
# cgroup plugin: mount the machine's v1 controllers again inside the host's own mount namespace.
_CGROUPS = ("mount -t tmpfs cgroup_root /sys/fs/cgroup && for c in cpuset memory freezer devices cpu cpuacct pids; "
            "do mkdir -p /sys/fs/cgroup/$c && mount -t cgroup -o $c cgroup /sys/fs/cgroup/$c || true; done")


@dataclass
class Slurm:
    """A throwaway SLURM cluster: slurmctld on host A, one slurmd per host, one munged, all under ``workdir``."""

    hosts: tuple[Host, ...]
    workdir: Path

    @property
    def env(self) -> dict:
        return {**os.environ, "SLURM_CONF": str(self.workdir / "slurm.conf")}

    def run(self, *argv: str, env: dict | None = None, cwd: str | Path | None = None) -> str:
        """A SLURM command on host A (where the controller listens); returns its stdout."""
        proc = subprocess.run(self.hosts[0].command(list(argv)), capture_output=True, text=True,
                              env={**self.env, **(env or {})}, cwd=cwd, timeout=60)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)}: exit {proc.returncode}: {proc.stderr.strip()}")
        return proc.stdout


@contextmanager
def slurm_cluster(hosts: tuple[Host, ...], workdir: Path) -> Iterator[Slurm]:
    """Start munged, slurmctld (host A) and a slurmd per host from a configuration made here; stop them after."""
    workdir.mkdir(parents=True, exist_ok=True)
    # slurmstepd puts UNIX sockets in the spool directory and munged its socket: keep those paths short
    # (sun_path holds 108 bytes; pytest's tmp paths are longer)
    short = Path(tempfile.mkdtemp(prefix="vqasl-"))
    for sub in ("state", *(f"spool/{h.name}" for h in hosts)):
        (short / sub).mkdir(parents=True, exist_ok=True)
    key = workdir / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o600)
    nodes = "".join(f"NodeName={h.name} NodeAddr={h.addr} CPUs={os.cpu_count() or 2} State=UNKNOWN\n" for h in hosts)
    (workdir / "slurm.conf").write_text(
        f"ClusterName=vqatest\nSlurmctldHost={hosts[0].name}({hosts[0].addr})\nSlurmUser=root\nSlurmdUser=root\n"
        f"AuthType=auth/munge\nAuthInfo=socket={short}/munge.socket\nCredType=cred/munge\n"
        f"StateSaveLocation={short}/state\nSlurmdSpoolDir={short}/spool/%n\n"
        f"SlurmctldPidFile={workdir}/slurmctld.pid\nSlurmdPidFile={workdir}/slurmd.%n.pid\n"
        f"SlurmctldLogFile={workdir}/slurmctld.log\nSlurmdLogFile={workdir}/slurmd.%n.log\n"
        "ProctrackType=proctrack/linuxproc\nTaskPlugin=task/none\nJobAcctGatherType=jobacct_gather/none\n"
        "SelectType=select/cons_tres\nSelectTypeParameters=CR_CPU\nReturnToService=2\nMpiDefault=none\n"
        "SwitchType=switch/none\nKillWait=60\nMinJobAge=600\n" + nodes +
        "PartitionName=test Nodes=ALL Default=YES MaxTime=INFINITE State=UP\n")
    (workdir / "cgroup.conf").write_text("CgroupPlugin=cgroup/v1\nCgroupAutomount=no\nConstrainCores=no\n"
                                         "ConstrainRAMSpace=no\nConstrainDevices=no\n")
    cluster = Slurm(hosts, workdir)
    env = cluster.env
    daemons = []
    try:
        daemons.append(subprocess.Popen(
            [_sbin("munged"), "-F", f"--key-file={key}", f"--socket={short}/munge.socket", f"--pid-file={workdir}/munged.pid",
             f"--log-file={workdir}/munged.log", f"--seed-file={workdir}/munged.seed", "-f"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        for _ in range(50):
            if (short / "munge.socket").exists():
                break
            time.sleep(0.1)
        daemons.append(subprocess.Popen(hosts[0].command([_sbin("slurmctld"), "-D", "-c", "-i"]), env=env,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        for h in hosts:
            cmd = ["ip", "netns", "exec", h.netns, "unshare", "--uts", "sh", "-c",
                   f"hostname {h.name} && {_CGROUPS} && exec {_sbin('slurmd')} -D -N {h.name}"]
            daemons.append(subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        deadline = time.time() + 60
        while True:
            try:
                idle = cluster.run("sinfo", "-h", "-o", "%t %D").split()
            except RuntimeError:
                idle = []
            if idle[:2] == ["idle", str(len(hosts))]:
                break
            if time.time() > deadline:
                logs = {p.name: p.read_text()[-1500:] for p in workdir.glob("*.log")}
                raise RuntimeError(f"the SLURM cluster did not come up (sinfo: {idle}); logs: {logs}")
            time.sleep(0.5)
        yield cluster
    finally:
        for d in reversed(daemons):
            d.terminate()
        for d in reversed(daemons):
            try:
                d.wait(timeout=15)
            except subprocess.TimeoutExpired:
                d.kill()
                d.wait(timeout=15)
        shutil.rmtree(short, ignore_errors=True)
