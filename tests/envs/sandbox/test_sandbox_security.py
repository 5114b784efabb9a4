# ruff: noqa: UP031  (the attack programs are built with %-formatting: they contain braces)
"""Attacks a model could write, run in both bubblewrap modes (fresh and warm, conftest.py) with small limits.

Each test checks that the attack is contained, that the host is unaffected afterwards, and that
the result's status says what happened.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import socket
import subprocess
import tempfile
import threading
from pathlib import Path

from kpop.envs.sandbox.api import SandboxRequest, SandboxStatus

PROJECT = Path(__file__).resolve().parents[3]


def _listener(kind: int, host: str = "127.0.0.1") -> tuple[socket.socket, int, list]:
    """A host server that records any connection or datagram it receives."""
    srv = socket.socket(socket.AF_INET, kind)
    srv.bind((host, 0))
    hits: list = []
    if kind == socket.SOCK_STREAM:
        srv.listen(4)
    srv.settimeout(0.2)

    def serve():
        for _ in range(40):  # bounded: ~8 s at most
            try:
                hits.append(srv.accept() if kind == socket.SOCK_STREAM else srv.recvfrom(100))
            except OSError:
                pass
    threading.Thread(target=serve, daemon=True).start()
    return srv, srv.getsockname()[1], hits


def _own_global_ipv4() -> str | None:
    try:
        out = subprocess.run(["ip", "-4", "-o", "addr", "show", "scope", "global"], capture_output=True, text=True, timeout=5, check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    addrs = [line.split()[3].split("/")[0] for line in out.splitlines() if len(line.split()) > 3]
    return addrs[0] if addrs else None


async def test_tcp_to_host_loopback_and_own_address_is_unreachable(box, small):
    srv, port, hits = _listener(socket.SOCK_STREAM, "0.0.0.0")
    targets = ["127.0.0.1"] + ([ip] if (ip := _own_global_ipv4()) else [])
    code = (
        "import socket\nfor host in %r:\n"
        "    try:\n        socket.create_connection((host, %d), timeout=1); print('CONNECTED', host)\n"
        "    except OSError as e: print('blocked', host, type(e).__name__)\n" % (targets, port)
    )
    result = await box.run(SandboxRequest(code=code, limits=small))
    srv.close()
    assert result.status is SandboxStatus.OK and "CONNECTED" not in result.stdout
    assert result.stdout.count("blocked") == len(targets) and hits == []


async def test_udp_and_dns_have_no_network(box, small):
    srv, port, hits = _listener(socket.SOCK_DGRAM)
    code = (
        "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        "for _ in range(3): s.sendto(b'x', ('127.0.0.1', %d))\n"
        "try:\n    socket.getaddrinfo('example.com', 80); print('RESOLVED')\n"
        "except OSError as e: print('dns failed', type(e).__name__)\n"
        "print([n for _, n in socket.if_nameindex()])\n" % port
    )
    result = await box.run(SandboxRequest(code=code, limits=small))
    srv.close()
    assert result.status is SandboxStatus.OK and "dns failed" in result.stdout and "RESOLVED" not in result.stdout
    assert "['lo']" in result.stdout and hits == []  # only its own loopback; host server got nothing


async def test_writes_outside_workdir_and_into_project_fail(box, small):
    marker = PROJECT / "sandbox_write_probe.txt"
    code = (
        "import os\nfor p in ['/usr/evil', '/etc/evil', '/evil', %r, '/root/evil']:\n"
        "    try:\n        open(p, 'w').write('x'); print('WROTE', p)\n"
        "    except OSError as e: print('denied', p, e.errno)\n"
        "open('inside.txt', 'w').write('fine'); open('/tmp/t', 'w').write('private tmp')\n" % str(marker)
    )
    result = await box.run(SandboxRequest(code=code, limits=small, outputs=("inside.txt",)))
    assert result.status is SandboxStatus.OK and "WROTE" not in result.stdout, result.stdout + result.stderr
    assert result.stdout.count("denied") == 5 and result.output_files == {"inside.txt": b"fine"}
    assert not marker.exists() and not Path("/evil").exists()


async def test_host_secrets_and_parent_environment_are_invisible(box, small, monkeypatch, tmp_path):
    secret = Path("/root/.kpop_sandbox_secret_probe") if os.geteuid() == 0 else tmp_path / "secret"
    secret.write_text("TOPSECRET")
    monkeypatch.setenv("KPOP_SANDBOX_SECRET", "TOPSECRET")
    try:
        code = (
            "import os\nprint(sorted(os.environ))\nfor p in [%r, '/root', '/proc/1/environ', '/work/../root']:\n"
            "    try:\n        print(open(p).read() if not os.path.isdir(p) else os.listdir(p))\n"
            "    except OSError as e: print('denied', e.errno)\n" % str(secret)
        )
        result = await box.run(SandboxRequest(code=code, limits=small))
    finally:
        secret.unlink()
    assert result.status is SandboxStatus.OK and "TOPSECRET" not in result.stdout + result.stderr
    assert "KPOP_SANDBOX_SECRET" not in result.stdout and result.stdout.count("denied") >= 2


async def test_runs_as_unprivileged_uid(box, small):
    result = await box.run(SandboxRequest(command=["python3", "-c", "import os; print(os.getuid(), os.geteuid())"], limits=small))
    uid, euid = map(int, result.stdout.split())
    assert result.ok and uid != 0 and euid != 0


async def test_no_capabilities_and_no_supplementary_groups(box, small):
    code = "import os\nst = dict(l.split(':\t') for l in open('/proc/self/status').read().splitlines() if ':\t' in l)\nprint(st['CapBnd'], st['CapEff'], st['CapPrm'], st['Groups'].strip() or '-')\n"
    result = await box.run(SandboxRequest(code=code, limits=small))
    bnd, eff, prm, groups = result.stdout.split()
    assert result.ok and int(bnd, 16) == int(eff, 16) == int(prm, 16) == 0, result.stdout
    assert groups in ("-", "65534"), groups


async def test_fork_bomb_is_stopped_by_the_pids_limit(box, small):
    code = "import os, time\nfor _ in range(10000):\n    os.fork()\ntime.sleep(60)\n"
    result = await box.run(SandboxRequest(code=code, limits=small))
    assert result.status in (SandboxStatus.PIDS_LIMIT, SandboxStatus.TIMEOUT), result
    if box.has_cgroups:
        assert result.status is SandboxStatus.PIDS_LIMIT and box.leftover_pids() == []
    assert result.wall_s < small.wall_s + 2


async def test_memory_bomb_is_oom(box, small):
    result = await box.run(SandboxRequest(code="x = []\nwhile True: x.append(bytearray(16 * 2**20))\n", limits=small))
    assert result.status is SandboxStatus.OOM and not result.ok, result


async def test_cpu_spin_past_the_limit(box, small):
    limits = dataclasses.replace(small, cpu_s=1.0, wall_s=8.0)
    result = await box.run(SandboxRequest(code="while True: pass\n", limits=limits))
    assert result.status is SandboxStatus.CPU_TIMEOUT and result.wall_s < 5, result


async def test_sleep_past_the_wall_limit(box, small):
    limits = dataclasses.replace(small, wall_s=1.0)
    result = await box.run(SandboxRequest(code="import time; time.sleep(60)\n", limits=limits))
    assert result.status is SandboxStatus.TIMEOUT and 1.0 <= result.wall_s < 3.0, result


async def test_output_flood_is_cut_and_killed(box, small):
    result = await box.run(SandboxRequest(code="import sys\nwhile True: sys.stdout.write('y' * 65536)\n", limits=small))
    assert result.status is SandboxStatus.OUTPUT_TRUNCATED and len(result.stdout) == small.max_output_bytes
    assert result.wall_s < 3


async def test_big_file_is_file_too_large(box, small):
    code = "open('big', 'wb').write(b'0' * (4 * 2**20))\n"
    result = await box.run(SandboxRequest(code=code, limits=small))
    assert result.status is SandboxStatus.FILE_TOO_LARGE, result


async def test_background_processes_do_not_survive(box, small):
    marker = "kpop-sandbox-orphan-probe-4711"
    code = (
        "import subprocess, os\nsubprocess.Popen(['sh', '-c', 'exec -a %s sleep 300'], start_new_session=True)\n"
        "if os.fork() == 0:\n    os.setsid(); os.execvp('sleep', ['sleep', '301'])\nprint('left them')\n" % marker
    )
    result = await box.run(SandboxRequest(code=code, limits=small))
    assert result.ok and "left them" in result.stdout
    leftovers = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes()
        except OSError:
            continue
        if marker.encode() in text or text.startswith(b"sleep\x00301"):
            leftovers.append(text)
    assert leftovers == []


async def test_signalling_the_parent_and_host_fails(box, small):
    code = (
        "import os, signal\nfor pid in [os.getppid(), %d, -1]:\n"
        "    try:\n        os.kill(pid, signal.SIGKILL); print('sent', pid)\n"
        "    except OSError as e: print('denied', pid, e.errno)\n"
        "print('alive')\n" % os.getpid()
    )
    result = await box.run(SandboxRequest(code=code, limits=small))
    assert f"denied {os.getpid()}" in result.stdout  # the host's pids do not exist in the sandbox
    assert result.status in (SandboxStatus.OK, SandboxStatus.KILLED)  # kill(-1) may end the sandbox itself
    assert os.getppid() > 1  # and we, the host, are still here with our parent


async def test_symlink_and_proc_escapes_yield_nothing(box, small):
    code = (
        "import os\nos.symlink('/etc/shadow', 'shadow'); os.symlink('/root', 'rootdir'); os.symlink('/proc/1/root', 'procroot')\n"
        "try:\n    print(sorted(os.listdir('/proc/1/root')))\nexcept PermissionError:\n    print('denied')\n"
        "print(len([p for p in os.listdir('/proc') if p.isdigit()]))\n"
    )
    result = await box.run(SandboxRequest(code=code, limits=small, outputs=("*", "rootdir/*", "procroot/etc/*")))
    assert result.status is SandboxStatus.OK, result
    assert "main.py" in result.output_files and set(result.output_files) == {"main.py"}  # links not followed
    listing, nprocs = result.stdout.splitlines()
    # /proc/1/root is the sandbox's own root (fresh: bwrap's init, the code's uid), or out of reach
    # (warm: pid 1 is the launcher, another uid)
    assert listing == "denied" if getattr(box, "sandboxes_started", 0) else "root" not in listing and "work" in listing
    assert int(nprocs) <= 3  # only the sandbox's own processes are visible


async def test_work_directory_is_removed(box, small):
    # A base of its own: other processes on this host may be using the shared one meanwhile.
    box._base = Path(tempfile.mkdtemp(dir=box._base.parent, prefix="kpop-sandbox-test-"))
    os.chmod(box._base, 0o711)
    try:
        result = await box.run(SandboxRequest(code="open('f', 'w').write('x')\nimport os; print(os.getcwd())\n", limits=small))
        assert result.ok and result.stdout.strip() == "/work"
        if getattr(box, "sandboxes_started", 0):  # a warm slot keeps its directory, emptied
            assert [p.name for p in box._base.iterdir()] == [box._dir.name] and os.listdir(box._dir / "work") == []
            await box.close()
        assert os.listdir(box._base) == []
    finally:
        shutil.rmtree(box._base)


async def test_request_paths_cannot_escape(box, small):
    result = await box.run(SandboxRequest(code="print(1)", files={"../escape.txt": "x"}, limits=small))
    assert result.status is SandboxStatus.SANDBOX_ERROR and "relative path" in result.detail
    assert not (box._base.parent / "escape.txt").exists()
