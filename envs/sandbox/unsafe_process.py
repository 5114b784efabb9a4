"""The plain-process backend: NO isolation. For debugging on hosts without namespaces only.

It is built only from a spec that says `unsafe: true` and logs a warning when created. The code
runs as the caller's user with the caller's filesystem and network; what it does get is a private
work directory (deleted afterwards), a cleared environment, rlimits through `prlimit` where that
tool exists, the wall clock and the output caps, and a kill of its whole session at the end.
"""

from __future__ import annotations

import logging
import shutil
import sys

from kpop.envs.sandbox import workdir
from kpop.envs.sandbox.api import SandboxLimits, SandboxRequest, SandboxResult
from kpop.envs.sandbox.classify import Observed, classify, signal_of
from kpop.envs.sandbox.runner import run_process

log = logging.getLogger(__name__)


class UnsafeProcessSandbox:
    name = "process"

    def __init__(self, python: str = sys.executable) -> None:
        log.warning("sandbox: the UNSAFE plain-process backend is active: untrusted code runs on the host "
                    "with your user, files and network (spec sandbox.backend.unsafe=true)")
        self.python = python
        self._prlimit = shutil.which("prlimit")
        self._base = workdir.default_base()

    async def run(self, request: SandboxRequest) -> SandboxResult:
        files = workdir.request_files(request.files, request.code)
        try:
            wd = workdir.create(self._base, files, owner=None)
        except (OSError, ValueError) as exc:
            return classify(Observed(None, None, 0.0, error=f"bad request: {exc}"))
        try:
            lim = request.limits or SandboxLimits()
            command = list(request.command) if request.command is not None else [self.python, "main.py"]
            if self._prlimit:
                cpu = max(1, round(lim.cpu_s))
                command = [self._prlimit, f"--cpu={cpu}:{cpu + 1}", f"--fsize={lim.max_file_bytes}", f"--as={lim.memory_bytes}", "--core=0", "--", *command]
            env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(wd), "LANG": "C.UTF-8", **request.env}
            stdin = request.stdin.encode() if isinstance(request.stdin, str) else request.stdin
            raw = await run_process(command, env=env, cwd=str(wd), stdin=stdin, wall_s=lim.wall_s, max_output_bytes=lim.max_output_bytes)
            code, sig = signal_of(raw.returncode, wrapped=False)
            obs = Observed(code, sig, raw.wall_s, raw.stdout, raw.stderr, raw.timed_out, raw.output_overflow, error=raw.spawn_error)
            return classify(obs, workdir.harvest(wd, request.outputs, lim.max_output_files_bytes))
        finally:
            workdir.remove(wd)

    async def close(self) -> None:
        return None
