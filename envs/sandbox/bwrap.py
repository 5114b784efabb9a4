"""Bubblewrap with fresh namespaces per execution (`sandbox.backend.warm: false`); limits through rlimits and cgroups.

One `BwrapSandbox` is one slot: its uid and its cgroups are made once and reused, one execution at
a time; the namespaces, mounts and work directory are new for every execution. The default, warm
slot (bwrap_warm.py) keeps one sandbox per slot instead and reuses this slot's uid, cgroups and zygote.
Containment, per execution:
* argv is `prlimit … setpriv --reuid U … bwrap … -- CMD`: the code runs as a uid of its own
  (1_000_000 + 256·pid + slot, never root, never another live slot's), so RLIMIT_NPROC applies;
* bwrap unshares every namespace (no network but a private loopback, no host pids to signal),
  mounts /usr and a few /etc files read-only on a read-only root, a fresh /proc, a minimal /dev,
  a private tmpfs /tmp and the work directory as /work; /root, the project and the parent's
  environment are not there (`--clearenv`);
* the zygote joined the slot's cgroups (pids, memory) once, when the slot was made, so every
  execution starts inside them (no per-execution migration, which costs an RCU grace period,
  ~10 ms, on cgroup v1); afterwards every process left in the slot but the zygote is killed.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from kpop.envs.sandbox import workdir
from kpop.envs.sandbox.api import SandboxLimits, SandboxRequest, SandboxResult
from kpop.envs.sandbox.cgroups import CgroupSlot
from kpop.envs.sandbox.classify import Observed, classify, signal_of
from kpop.envs.sandbox.runner import RawOutcome, supervise
from kpop.envs.sandbox.zygote_client import HOST_PATH, Zygote, ZygoteDied

SANDBOX_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/work", "TMPDIR": "/tmp", "LANG": "C.UTF-8",
               "PYTHONDONTWRITEBYTECODE": "1"}  # the code's environment before the config's and the request's
ETC_FILES = ("/etc/alternatives", "/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/localtime", "/etc/python3", "/etc/python3.11", "/etc/python3.12")


@dataclass(frozen=True)
class BwrapConfig:
    bwrap: str = "bwrap"
    python: str = "python3"
    ro_binds: tuple[str, ...] = ()  # extra host paths visible read-only at the same place
    use_cgroups: bool = True
    uid_base: int = 1_000_000
    env: dict[str, str] = field(default_factory=dict)


def _system_mounts() -> list[str]:
    args = ["--ro-bind", "/usr", "/usr"]
    for name in ("bin", "sbin", "lib", "lib32", "lib64"):
        path = Path("/") / name
        if path.is_symlink():
            args += ["--symlink", os.readlink(path), str(path)]
        elif path.is_dir():
            args += ["--ro-bind", str(path), str(path)]
    for etc in ETC_FILES:
        args += ["--ro-bind-try", etc, etc]
    return args


class BwrapSandbox:
    name = "bwrap"

    def __init__(self, config: BwrapConfig | None = None, slot: int = 0) -> None:
        self.config = config or BwrapConfig()
        self.slot = slot
        self.uid = self.config.uid_base + 256 * os.getpid() + slot % 256
        self._tools = {self.config.bwrap: shutil.which(self.config.bwrap, path=HOST_PATH)}
        self._mounts = _system_mounts()
        self._base = workdir.default_base()
        self._cgroup = CgroupSlot.create(slot) if self.config.use_cgroups and os.geteuid() == 0 else None
        self._lock = asyncio.Lock()
        self._zygote: Zygote | None = None
        self.reusable = True  # False once a process survived the end-of-run kill: retire the slot

    @property
    def has_cgroups(self) -> bool:
        return self._cgroup is not None

    def missing_tools(self) -> list[str]:
        return [t for t, p in self._tools.items() if p is None]

    async def run(self, request: SandboxRequest) -> SandboxResult:
        if missing := self.missing_tools():
            return classify(Observed(None, None, 0.0, error=f"bwrap backend needs {', '.join(missing)} on PATH (see deploy/setup.sh)"))
        async with self._lock:
            try:
                files = workdir.request_files(request.files, request.code)
                wd = workdir.create(self._base, files, self.uid if os.geteuid() == 0 else None)
            except (OSError, ValueError) as exc:
                return classify(Observed(None, None, 0.0, error=f"bad request: {exc}"))
            try:
                return await self._run_in(wd, request)
            finally:
                if self._cgroup is not None:
                    self.reusable = self._cgroup.kill_all(keep=self._zygote_pid())
                workdir.remove(wd)

    async def _run_in(self, wd: Path, request: SandboxRequest) -> SandboxResult:
        lim = request.limits or SandboxLimits()
        if self._cgroup is not None:  # + the zygote, bwrap and bwrap's init
            self._cgroup.set_limits(lim.memory_bytes, lim.max_processes + 3)
        stdin = request.stdin.encode() if isinstance(request.stdin, str) else request.stdin
        raw = await self._launch(self._spec(wd, request), stdin, lim)
        oom = pids_hit = False
        if self._cgroup is not None:
            self._cgroup.kill_all(keep=self._zygote_pid())
            oom, pids_hit = self._cgroup.events()
        code, sig = signal_of(raw.returncode, wrapped=True)
        obs = Observed(code, sig, raw.wall_s, raw.stdout, raw.stderr, raw.timed_out, raw.output_overflow, oom, pids_hit, raw.spawn_error)
        return classify(obs, workdir.harvest(wd, request.outputs, lim.max_output_files_bytes))

    def leftover_pids(self) -> list[int]:
        """Processes in the slot's cgroups besides its zygote (empty between executions)."""
        return self._cgroup.pids(keep=self._zygote_pid()) if self._cgroup is not None else []

    def _zygote_pid(self) -> int | None:
        return self._zygote.pid if self._zygote is not None else None

    async def _launch(self, spec: dict, stdin: bytes | None, lim: SandboxLimits) -> RawOutcome:
        start = time.perf_counter()
        try:
            if self._zygote is None or not self._zygote.alive():
                self._zygote = Zygote.start(self._cgroup)
            child = await self._zygote.spawn(spec, with_stdin=bool(stdin))
        except (OSError, ZygoteDied) as exc:
            self._zygote = None
            return RawOutcome(None, b"", b"", time.perf_counter() - start, spawn_error=f"could not start the sandbox: {exc}")
        return await supervise(child, stdin=stdin, wall_s=lim.wall_s, max_output_bytes=lim.max_output_bytes, start=start)

    def _spec(self, wd: Path, request: SandboxRequest) -> dict:
        lim = request.limits or SandboxLimits()
        cpu = max(1, round(lim.cpu_s))
        rlimits = [("RLIMIT_CPU", cpu, cpu + 1), ("RLIMIT_FSIZE", lim.max_file_bytes, lim.max_file_bytes),
                   ("RLIMIT_NPROC", lim.max_processes + 8, lim.max_processes + 8), ("RLIMIT_CORE", 0, 0), ("RLIMIT_NOFILE", 1024, 1024)]
        if self._cgroup is None:  # address space is a rough stand-in for a memory cgroup
            rlimits.append(("RLIMIT_AS", lim.memory_bytes, lim.memory_bytes))
        uid = self.uid if os.geteuid() == 0 else None
        return {"argv": self._argv(wd, request), "env": {"PATH": HOST_PATH}, "cwd": str(wd), "rlimits": rlimits, "uid": uid}

    def _argv(self, wd: Path, request: SandboxRequest) -> list[str]:
        lim = request.limits or SandboxLimits()
        env = {**SANDBOX_ENV, **self.config.env, **request.env}
        box = [self._tools[self.config.bwrap], "--unshare-all", "--die-with-parent", "--new-session", "--cap-drop", "ALL",
               "--hostname", "sandbox", *self._mounts]
        for path in self.config.ro_binds:
            box += ["--ro-bind", path, path]
        box += ["--proc", "/proc", "--dev", "/dev", "--size", str(lim.memory_bytes), "--tmpfs", "/tmp",
                "--bind", str(wd), "/work", "--chdir", "/work", "--remount-ro", "/", "--clearenv"]
        for key, value in env.items():
            box += ["--setenv", key, value]
        command = list(request.command) if request.command is not None else [self.config.python, "main.py"]
        return [*box, "--", *command]

    async def close(self) -> None:
        if self._cgroup is not None:
            self._cgroup.kill_all(keep=self._zygote_pid())  # first, so the zygote can reap them all
        if self._zygote is not None:
            self._zygote.close()
            self._zygote = None
        if self._cgroup is not None:
            self._cgroup.destroy()
