"""The default backend: Linux namespaces through bubblewrap, limits through rlimits and cgroups.

One `BwrapSandbox` is one warm slot: its uid and its cgroups are made once and reused, one
execution at a time; the namespaces, mounts and work directory are new for every execution.
Containment, per execution:
* argv is `prlimit … setpriv --reuid U … bwrap … -- CMD`: the code runs as a uid of its own
  (1_000_000 + 256·pid + slot, never root, never another live slot's), so RLIMIT_NPROC applies;
* bwrap unshares every namespace (no network but a private loopback, no host pids to signal),
  mounts /usr and a few /etc files read-only on a read-only root, a fresh /proc, a minimal /dev,
  a private tmpfs /tmp and the work directory as /work; /root, the project and the parent's
  environment are not there (`--clearenv`);
* a root shell joins the slot's cgroups (pids, memory) and execs the chain, so no untrusted
  instruction runs outside them; afterwards every process left in the slot is killed.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from kpop.envs.sandbox import workdir
from kpop.envs.sandbox.api import SandboxLimits, SandboxRequest, SandboxResult
from kpop.envs.sandbox.cgroups import CgroupSlot
from kpop.envs.sandbox.classify import Observed, classify, signal_of
from kpop.envs.sandbox.runner import run_process

ETC_FILES = ("/etc/alternatives", "/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/localtime", "/etc/python3", "/etc/python3.11", "/etc/python3.12")
JOIN_FAILED = "kpop-sandbox: cannot join the slot cgroups"
HOST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


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
        self._tools = {t: shutil.which(t, path=HOST_PATH) for t in (self.config.bwrap, "setpriv", "prlimit")}
        self._mounts = _system_mounts()
        self._base = workdir.default_base()
        self._cgroup = CgroupSlot.create(slot) if self.config.use_cgroups and os.geteuid() == 0 else None
        self._lock = asyncio.Lock()
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
                files = dict(request.files)
                if request.code is not None:
                    files["main.py"] = request.code
                wd = workdir.create(self._base, files, self.uid if os.geteuid() == 0 else None)
            except (OSError, ValueError) as exc:
                return classify(Observed(None, None, 0.0, error=f"bad request: {exc}"))
            try:
                return await self._run_in(wd, request)
            finally:
                if self._cgroup is not None:
                    self.reusable = self._cgroup.kill_all()
                workdir.remove(wd)

    async def _run_in(self, wd: Path, request: SandboxRequest) -> SandboxResult:
        lim = request.limits or SandboxLimits()
        if self._cgroup is not None:
            self._cgroup.set_limits(lim.memory_bytes, lim.max_processes + 2)  # + outer bwrap and its init
        argv = self._argv(wd, request)
        stdin = request.stdin.encode() if isinstance(request.stdin, str) else request.stdin
        raw = await run_process(argv, env={"PATH": HOST_PATH}, cwd=str(wd), stdin=stdin, wall_s=lim.wall_s,
                                max_output_bytes=lim.max_output_bytes)
        if raw.returncode == 125 and JOIN_FAILED.encode() in raw.stderr:
            raw.spawn_error = "could not put the sandbox into its cgroups"
        oom = pids_hit = False
        if self._cgroup is not None:
            self._cgroup.kill_all()
            oom, pids_hit = self._cgroup.events()
        code, sig = signal_of(raw.returncode, wrapped=True)
        obs = Observed(code, sig, raw.wall_s, raw.stdout, raw.stderr, raw.timed_out, raw.output_overflow, oom, pids_hit, raw.spawn_error)
        return classify(obs, workdir.harvest(wd, request.outputs, lim.max_output_files_bytes))

    def _argv(self, wd: Path, request: SandboxRequest) -> list[str]:
        lim = request.limits or SandboxLimits()
        cpu = max(1, round(lim.cpu_s))
        rlimits = [f"--cpu={cpu}:{cpu + 1}", f"--fsize={lim.max_file_bytes}", f"--nproc={lim.max_processes + 8}", "--core=0", "--nofile=1024"]
        if self._cgroup is None:  # address space is a rough stand-in for a memory cgroup
            rlimits.append(f"--as={lim.memory_bytes}")
        user = ["--reuid", str(self.uid), "--regid", str(self.uid), "--clear-groups", "--bounding-set=-all", "--inh-caps=-all"] if os.geteuid() == 0 else []
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/work", "TMPDIR": "/tmp", "LANG": "C.UTF-8",
               "PYTHONDONTWRITEBYTECODE": "1", **self.config.env, **request.env}
        box = [self._tools[self.config.bwrap], "--unshare-all", "--die-with-parent", "--new-session", "--cap-drop", "ALL",
               "--hostname", "sandbox", *self._mounts]
        for path in self.config.ro_binds:
            box += ["--ro-bind", path, path]
        box += ["--proc", "/proc", "--dev", "/dev", "--size", str(lim.memory_bytes), "--tmpfs", "/tmp",
                "--bind", str(wd), "/work", "--chdir", "/work", "--remount-ro", "/", "--clearenv"]
        for key, value in env.items():
            box += ["--setenv", key, value]
        box += ["--"]
        command = list(request.command) if request.command is not None else [self.config.python, "main.py"]
        chain = [self._tools["prlimit"], *rlimits, "--", self._tools["setpriv"], *user, "--", *box, *command]
        if self._cgroup is None:
            return chain
        # The shell joins the slot's cgroups as root, then execs the chain: every later process,
        # bwrap's included, starts inside them, and no round trip to this process is needed.
        joins = " && ".join(f'echo $$ > "{d}/cgroup.procs"' for d in self._cgroup.dirs.values())
        script = f'{{ {joins}; }} 2>/dev/null || {{ echo "{JOIN_FAILED}" >&2; exit 125; }}; exec "$@"'
        return ["/bin/sh", "-c", script, "sh", *chain]

    async def close(self) -> None:
        if self._cgroup is not None:
            self._cgroup.destroy()
