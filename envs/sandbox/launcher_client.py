"""The host's side of a warm sandbox's launcher (launcher.py): the request it sends, the answer it reads.

Shared by the warm Docker container (docker_warm.py) and the warm bubblewrap slot (bwrap_warm.py).
One execution is one request over a connected, non-blocking Unix stream socket, 4-byte big-endian
length + JSON each way, driven through the running event loop (`loop.sock_*`): a thread hand-off
each way cost more than the rest of an execution on a loaded machine. Nothing here is tied to one
event loop. `exchange` returns None when the launcher closed its end (it died).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import struct
from collections.abc import Mapping, Sequence
from pathlib import Path

from kpop.envs.sandbox.api import SandboxLimits
from kpop.envs.sandbox.classify import Observed

LAUNCHER = Path(__file__).resolve().with_name("launcher.py")


def request(argv: Sequence[str], env: Mapping[str, str], stdin: bool, lim: SandboxLimits, uid: int | None = None,
            rlimits: Sequence[tuple[str, int, int]] = ()) -> dict:
    """One execution as the launcher reads it; the code runs at our niceness, as a forked sandbox would inherit it."""
    req = {"argv": list(argv), "env": dict(env), "stdin": stdin, "wall_s": lim.wall_s, "cpu_s": lim.cpu_s,
           "file_bytes": lim.max_file_bytes, "output_bytes": lim.max_output_bytes,
           "nice": os.getpriority(os.PRIO_PROCESS, 0), "rlimits": [list(r) for r in rlimits]}
    if uid is not None:
        req["uid"] = uid
    return req


def observed(res: dict, oom: bool = False, pids_limit_hit: bool = False) -> Observed:
    """The launcher's answer as `classify` reads it; `oom` / `pids_limit_hit`: what the host saw in the slot's cgroups."""
    return Observed(res["exit"], res["signal"], res["wall_s"], base64.b64decode(res["stdout"]),
                    base64.b64decode(res["stderr"]), res["timed_out"], res["overflow"], res["oom"] or oom, pids_limit_hit)


async def exchange(conn: socket.socket, obj: dict) -> dict | None:
    """One request and its answer; None at EOF."""
    loop = asyncio.get_running_loop()
    data = json.dumps(obj).encode()
    await loop.sock_sendall(conn, struct.pack(">I", len(data)) + data)
    head = await _exactly(loop, conn, 4)
    if head is None:
        return None
    body = await _exactly(loop, conn, struct.unpack(">I", head)[0])
    return None if body is None else json.loads(body)


async def _exactly(loop: asyncio.AbstractEventLoop, conn: socket.socket, n: int) -> bytes | None:
    data = bytearray()
    while len(data) < n:
        chunk = await loop.sock_recv(conn, n - len(data))
        if not chunk:
            return None
        data += chunk
    return bytes(data)
