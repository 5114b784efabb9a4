"""A real multi-node Ray cluster on this machine, for tests: `ray start` processes, one per node.

`LocalCluster(temp_dir)` starts a head (`start_head`) and worker nodes (`add_node`), each a
`ray start --block` process in its own session with node labels and logical CPUs, its own ports
(a free port each where Ray would pick a fixed default that another Ray on the machine may hold)
and the cluster's own temp dir. A node's processes are its `ray start` process tree plus the tree
of the raylet whose command line names the node's own plasma folder (a raylet outlives a `ray
start` that gave up on it). A raylet gives its Python agents about 15 s to come up and Ray gives
the raylet 30 s to register, which a loaded machine can miss: each node is its own session, so its
own scheduler autogroup, which starts at nice -20 (back to 0 once the node is up, before any actor
runs there), and a node whose start fails anyway is cleared and started again (NODE_TRIES). A `ray start` that gave up while its raylet lives on is
not a failure if the raylet registers after all (the GCS lists the node alive with its labels). `kill_node(node)` SIGKILLs the
node's processes (raylet, agents, the actors' workers and what they spawned): the loss of a
machine. `teardown()` stops the nodes this object started, and only those (never `ray stop`, which
stops every Ray instance of the machine): SIGTERM to their processes, SIGKILL to what is left after
a grace period, then to any process still naming the cluster's temp dir.
`query(code)` runs a short driver against the cluster in a subprocess (the test process may
already be connected to another Ray instance) and returns the JSON it prints.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

RAY = str(Path(sys.executable).parent / "ray")
# Tries per node: on this shared 2-core machine at load 15-20 a node missed Ray's 30 s registration
# window 4 times in a row (head) and 5 times (a worker node) in one test run.
NODE_TRIES = 10
ENV = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_ADDRESS": "", "RAY_USAGE_STATS_ENABLED": "0",
       "RAY_agent_register_timeout_ms": "120000"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Node:
    name: str
    labels: dict[str, str]
    proc: subprocess.Popen
    log: Path
    marker: str   # the node's plasma folder, named on its raylet's command line


def cmdlines() -> dict[int, str]:
    out = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                out[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
    return out


def node_pids(node: Node) -> list[int]:
    roots = [node.proc.pid] + [pid for pid, cmd in cmdlines().items() if node.marker in cmd]
    return sorted({p for root in roots for p in descendants(root)})


def descendants(pid: int) -> list[int]:
    """`pid` and every process below it (by parent pid, read from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def _autogroup_nice(pid: int, nice: int) -> None:
    """The CPU share of the process's session against the machine's other sessions (best effort)."""
    try:
        Path(f"/proc/{pid}/autogroup").write_text(str(nice))
    except OSError:
        pass


def _signal(pids: list[int], sig: int) -> None:
    for p in pids:
        try:
            os.kill(p, sig)
        except ProcessLookupError:
            pass


class LocalCluster:
    def __init__(self, temp_dir: Path) -> None:
        self.temp_dir = temp_dir
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.nodes: list[Node] = []

    def _start(self, name: str, labels: dict[str, str], num_cpus: int, head: bool, timeout_s: float,
               prefix: tuple[str, ...] = ()) -> Node:
        for attempt in range(NODE_TRIES):
            node = self._try_start(f"{name}{attempt}", labels, num_cpus, head, timeout_s, prefix)
            if node is not None:
                return node
        raise RuntimeError(f"node {name} did not start in {NODE_TRIES} tries: "
                           f"{(self.temp_dir / f'{name}{NODE_TRIES - 1}.log').read_text()[-2000:]}")

    def _try_start(self, name: str, labels: dict[str, str], num_cpus: int, head: bool, timeout_s: float,
                   prefix: tuple[str, ...]) -> Node | None:
        own = (["--port", str(self.port), "--head", "--include-dashboard=false", f"--ray-client-server-port={free_port()}",
                f"--dashboard-port={free_port()}"]
               if head else ["--address", self.address])
        ports = [f"--{flag}={free_port()}" for flag in ("dashboard-agent-listen-port", "dashboard-agent-grpc-port",
                                                          "metrics-export-port", "runtime-env-agent-port")]
        label_arg = ",".join(f"{k}={v}" for k, v in labels.items())
        log = self.temp_dir / f"{name}.log"
        plasma = self.temp_dir / f"plasma_{name}"
        plasma.mkdir()
        cmd = [*prefix, RAY, "start", f"--plasma-directory={plasma}", "--block", *own, *ports,
               f"--num-cpus={num_cpus}", f"--labels={label_arg}", f"--temp-dir={self.temp_dir}", "--disable-usage-stats", "--object-store-memory=200000000"]
        proc = subprocess.Popen(cmd, env=ENV, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
        _autogroup_nice(proc.pid, -20)
        node = Node(name, labels, proc, log, str(plasma))
        deadline = time.monotonic() + timeout_s
        while "Ray runtime started" not in log.read_text():
            if proc.poll() is not None or time.monotonic() > deadline:
                if not self._registered_late(node):
                    self.kill_node(node)
                    return None
                break
            time.sleep(0.5)
        _autogroup_nice(proc.pid, 0)
        self.nodes.append(node)
        return node

    def _registered_late(self, node: Node, wait_s: float = 90) -> bool:
        raylet_alive = any(node.marker in cmd and "raylet" in cmd for cmd in cmdlines().values())
        if not raylet_alive:
            return False
        code = f"""
import time
want = {node.labels!r}
for _ in range({int(wait_s // 3)}):
    if any(n["Alive"] and want.items() <= (n.get("Labels") or {{}}).items() for n in ray.nodes()):
        print("JSON true"); break
    time.sleep(3)
else:
    print("JSON false")
"""
        try:
            return bool(self.query(code, timeout_s=wait_s + 120))
        except (RuntimeError, subprocess.TimeoutExpired):
            return False

    def start_head(self, labels: dict[str, str], num_cpus: int, timeout_s: float = 300) -> Node:
        return self._start("head", labels, num_cpus, True, timeout_s)

    def add_node(self, name: str, labels: dict[str, str], num_cpus: int, timeout_s: float = 300,
                 prefix: tuple[str, ...] = ()) -> Node:
        """A worker node; `prefix` wraps its `ray start` command (e.g. to give it its own mounts)."""
        return self._start(name, labels, num_cpus, False, timeout_s, prefix)

    def kill_node(self, node: Node) -> None:
        _signal(node_pids(node), signal.SIGKILL)
        node.proc.wait()

    def teardown(self, grace_s: float = 40) -> None:
        trees = [node_pids(n) for n in reversed(self.nodes)]
        for pids in trees:
            _signal(pids, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and any(n.proc.poll() is None for n in self.nodes):
            time.sleep(0.5)
        for pids in trees:
            _signal(pids, signal.SIGKILL)
        _signal([pid for pid, cmd in cmdlines().items() if str(self.temp_dir) in cmd and pid != os.getpid()], signal.SIGKILL)
        for n in self.nodes:
            n.proc.wait()

    def query(self, code: str, timeout_s: float = 300) -> dict:
        """Run `code` in a driver connected to the cluster; it prints one line 'JSON <data>'."""
        script = f"import json, ray\nray.init(address={self.address!r}, log_to_driver=False)\n{code}"
        out = subprocess.run([sys.executable, "-c", script], env=ENV, capture_output=True, text=True, timeout=timeout_s)
        lines = [line for line in out.stdout.splitlines() if line.startswith("JSON ")]
        if out.returncode != 0 or not lines:
            raise RuntimeError(f"cluster query failed: {out.stderr[-2000:]}")
        return json.loads(lines[-1][5:])


# The cluster's nodes and every actor it has run (dead ones too: the GCS keeps their records).
PLACEMENT_QUERY = """
from ray._private.state import actors
nodes = {n["NodeID"]: {"alive": n["Alive"], "labels": n.get("Labels") or {}} for n in ray.nodes()}
acts = [{"cls": a["ActorClassName"], "state": a["State"], "node": a["Address"]["NodeID"]} for a in actors().values()]
print("JSON " + json.dumps({"nodes": nodes, "actors": acts}))
"""
