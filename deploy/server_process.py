"""Run `kpop serve` as a child process on loopback (tests, benchmarks, smoke checks).

    with ServerProcess(checkpoint, name="tiny") as server:
        client = openai.OpenAI(base_url=server.base_url + "/v1", api_key="none")

Contract: the child binds 127.0.0.1 on a free port; `__enter__` returns once GET /health answers
200 (bounded by `startup_timeout_s`; a child that exits or times out raises with the tail of its
log); `__exit__` sends SIGTERM, waits, then SIGKILLs the child's process group if needed, so the
vLLM engine-core process goes too.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Self


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    def __init__(self, checkpoint: str | Path, name: str | None = None, backend: str = "auto",
                 extra_args: list[str] | None = None, startup_timeout_s: float = 300.0) -> None:
        self.checkpoint, self.name, self.backend = str(checkpoint), name, backend
        self.extra_args = list(extra_args or [])
        self.startup_timeout_s = startup_timeout_s
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_path = Path(tempfile.mkstemp(prefix="kpop-serve-", suffix=".log")[1])
        self.proc: subprocess.Popen | None = None

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "kpop.cli.main", "serve", self.checkpoint, "--host", "127.0.0.1",
               "--port", str(self.port), "--backend", self.backend, *self.extra_args]
        return cmd + (["--served-model-name", self.name] if self.name else [])

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    def __enter__(self) -> Self:
        import httpx

        env = {**os.environ, "VLLM_LOGGING_LEVEL": "WARNING", "TOKENIZERS_PARALLELISM": "false"}
        with self.log_path.open("w") as log:
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, env=env,
                                         start_new_session=True)
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"kpop serve exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(self.base_url + "/health", timeout=2.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.__exit__(None, None, None)
        raise TimeoutError(f"kpop serve not healthy after {self.startup_timeout_s:g} s:\n{self.log_tail()}")

    def __exit__(self, *exc) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
