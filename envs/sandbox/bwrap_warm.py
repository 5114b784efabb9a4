"""The warm bubblewrap slot: one long-lived bwrap sandbox per pool slot, reset after every execution.

`sandbox.backend: {type: bwrap, warm: true}` (the default) selects it. The slot's zygote, already
in the slot's pids and memory cgroups, starts one bwrap sandbox whose init (pid 1 of its pid
namespace) is the launcher (launcher.py, bind-mounted read-only, the same one the warm Docker
backend runs); each execution is one request over a socket pair, so it costs a fork and an exec in
a running sandbox instead of bwrap's clone into new namespaces and its ~40 mount calls. The
launcher starts the code through exec_as.c (compiled once into root's cache when a C compiler is
there, mounted read-only at /kpop/exec_as), which saves it a fork of itself (~2 ms of CPU).

Isolation per execution, as in a fresh bwrap sandbox (bwrap.py): pid, network (a private
loopback only), IPC, UTS and mount namespaces; the same read-only root (/usr, a few /etc files,
`ro_binds`), /proc, a minimal /dev; the code runs as the slot's own uid (never root) with no
capabilities, an empty bounding set and no_new_privs, in /work, with the parent's environment
cleared, at the caller's niceness, with rlimits set per execution (CPU, file size, processes,
core, open files; address space when there are no cgroups) and the slot's cgroup limits (memory,
processes) written before each execution, so changed limits need no new sandbox.

What differs from a fresh sandbox:
* the namespaces live as long as the slot: consecutive executions of a slot share the network
  namespace (a loopback port one execution used can still be in TIME_WAIT for the next), the IPC
  namespace and the mount tree (emptied as below);
* no user namespace: bwrap runs as root so that the launcher can keep CAP_SETUID/SETGID/KILL and
  start the code as the slot's uid, which is then the host's uid too (not a mapped one);
* /tmp is a host directory beside /work on the work directories' tmpfs (charged to the slot's
  memory cgroup like every file the code writes) instead of a tmpfs of `memory_bytes`; stdin is
  passed as the file .sandbox-stdin in /work.

Reset contract: nothing one execution leaves is visible to the next. Before the launcher answers,
every other process in the sandbox is killed and reaped and the System V IPC objects and POSIX
queues are removed; then the host empties /work and /tmp and checks that the slot's cgroups hold
nothing but the zygote, bwrap and the launcher. A slot whose launcher stops answering (killed by
the memory limit, or the host's deadline of wall_s + GRACE_S passed) or where anything else is
left is torn down (every process in its cgroups killed) and the next execution starts a new
sandbox. A slot's directory is named after its process (`warm-<pid>-…`): the directories of
processes that exited without closing their pool are removed when a slot starts. Needs root (two uids, cgroups); without root a slot runs fresh sandboxes instead.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import os
import select
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from kpop.envs.sandbox import workdir
from kpop.envs.sandbox.api import SandboxLimits, SandboxRequest, SandboxResult
from kpop.envs.sandbox.bwrap import SANDBOX_ENV, BwrapSandbox
from kpop.envs.sandbox.classify import Observed, classify
from kpop.envs.sandbox.launcher_client import LAUNCHER, exchange, observed
from kpop.envs.sandbox.launcher_client import request as launcher_request
from kpop.envs.sandbox.zygote_client import HOST_PATH, Zygote, ZygoteDied

GRACE_S = 10.0   # past the wall clock: the launcher enforces it, the host only guards the launcher
CAPS = ("CAP_SETUID", "CAP_SETGID", "CAP_KILL", "CAP_SETPCAP")  # SETPCAP: to empty the bounding set
HELPER_SOURCE = Path(__file__).resolve().with_name("exec_as.c")


@functools.cache
def native_helper() -> Path | None:
    """exec_as.c compiled once per version of it into root's cache (None without a C compiler or root)."""
    cc = shutil.which("cc", path=HOST_PATH) or shutil.which("gcc", path=HOST_PATH)
    if cc is None or os.geteuid() != 0:
        return None
    source = HELPER_SOURCE.read_bytes()
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "kpop"
    target = cache / f"exec_as-{hashlib.sha256(source).hexdigest()[:16]}"
    if target.exists():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    partial = cache / f".{target.name}.{os.getpid()}"
    done = subprocess.run([cc, "-O2", "-o", str(partial), str(HELPER_SOURCE)], capture_output=True, check=False, timeout=120)
    if done.returncode != 0:
        partial.unlink(missing_ok=True)
        return None
    os.chmod(partial, 0o755)
    os.replace(partial, target)  # atomic: a concurrent compile of the same source wins or loses whole
    return target


class WarmBwrapSandbox(BwrapSandbox):
    name = "bwrap-warm"

    def __init__(self, config=None, slot: int = 0, native: bool = True) -> None:
        super().__init__(config, slot)
        self.native = native  # start executions through exec_as.c when it can be compiled (else in Python)
        self._dir: Path | None = None
        self._conn: socket.socket | None = None
        self._bwrap_pid: int | None = None
        self._own: set[int] = set()  # bwrap's and the launcher's pids
        self._lost = False
        self.sandboxes_started = 0

    async def run(self, request: SandboxRequest) -> SandboxResult:
        if os.geteuid() != 0 or self.missing_tools():  # no second uid to run the code as: fresh sandboxes
            return await super().run(request)
        async with self._lock:
            lim = request.limits or SandboxLimits()
            if self._cgroup is not None:  # + the zygote, bwrap and the launcher
                self._cgroup.set_limits(lim.memory_bytes, lim.max_processes + 3)
            if self._conn is not None and _hung_up(self._conn):  # the launcher died between executions
                self._discard()
            if self._conn is None:
                try:
                    await self._start()
                except (OSError, ZygoteDied) as exc:
                    self._discard()
                    return classify(Observed(None, None, 0.0, error=f"could not start the sandbox: {exc}"))
            work = self._dir / "work"
            try:
                workdir.fill(work, workdir.request_files(request.files, request.code, request.stdin), self.uid)
            except (OSError, ValueError) as exc:
                self._clear()
                return classify(Observed(None, None, 0.0, error=f"bad request: {exc}"))
            try:
                obs = await self._execute(request, lim)
                return classify(obs, workdir.harvest(work, request.outputs, lim.max_output_files_bytes))
            finally:
                if self._lost or self.leftover_pids():
                    self._discard()
                else:
                    self._clear()

    async def _execute(self, request: SandboxRequest, lim: SandboxLimits) -> Observed:
        argv = list(request.command) if request.command is not None else [self.config.python, "main.py"]
        env = {**SANDBOX_ENV, **self.config.env, **request.env}
        rlimits = [("RLIMIT_NPROC", lim.max_processes + 8, lim.max_processes + 8), ("RLIMIT_NOFILE", 1024, 1024)]
        if self._cgroup is None:  # address space is a rough stand-in for a memory cgroup
            rlimits.append(("RLIMIT_AS", lim.memory_bytes, lim.memory_bytes))
        req = launcher_request(argv, env, request.stdin is not None, lim, uid=self.uid, rlimits=rlimits)
        start = time.perf_counter()
        try:
            res = await asyncio.wait_for(exchange(self._conn, req), lim.wall_s + GRACE_S)
        except (OSError, TimeoutError) as exc:
            res, error = None, f"{type(exc).__name__}: {exc}"
        else:
            error = "the launcher closed its socket"
        oom, pids_hit = self._cgroup.events() if self._cgroup is not None else (False, False)
        if res is None:  # the launcher died (the memory limit took it) or hung: a new sandbox next time
            self._lost = True
            if oom:
                return Observed(None, 9, time.perf_counter() - start, oom=True)
            return Observed(None, None, time.perf_counter() - start, error=f"warm sandbox lost: {error}{self._log_tail()}")
        return observed(res, oom, pids_hit)

    # ------------------------------------------------------------------ the sandbox

    async def _start(self) -> None:
        if self._zygote is None or not self._zygote.alive():
            self._zygote = Zygote.start(self._cgroup)
        _remove_stale(self._base)
        self._dir = Path(tempfile.mkdtemp(prefix=f"warm-{os.getpid()}-", dir=self._base))
        for sub, mode in (("work", 0o700), ("tmp", 0o1777)):
            (self._dir / sub).mkdir()
            os.chmod(self._dir / sub, mode)
        os.chown(self._dir / "work", self.uid, self.uid)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        null = os.open(os.devnull, os.O_WRONLY)
        log = os.open(self._dir / "launcher.log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            spec = {"argv": self._warm_argv(), "env": {"PATH": HOST_PATH}, "cwd": "/", "rlimits": [], "uid": None}
            self._bwrap_pid = await self._zygote.launch(spec, [theirs.fileno(), null, log])
        finally:
            theirs.close()
            os.close(null)
            os.close(log)
        ours.setblocking(False)
        self._conn, self._lost = ours, False
        self.sandboxes_started += 1

    def _warm_argv(self) -> list[str]:
        box = [self._tools[self.config.bwrap], "--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts",
               "--unshare-cgroup-try", "--die-with-parent", "--new-session", "--as-pid-1", "--cap-drop", "ALL"]
        for cap in CAPS:
            box += ["--cap-add", cap]
        box += ["--hostname", "sandbox", *self._mounts]
        for path in self.config.ro_binds:
            box += ["--ro-bind", path, path]
        helper = native_helper() if self.native else None
        if helper is not None:  # the launcher uses it when it is there
            box += ["--ro-bind", str(helper), "/kpop/exec_as"]
        box += ["--ro-bind", str(LAUNCHER), "/kpop/launcher.py", "--proc", "/proc", "--dev", "/dev",
                "--mqueue", "/dev/mqueue", "--bind", str(self._dir / "work"), "/work", "--bind", str(self._dir / "tmp"),
                "/tmp", "--chdir", "/", "--remount-ro", "/", "--clearenv", "--setenv", "PATH", "/usr/bin:/bin"]
        return [*box, "--", "python3", "-I", "-S", "/kpop/launcher.py", "--fd", "0"]

    def leftover_pids(self) -> list[int]:
        """Processes in the slot's cgroups besides its zygote, bwrap and the launcher (empty between executions)."""
        if self._cgroup is None:
            return []
        if self._bwrap_pid is not None and len(self._own) < 2:  # bwrap and, once it forked, the launcher
            self._own = {self._bwrap_pid, *_children(self._bwrap_pid)}
        return [p for p in self._cgroup.pids(keep=self._zygote_pid()) if p not in self._own]

    def _log_tail(self) -> str:
        try:
            text = (self._dir / "launcher.log").read_text(errors="replace").strip()
        except (OSError, TypeError):
            return ""
        return f"; launcher: {text[-500:]}" if text else ""

    def _clear(self) -> None:
        for sub in ("work", "tmp"):
            workdir.empty(self._dir / sub)

    def _discard(self) -> None:
        if self._conn is not None:
            self._conn.close()  # EOF: a live launcher exits, and its pid namespace with it
        if self._cgroup is not None:
            self.reusable = self._cgroup.kill_all(keep=self._zygote_pid())
        elif self._bwrap_pid is not None:
            try:
                os.kill(self._bwrap_pid, signal.SIGKILL)  # --die-with-parent takes the launcher along
            except ProcessLookupError:
                pass
        if self._bwrap_pid is not None and self._zygote is not None and self._zygote.wait_exit(5.0) is None:
            self._zygote.close()  # its answer never came: a new zygote next time
            self._zygote = None
        if self._dir is not None:
            workdir.remove(self._dir)
        self._conn = self._bwrap_pid = self._dir = None
        self._own = set()
        self._lost = False

    async def close(self) -> None:
        self._discard()
        await super().close()
        self._cgroup = None  # destroyed: a second close has nothing left to do


def _remove_stale(base: Path) -> None:
    """Removes the directories of warm slots whose process is gone (it exited without closing its pool)."""
    for entry in base.glob("warm-*-*"):
        owner = entry.name.split("-")[1]
        if owner.isdigit() and not Path(f"/proc/{owner}").exists():
            workdir.remove(entry)


def _hung_up(conn: socket.socket) -> bool:
    """The peer closed the connection (or it broke); between executions the launcher never writes."""
    return bool(select.select([conn], [], [], 0)[0])


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []
