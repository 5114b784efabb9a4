"""The Docker backend: one fresh container per execution, through the docker Python library.

Each execution gets `docker run`-equivalent isolation: `--network none`, read-only root, all
capabilities dropped, no-new-privileges, uid 65534, memory (= memory+swap) and pids limits,
rlimits for CPU time and file size, a size-limited /tmp tmpfs, and the work directory bind-mounted
at /work (owned by 65534, removed afterwards). The container is force-removed whatever happens.
Differences from bwrap, by design of the engine: output is read after exit, so a flood of output
runs until it ends or hits the wall clock (then it is cut to the cap and reported TIMEOUT or
OUTPUT_TRUNCATED); stdin is passed as a file. About 200 ms per execution: for hosts with an
engine where namespaces are not available to us.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from kpop.envs.sandbox import workdir
from kpop.envs.sandbox.api import SandboxLimits, SandboxRequest, SandboxResult
from kpop.envs.sandbox.classify import Observed, classify, signal_of

UID = 65534


class DockerSandbox:
    name = "docker"

    def __init__(self, image: str = "kpop-sandbox:bookworm", python: str = "python3", base_url: str | None = None) -> None:
        self.image, self.python, self.base_url = image, python, base_url
        self._client = None
        self._base = workdir.default_base()

    def client(self):
        if self._client is None:
            import docker

            self._client = docker.DockerClient(base_url=self.base_url) if self.base_url else docker.from_env()
        return self._client

    async def run(self, request: SandboxRequest) -> SandboxResult:
        files = workdir.request_files(request.files, request.code, request.stdin)
        try:
            wd = workdir.create(self._base, files, UID if os.geteuid() == 0 else None)
        except (OSError, ValueError) as exc:
            return classify(Observed(None, None, 0.0, error=f"bad request: {exc}"))
        try:
            obs = await asyncio.to_thread(self._run_blocking, wd, request)
            lim = request.limits or SandboxLimits()
            return classify(obs, workdir.harvest(wd, request.outputs, lim.max_output_files_bytes))
        finally:
            workdir.remove(wd)

    def _run_blocking(self, wd: Path, request: SandboxRequest) -> Observed:
        import docker

        lim = request.limits or SandboxLimits()
        command = list(request.command) if request.command is not None else [self.python, "main.py"]
        if request.stdin is not None:
            command = ["/bin/sh", "-c", f'exec "$@" < {workdir.STDIN_FILE}', "sh", *command]
        cpu = max(1, round(lim.cpu_s))
        start = time.perf_counter()
        try:
            box = self.client().containers.create(
                self.image, command, detach=True, network_mode="none", read_only=True, user=f"{UID}:{UID}",
                working_dir="/work", volumes={str(wd): {"bind": "/work", "mode": "rw"}},
                tmpfs={"/tmp": f"size={lim.memory_bytes},mode=1777"}, mem_limit=lim.memory_bytes,
                memswap_limit=lim.memory_bytes, pids_limit=lim.max_processes, cap_drop=["ALL"],
                security_opt=["no-new-privileges"], environment={"HOME": "/work", "LANG": "C.UTF-8", **request.env},
                ulimits=[docker.types.Ulimit(name="cpu", soft=cpu, hard=cpu + 1),
                         docker.types.Ulimit(name="fsize", soft=lim.max_file_bytes, hard=lim.max_file_bytes),
                         docker.types.Ulimit(name="core", soft=0, hard=0)],
            )
        except Exception as exc:  # noqa: BLE001 engine down, image missing: a set-up problem, not the code's
            return Observed(None, None, time.perf_counter() - start, error=f"docker: {exc}")
        try:
            return self._start_and_wait(box, lim)
        finally:
            try:
                box.remove(force=True)
            except Exception:  # noqa: BLE001, S110 (already gone: nothing left to clean)
                pass

    def _start_and_wait(self, box, lim: SandboxLimits) -> Observed:
        import docker
        import requests

        timed_out = False
        start = time.perf_counter()  # the wall clock runs from here: creating the container is the engine's time
        box.start()
        try:
            box.wait(timeout=lim.wall_s)
        except (requests.exceptions.ConnectionError, requests.exceptions.ReadTimeout):
            try:
                box.kill()
                timed_out = True
            except docker.errors.APIError:  # it exited between the timeout and the kill: not a timeout
                pass
            box.wait(timeout=10)
        wall = time.perf_counter() - start
        box.reload()
        state = box.attrs["State"]
        out = box.logs(stdout=True, stderr=False)
        err = box.logs(stdout=False, stderr=True)
        overflow = len(out) > lim.max_output_bytes or len(err) > lim.max_output_bytes
        code, sig = signal_of(None if timed_out else state.get("ExitCode"), wrapped=True)
        if timed_out:
            sig = 9
        return Observed(code, sig, wall, out[: lim.max_output_bytes], err[: lim.max_output_bytes], timed_out,
                        overflow, bool(state.get("OOMKilled")), False)

    async def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
