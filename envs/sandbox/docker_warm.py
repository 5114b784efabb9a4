"""The warm Docker backend: one long-running container per pool slot, reset after every execution.

`sandbox.backend: {type: docker, warm: true}` selects it. The container runs the launcher
(launcher.py, bind-mounted read-only) as its init; each execution is one request over a Unix
socket in a root-only host directory, so it costs a fork and exec inside a running container
instead of creating, starting and removing one (`docker run`: ~200-400 ms here). Isolation is the
fresh-container backend's: `--network none`, read-only root, no-new-privileges, the code as uid 65534
with no capabilities (the launcher keeps only SETUID, SETGID and KILL, which 65534 cannot use
against it), memory (= memory+swap) and pids limits on the container, CPU-time and file-size
rlimits per execution, a private IPC namespace without /dev/shm. The code runs at the niceness of
the process that asked (an environment worker's `rollout` niceness), as a forked sandbox would,
although the container's processes descend from the Docker daemon.

Reset contract: nothing one execution leaves is visible to the next. Before an execution's result
is returned every other process in the container is killed and reaped and its IPC objects are
removed (the launcher), and /work and /tmp, host directories bind-mounted into the container, are
emptied by the host (root). A container whose launcher stops answering (killed by the memory
limit, or the host-side deadline of wall_s + GRACE_S passed) is removed and the next execution
starts a new one; so does a request whose memory or process limit differs from the container's.
The launcher shares the container's memory limit with the code (it uses ~10 MiB of it).
"""

from __future__ import annotations

import asyncio
import os
import socket
import tempfile
import time
from pathlib import Path

from kpop.envs.sandbox import workdir
from kpop.envs.sandbox.api import SandboxLimits, SandboxRequest, SandboxResult
from kpop.envs.sandbox.classify import Observed, classify
from kpop.envs.sandbox.launcher_client import LAUNCHER, exchange, observed
from kpop.envs.sandbox.launcher_client import request as launcher_request

UID = 65534
GRACE_S = 10.0     # past the wall clock: the launcher enforces it, the host only guards the launcher
START_S = 30.0     # for a new container's launcher to listen


class WarmDockerSandbox:
    name = "docker-warm"

    def __init__(self, image: str = "kpop-sandbox:bookworm", python: str = "python3", base_url: str | None = None) -> None:
        self.image, self.python, self.base_url = image, python, base_url
        self._client = None
        self._box = None
        self._conn: socket.socket | None = None
        self._key: tuple[int, int] | None = None
        self._dir: Path | None = None
        self._lost = False
        self.containers_started = 0

    def client(self):
        if self._client is None:
            import docker

            self._client = docker.DockerClient(base_url=self.base_url) if self.base_url else docker.from_env()
        return self._client

    async def run(self, request: SandboxRequest) -> SandboxResult:
        # Only starting a container blocks (in a thread); an execution is socket I/O on the event
        # loop: a thread handoff each way cost more than the rest of it on a loaded machine.
        lim = request.limits or SandboxLimits()
        start = time.perf_counter()
        key = (lim.memory_bytes, lim.max_processes)
        if self._box is None or self._key != key:
            try:
                await asyncio.to_thread(self._start, key)
            except Exception as exc:  # noqa: BLE001 engine down, image missing: a set-up problem, not the code's
                await asyncio.to_thread(self._discard)
                return classify(Observed(None, None, time.perf_counter() - start, error=f"docker: {exc}"))
        work = self._dir / "work"
        files = workdir.request_files(request.files, request.code, request.stdin)
        try:
            workdir.fill(work, files, UID)
        except (OSError, ValueError) as exc:
            self._clear()
            return classify(Observed(None, None, 0.0, error=f"bad request: {exc}"))
        try:
            obs = await self._execute(request, lim)
            return classify(obs, workdir.harvest(work, request.outputs, lim.max_output_files_bytes))
        finally:
            if self._lost:
                await asyncio.to_thread(self._discard)
            else:
                self._clear()

    async def _execute(self, request: SandboxRequest, lim: SandboxLimits) -> Observed:
        argv = list(request.command) if request.command is not None else [self.python, "main.py"]
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/work", "LANG": "C.UTF-8", **request.env}
        req = launcher_request(argv, env, request.stdin is not None, lim)
        start = time.perf_counter()
        try:
            res = await asyncio.wait_for(exchange(self._conn, req), lim.wall_s + GRACE_S)
        except (OSError, TimeoutError) as exc:
            res, error = None, f"{type(exc).__name__}: {exc}"
        else:
            error = "the launcher closed its socket"
        if res is None:  # the launcher died (the memory limit took it) or hung: a new container next time
            self._lost = True
            if await asyncio.to_thread(self._oom_killed):
                return Observed(None, 9, time.perf_counter() - start, oom=True)
            return Observed(None, None, time.perf_counter() - start, error=f"warm container lost: {error}")
        return observed(res)

    # ------------------------------------------------------------------ the container

    def _start(self, key: tuple[int, int]) -> None:
        self._discard()
        self._dir = Path(tempfile.mkdtemp(prefix="warm-", dir=workdir.default_base()))
        for sub, mode in (("work", 0o700), ("tmp", 0o1777), ("ctl", 0o700)):
            (self._dir / sub).mkdir()
            os.chmod(self._dir / sub, mode)
        if os.geteuid() == 0:
            os.chown(self._dir / "work", UID, UID)
        memory, pids = key
        self._box = self.client().containers.run(
            self.image, [self.python, "-I", "/kpop/agent.py"], detach=True, user="0:0", network_mode="none",
            read_only=True, ipc_mode="none", cap_drop=["ALL"], cap_add=["SETUID", "SETGID", "KILL"],
            security_opt=["no-new-privileges"], mem_limit=memory, memswap_limit=memory, pids_limit=pids + 1,
            volumes={str(LAUNCHER): {"bind": "/kpop/agent.py", "mode": "ro"},
                     str(self._dir / "ctl"): {"bind": "/kpop/ctl", "mode": "rw"},
                     str(self._dir / "work"): {"bind": "/work", "mode": "rw"},
                     str(self._dir / "tmp"): {"bind": "/tmp", "mode": "rw"}},
            labels={"kpop.sandbox": "warm"}, environment={})
        self._key = key
        self.containers_started += 1
        self._conn = self._connect(self._dir / "ctl" / "agent.sock")

    def _connect(self, path: Path) -> socket.socket:
        deadline = time.monotonic() + START_S
        while True:
            conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                conn.connect(str(path))
                conn.setblocking(False)  # used through the event loop (loop.sock_*)
                return conn
            except OSError:
                conn.close()
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the warm container's launcher did not listen within {START_S:g} s") from None
                time.sleep(0.01)

    def _oom_killed(self) -> bool:
        try:
            self._box.reload()
            return bool(self._box.attrs["State"].get("OOMKilled"))
        except Exception:  # noqa: BLE001 (gone already: not known to be an OOM kill)
            return False

    def _clear(self) -> None:
        for sub in ("work", "tmp"):
            workdir.empty(self._dir / sub)

    def _discard(self) -> None:
        if self._conn is not None:
            self._conn.close()
        if self._box is not None:
            try:
                self._box.remove(force=True)
            except Exception:  # noqa: BLE001, S110 (already gone: nothing left to clean)
                pass
        if self._dir is not None:
            workdir.remove(self._dir)
        self._conn = self._box = self._key = self._dir = None
        self._lost = False

    async def close(self) -> None:
        await asyncio.to_thread(self._discard)
        if self._client is not None:
            self._client.close()
            self._client = None

