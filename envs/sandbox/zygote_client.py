"""The parent's side of a slot zygote (zygote.py): start it once, spawn executions through it.

`Zygote.start(cgroup)` runs the zygote, moves it into the slot's cgroups (the one slow cgroup v1
migration a slot ever pays) and waits until it serves. `Zygote.spawn(spec, with_stdin)` hands
it one execution and returns a `ZygoteChild`, which has the parts of `asyncio.subprocess.Process`
that `runner.supervise` uses (pid, stdin, stdout, stderr, wait, returncode), so the wall clock,
output caps and kills are the same code for every backend. One execution at a time per zygote.
`Zygote.launch(spec, fds)` starts a long-lived process with the given descriptors as 0/1/2 (a
warm slot's sandbox, bwrap_warm.py); `wait_exit` then collects its exit status once it ended.
The zygote is not tied to an event loop: each spawn uses the running loop for its pipes only.
"""

from __future__ import annotations

import asyncio
import json
import os
import select
import socket
import subprocess
import sys
from pathlib import Path

from kpop.envs.sandbox.cgroups import CgroupSlot

ZYGOTE = str(Path(__file__).with_name("zygote.py"))
HOST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class ZygoteDied(RuntimeError):
    pass


class ZygoteChild:
    def __init__(self, pid: int, stdin, stdout: asyncio.StreamReader, stderr: asyncio.StreamReader, done: asyncio.Future) -> None:
        self.pid, self.stdin, self.stdout, self.stderr, self._done = pid, stdin, stdout, stderr, done
        self.returncode: int | None = None

    async def wait(self) -> int:
        self.returncode = await asyncio.shield(self._done)
        return self.returncode


class Zygote:
    def __init__(self, proc: subprocess.Popen, sock: socket.socket) -> None:
        self.proc, self._sock = proc, sock

    @classmethod
    def start(cls, cgroup: CgroupSlot | None) -> Zygote:
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        with child:
            proc = subprocess.Popen([sys.executable, "-I", "-S", ZYGOTE, str(child.fileno())], pass_fds=(child.fileno(),),
                                    stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, env={"PATH": HOST_PATH}, cwd="/",
                                    start_new_session=True)
        try:
            if cgroup is not None:
                cgroup.attach(proc.pid)
            if proc.stdout.readline() != b"ready\n":
                raise ZygoteDied(f"the sandbox zygote did not start (exit status {proc.wait()})")
        except BaseException:
            proc.kill()
            proc.wait()
            parent.close()
            raise
        parent.setblocking(False)
        return cls(proc, parent)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    async def spawn(self, spec: dict, with_stdin: bool) -> ZygoteChild:
        loop = asyncio.get_running_loop()
        in_r, in_w = os.pipe() if with_stdin else (os.open(os.devnull, os.O_RDONLY), None)
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        try:
            socket.send_fds(self._sock, [json.dumps(spec).encode()], [in_r, out_w, err_w])
        except OSError as exc:
            for fd in (in_w, out_r, err_r):
                os.close(fd) if fd is not None else None
            raise ZygoteDied(f"the sandbox zygote is gone: {exc}") from exc
        finally:
            for fd in (in_r, out_w, err_w):
                os.close(fd)
        stdout, stderr = await _reader(loop, out_r), await _reader(loop, err_r)
        stdin = await _writer(loop, in_w) if in_w is not None else None
        started = await self._receive(loop)
        return ZygoteChild(started["pid"], stdin, stdout, stderr, loop.create_task(self._exit_code(loop)))

    async def launch(self, spec: dict, fds: list[int]) -> int:
        """Starts `spec` with `fds` (the caller keeps and closes them) as its stdin/stdout/stderr; its pid."""
        try:
            socket.send_fds(self._sock, [json.dumps(spec).encode()], fds)
        except OSError as exc:
            raise ZygoteDied(f"the sandbox zygote is gone: {exc}") from exc
        return (await self._receive(asyncio.get_running_loop()))["pid"]

    def wait_exit(self, timeout_s: float) -> int | None:
        """The exit status of what `launch` started, once it ended (None: the zygote is gone or the
        status did not come within `timeout_s`); the zygote serves no other request until then."""
        if not select.select([self._sock], [], [], timeout_s)[0]:
            return None
        try:
            msg = self._sock.recv(4096)
        except OSError:
            return None
        return json.loads(msg)["returncode"] if msg else None

    async def _exit_code(self, loop: asyncio.AbstractEventLoop) -> int:
        try:
            return (await self._receive(loop))["returncode"]
        except ZygoteDied:
            return -9  # the zygote died with the child: report it as killed

    async def _receive(self, loop: asyncio.AbstractEventLoop) -> dict:
        msg = await loop.sock_recv(self._sock, 4096)
        if not msg:
            raise ZygoteDied("the sandbox zygote exited")
        return json.loads(msg)

    def close(self) -> None:
        self._sock.close()  # EOF: the zygote leaves its loop and exits
        try:
            self.proc.wait(timeout=2.0)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()


async def _reader(loop: asyncio.AbstractEventLoop, fd: int) -> asyncio.StreamReader:
    reader = asyncio.StreamReader(limit=1 << 20, loop=loop)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader, loop=loop), os.fdopen(fd, "rb", 0))
    return reader


async def _writer(loop: asyncio.AbstractEventLoop, fd: int) -> asyncio.StreamWriter:
    transport, protocol = await loop.connect_write_pipe(lambda: asyncio.streams.FlowControlMixin(loop=loop), os.fdopen(fd, "wb", 0))
    return asyncio.StreamWriter(transport, protocol, None, loop)
