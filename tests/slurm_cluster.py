"""A real two-node Slurm cluster on this machine, for the launch tests.

Layout: a bridge in the root network namespace (10.213.N.1, N the first free /24 from 7 up)
carries slurmctld, started with its own UTS namespace under the host name `ctl`; each node
is a network namespace joined to the bridge by a veth pair, where slurmd runs under its own
host name (node1 10.213.N.11, node2 10.213.N.12). Each daemon also gets a private mount
namespace whose /etc/hosts names ctl, node1 and node2, as a cluster's DNS would, so that the
ranks' gloo sockets bind to the node's address instead of falling back to loopback.
munged runs with its own key, socket and files in the test's temporary folder. Traffic stays
on loopback and on the bridge this module creates.

`ip netns exec` is not used: it remounts /sys, and slurmd then finds no cgroup tree.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

NODES = ("node1", "node2")
FINAL_STATES = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL",
                "DEADLINE", "PREEMPTED")
REQUIRED_PROGRAMS = ("munged", "slurmctld", "slurmd", "sbatch", "srun", "scontrol", "squeue", "scancel", "sinfo",
                     "ip", "nsenter", "unshare", "mount", "hostname")


def unavailable_reason() -> str | None:
    """Why this machine cannot run the cluster, or None when it can."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, slurmd); CI runs the tests as root"
    missing = [name for name in REQUIRED_PROGRAMS if shutil.which(name) is None]
    if missing:
        return f"missing programs {', '.join(missing)} (Debian packages slurm-wlm, munge, iproute2)"
    probe = f"x2probe{os.getpid() % 100000}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"`ip netns add` fails here: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def _free_subnet() -> str:
    """10.213.N, the first N from 7 that no interface or route on this machine uses yet."""
    used = subprocess.run(["ip", "-4", "addr"], capture_output=True, text=True).stdout
    used += subprocess.run(["ip", "-4", "route"], capture_output=True, text=True).stdout
    for third in range(7, 250):
        if f"10.213.{third}." not in used:
            return f"10.213.{third}"
    raise RuntimeError("no free 10.213.N.0/24 subnet for the test cluster")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class SlurmCluster:
    root: Path
    tag: str = field(default_factory=lambda: f"x2s{os.getpid() % 100000}")
    processes: dict = field(default_factory=dict)
    namespaces: list = field(default_factory=list)
    bridge: str | None = None

    # ---- set-up ---------------------------------------------------------------------------
    def start(self, timeout: float = 60.0) -> "SlurmCluster":
        self.subnet = _free_subnet()
        for sub in ("state", "log", "munge", *(f"spool/{n}" for n in NODES)):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        (self.root / "munge").chmod(0o700)
        self._network()
        self._files()
        self._daemon("munged", ["munged", "--foreground", "--force", f"--socket={self.munge_socket}",
                                f"--key-file={self.root}/munge/munge.key", f"--pid-file={self.root}/munge/munged.pid",
                                f"--log-file={self.root}/log/munged.log", f"--seed-file={self.root}/munge/seed"])
        self._wait(lambda: self.munge_socket.exists(), 10, "munged did not create its socket")
        self._daemon("slurmctld", self._in_node(None, "ctl", "slurmctld -D -i"))
        for node in NODES:
            self._daemon(f"slurmd-{node}", self._in_node(self._netns(node), node, f"slurmd -D -N {node}"))
        self._wait(self._all_idle, timeout, "the nodes did not become idle")
        return self

    def _netns(self, node: str) -> str:
        return f"{self.tag}-{node}"

    def address(self, node: str) -> str:
        return f"{self.subnet}.{11 + NODES.index(node)}"

    def _network(self) -> None:
        self.bridge = f"{self.tag}br"
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{self.subnet}.1/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        for i, node in enumerate(NODES, start=1):
            netns, host_end, node_end = self._netns(node), f"{self.tag}h{i}", f"{self.tag}c{i}"
            _ip("netns", "add", netns)
            self.namespaces.append(netns)
            _ip("link", "add", host_end, "type", "veth", "peer", "name", node_end)
            _ip("link", "set", node_end, "netns", netns)
            _ip("link", "set", host_end, "master", self.bridge, "up")
            _ip("-n", netns, "addr", "add", f"{self.address(node)}/24", "dev", node_end)
            _ip("-n", netns, "link", "set", node_end, "up")
            _ip("-n", netns, "link", "set", "lo", "up")

    def _files(self) -> None:
        self.munge_socket = self.root / "munge" / "munge.socket"
        key = self.root / "munge" / "munge.key"
        key.write_bytes(os.urandom(128))
        key.chmod(0o600)
        hosts = ["127.0.0.1 localhost", f"{self.subnet}.1 ctl"] + [f"{self.address(n)} {n}" for n in NODES]
        self.hosts_file = self.root / "hosts"
        self.hosts_file.write_text("\n".join(hosts) + "\n")
        self.conf = self.root / "slurm.conf"
        r = self.root
        nodes = "\n".join(f"NodeName={n} NodeAddr={self.address(n)} CPUs=2 State=UNKNOWN" for n in NODES)
        self.conf.write_text(f"""\
ClusterName=x2vlmtest
SlurmctldHost=ctl({self.subnet}.1)
SlurmctldPort={free_port()}
SlurmdPort=6818
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.munge_socket}
SlurmUser=root
SlurmdUser=root
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool/%n
SlurmctldPidFile={r}/slurmctld.pid
SlurmdPidFile={r}/slurmd.%n.pid
SlurmctldLogFile={r}/log/slurmctld.log
SlurmdLogFile={r}/log/slurmd.%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
ReturnToService=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MailProg=/bin/true
InactiveLimit=0
KillWait=5
MinJobAge=3600
{nodes}
PartitionName=debug Nodes={','.join(NODES)} Default=YES MaxTime=INFINITE State=UP
""")
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}

    def _in_node(self, netns: str | None, hostname: str, command: str) -> list[str]:
        """The daemon under its own host name and /etc/hosts, in `netns` (None: the root one)."""
        inner = ["unshare", "--uts", "--mount", "sh", "-c",
                 f"mount --bind {self.hosts_file} /etc/hosts && hostname {hostname} && exec {command}"]
        return (["nsenter", f"--net=/run/netns/{netns}"] if netns else []) + inner

    def _daemon(self, name: str, argv: list[str]) -> None:
        log = open(self.root / "log" / f"{name}.out", "w")
        self.processes[name] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                                start_new_session=True)

    def _all_idle(self) -> bool:
        for name, proc in self.processes.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}\n{self.logs()}")
        out = self.run(["sinfo", "-h", "-N", "-o", "%N %T"], check=False).stdout.split()
        return sorted(out) == sorted(x for n in NODES for x in (n, "idle"))

    def _wait(self, condition, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} within {timeout:.0f} s\n{self.logs()}")
            time.sleep(0.25)

    # ---- use ------------------------------------------------------------------------------
    def run(self, argv: list[str], check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
        result = subprocess.run(argv, capture_output=True, text=True, env={**self.env, **(env or {})})
        if check and result.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} exited with {result.returncode}: {result.stderr}{result.stdout}")
        return result

    def sbatch(self, script: str | Path, args: list[str] = (), options: list[str] = (),
               env: dict | None = None) -> str:
        """Submits `script` and returns the job id."""
        out = self.run(["sbatch", "--parsable", *options, str(script), *args], env=env).stdout
        return out.strip().split(";")[0]

    def job(self, job_id: str) -> dict:
        """`scontrol show job` as a dict (JobState, Restarts, ExitCode, StdOut, ...)."""
        out = self.run(["scontrol", "show", "job", "--oneliner", job_id]).stdout
        return dict(re.findall(r"(\w+)=(\S*)", out))

    def wait_job(self, job_id: str, condition, timeout: float, what: str) -> dict:
        """Polls the job until condition(job dict) holds; fails at once when the job ended
        otherwise, or at the timeout. The error shows the job's output and the daemons' logs."""
        deadline = time.monotonic() + timeout
        while True:
            info = self.job(job_id)
            if condition(info):
                return info
            if info["JobState"] in FINAL_STATES or time.monotonic() > deadline:
                raise AssertionError(f"job {job_id}: {what} not reached within {timeout:.0f} s; now "
                                     f"{info.get('JobState')}\n{self.job_output(job_id)}\n{self.logs()}")
            time.sleep(0.3)

    def wait_finished(self, job_id: str, timeout: float) -> dict:
        return self.wait_job(job_id, lambda j: j["JobState"] in FINAL_STATES, timeout, "the end")

    def release_requeued(self, job_id: str) -> None:
        """Lets a requeued job start now: Slurm holds one back for about two minutes (BeginTime).
        A start within the second of the requeue would meet the old run's revoked credential,
        hence the pause."""
        time.sleep(2)
        self.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"])

    def signal(self, job_id: str, name: str) -> None:
        """Sends a signal to the job's steps, the ranks (not to the batch shell), as Slurm's
        --signal does before the time limit."""
        self.run(["scancel", f"--signal={name}", job_id])

    def job_output(self, job_id: str) -> str:
        path = self.job(job_id).get("StdOut", "")
        return Path(path).read_text(errors="replace") if path and Path(path).exists() else f"(no output file {path})"

    def logs(self, tail: int = 30) -> str:
        parts = []
        for path in sorted((self.root / "log").glob("*")):
            lines = path.read_text(errors="replace").splitlines()[-tail:]
            parts.append(f"--- {path.name}\n" + "\n".join(lines))
        return "\n".join(parts)

    # ---- tear-down ------------------------------------------------------------------------
    def stop(self) -> None:
        """Everything this cluster started goes, whatever state set-up reached."""
        if "slurmctld" in self.processes and self.processes["slurmctld"].poll() is None:
            self.run(["scancel", "--user=root", "--full"], check=False)
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and self.run(["squeue", "-h"], check=False).stdout.strip():
                time.sleep(0.3)
        for name in [n for n in self.processes if n.startswith("slurmd")]:
            _terminate(self.processes.pop(name))
        for netns in self.namespaces:  # job steps and ranks that outlived slurmd
            pids = subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for name in ("slurmctld", "munged"):
            if name in self.processes:
                _terminate(self.processes.pop(name))
        for netns in self.namespaces:
            subprocess.run(["ip", "netns", "del", netns], capture_output=True)
        self.namespaces.clear()
        for i in range(1, len(NODES) + 1):  # a veth whose peer never reached its namespace
            subprocess.run(["ip", "link", "del", f"{self.tag}h{i}"], capture_output=True)
        if self.bridge:
            subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)
            self.bridge = None


def _ip(*args: str) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")


def _terminate(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
