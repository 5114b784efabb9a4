"""The warm bubblewrap slot (sandbox.backend.warm, the bwrap default); the attack suite runs on it too (conftest.py).

- The spec field is honoured: `warm: true` runs every execution of a pool slot in one sandbox (one
  network namespace), through the pool a RunSpec configures; `warm: false` makes new namespaces
  per execution.
- The reset: what one execution leaves (files in /work and /tmp, a chmod-0 directory, a detached
  process, a System V shared memory segment, a POSIX queue, a key in its uid's keyring) is gone
  when the next one runs in the same sandbox.
- The limits are classified as in a fresh sandbox and the slot serves on afterwards; limits that
  change between executions apply without a new sandbox.
- A lost launcher (killed, or stopped past the host's deadline) is replaced.
Each runs with the native helper that starts executions (exec_as.c) and without it (Python).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import threading

import pytest

from kpop.envs.sandbox import bwrap_warm, launcher
from kpop.envs.sandbox.api import SandboxLimits, SandboxRequest, SandboxStatus
from kpop.envs.sandbox.bwrap_warm import WarmBwrapSandbox
from kpop.spec import load_spec
from tests.envs.sandbox.conftest import SMALL

# Which sandbox ran it: its network namespace and when its pid 1 started (namespace inode numbers
# are reused once a namespace is freed, so the inode alone does not tell two sandboxes apart).
NETNS = SandboxRequest(code="import os\nprint(os.readlink('/proc/self/ns/net'), "
                            "open('/proc/1/stat').read().rsplit(')', 1)[1].split()[19])", limits=SMALL)
ADD_KEY = {"x86_64": 248, "aarch64": 217, "riscv64": 217}.get(os.uname().machine)  # add_key's number
KEYS = "import ctypes\nk = ctypes.CDLL(None).syscall\n"  # the raw keyctl / add_key syscalls
COUNT_PROCS = "import os; print(len([p for p in os.listdir('/proc') if p.isdigit()]))"


@pytest.fixture(params=["native", "python"])
async def warm(request):
    """A warm slot starting executions through the native helper (exec_as.c) and one without it."""
    if shutil.which("bwrap") is None:
        pytest.skip("bubblewrap (bwrap) is not installed; deploy/setup.sh installs it")
    if os.geteuid() != 0:
        pytest.skip("a warm slot needs root (without it the slot runs fresh sandboxes)")
    if request.param == "native" and bwrap_warm.native_helper() is None:
        pytest.skip("no C compiler: the launcher starts executions in Python")
    sandbox = WarmBwrapSandbox(slot=210, native=request.param == "native")
    yield sandbox
    await sandbox.close()


@pytest.mark.parametrize("warm_field", [True, False])
async def test_the_run_spec_field_selects_the_warm_slot(warm_field):
    if shutil.which("bwrap") is None or os.geteuid() != 0:
        pytest.skip("needs bwrap and root")
    from kpop.envs.sandbox.api import run_request
    from kpop.envs.sandbox.default import configure

    spec = load_spec(None, [f"sandbox.backend.warm={str(warm_field).lower()}", "sandbox.pool_size=1"])
    pool = configure(spec.sandbox)  # what every environment worker does with its RunSpec's section
    try:
        names = [(await run_request(NETNS)).stdout.strip() for _ in range(3)]
    finally:
        configure(None)
        await pool.close()
    assert all(n.startswith("net:[") and len(n.split()) == 2 for n in names), names
    assert len(set(names)) == (1 if warm_field else 3), names


def test_warm_is_the_default_and_the_run_plan_says_which_mode_runs():
    from kpop.launch import describe_sandbox

    assert load_spec(None, []).sandbox.backend.warm is True
    lines = {w: describe_sandbox(load_spec(None, [f"sandbox.backend.warm={w}"]).sandbox) for w in ("true", "false")}
    assert "warm: one running sandbox per slot" in lines["true"] and "fresh namespaces each" in lines["false"]


async def test_nothing_one_execution_leaves_is_visible_to_the_next(warm):
    if launcher.KEYCTL is None or ADD_KEY is None:
        pytest.skip("the keyring reset knows the keyctl syscall number of x86_64, aarch64 and riscv64 only")
    leave = ("import os, subprocess\n"
             "open('/work/left.txt', 'w').write('x'); open('/tmp/left.txt', 'w').write('x')\n"
             "os.makedirs('/work/d/e'); os.chmod('/work/d', 0)\n"
             "open('/dev/mqueue/q', 'w').close()\n"
             "subprocess.run(['ipcmk', '-M', '4096'], check=True, stdout=subprocess.DEVNULL)\n"
             "subprocess.Popen(['sleep', '600'], start_new_session=True)\n"
             f"{KEYS}key = k({ADD_KEY}, b'user', b'probe', b'secret', 6, -4)\n"
             "print(os.readlink('/proc/self/ns/net'), len(open('/proc/sysvipc/shm').readlines()) - 1, key > 0,\n"
             "      sorted(os.listdir('/dev/mqueue')))")
    first = await warm.run(SandboxRequest(code=leave, limits=SMALL))
    assert first.ok, first
    netns, shm, key_added, queues = first.stdout.split(" ", 3)
    assert shm == "1" and key_added == "True" and queues.strip() == "['q']"  # they were there when it ended
    look = ("import os\n"
            "procs = sorted(int(p) for p in os.listdir('/proc') if p.isdigit())\n"
            "print(os.readlink('/proc/self/ns/net'))\n"
            "print(sorted(os.listdir('/work')), sorted(os.listdir('/tmp')), sorted(os.listdir('/dev/mqueue')))\n"
            "print(len(open('/proc/sysvipc/shm').readlines()) - 1, procs[0], len(procs))\n"
            f"{KEYS}print(k({launcher.KEYCTL}, 10, -4, b'user', b'probe', 0))")  # KEYCTL_SEARCH: -1 (ENOKEY)
    second = await warm.run(SandboxRequest(code=look, limits=SMALL))
    assert second.ok, second
    ns, listing, counts, key = second.stdout.splitlines()
    assert ns == netns                                   # the same sandbox
    assert listing == "['main.py'] [] []"                # its own file only
    assert counts == "0 1 2"                             # no IPC; the launcher (pid 1) and itself
    assert key == "-1"                                   # the key it added is gone
    assert warm.sandboxes_started == 1 and warm.leftover_pids() == []


async def test_limits_are_classified_and_the_slot_serves_on(warm):
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    srv.settimeout(3.0)
    hits: list = []
    listener = threading.Thread(target=lambda: hits.append(_accept(srv)), daemon=True)
    listener.start()
    code = ("import socket, os\ntry:\n    socket.create_connection(('127.0.0.1', PORT), timeout=1); print('CONNECTED')\n"
            "except OSError: print('blocked')\nprint(os.getuid(), os.nice(0), open('/proc/self/oom_score_adj').read())").replace("PORT", str(srv.getsockname()[1]))
    net = await warm.run(SandboxRequest(code=code, limits=SMALL))
    # our niceness; the OOM killer's first choice, not the launcher
    assert net.ok and net.stdout.split() == ["blocked", str(warm.uid), str(os.nice(0)), "1000"], net
    oom = await warm.run(SandboxRequest(code="x = []\nwhile True: x.append(bytearray(16 * 2**20))", limits=SMALL))
    assert oom.status is SandboxStatus.OOM, oom
    slow = await warm.run(SandboxRequest(code="import time; time.sleep(60)", limits=SandboxLimits(wall_s=1.0)))
    assert slow.status is SandboxStatus.TIMEOUT and slow.wall_s < 4, slow
    bomb = await warm.run(SandboxRequest(code="import os, time\nfor _ in range(10000): os.fork()\ntime.sleep(60)\n", limits=SMALL))
    assert bomb.status is SandboxStatus.PIDS_LIMIT and warm.leftover_pids() == [], bomb
    flood = await warm.run(SandboxRequest(code="while True: print('x' * 4096)", limits=SMALL))
    assert flood.status is SandboxStatus.OUTPUT_TRUNCATED and len(flood.stdout) == SMALL.max_output_bytes, flood
    spin = await warm.run(SandboxRequest(code="while True: pass", limits=SandboxLimits(cpu_s=1.0, wall_s=30.0)))  # nice 19 on a busy machine: 1 CPU-second can take 8+ s
    assert spin.status is SandboxStatus.CPU_TIMEOUT, spin
    big = await warm.run(SandboxRequest(code="open('big', 'wb').write(b'0' * (4 * 2**20))", limits=SMALL))
    assert big.status is SandboxStatus.FILE_TOO_LARGE, big
    after = await warm.run(SandboxRequest(code=COUNT_PROCS, limits=SMALL))
    assert after.ok and after.stdout.strip() == "2", after
    listener.join(5.0)
    srv.close()
    assert hits == [None] and warm.sandboxes_started == 1  # the host's listener got nothing; one sandbox throughout


def _accept(srv: socket.socket):
    try:
        return srv.accept()
    except OSError:
        return None


async def test_changed_limits_apply_without_a_new_sandbox(warm):
    grab = "x = bytearray(200 * 2**20); print(len(x) >> 20)"
    small = await warm.run(SandboxRequest(code=grab, limits=SandboxLimits(memory_bytes=128 * 2**20)))
    large = await warm.run(SandboxRequest(code=grab, limits=SandboxLimits(memory_bytes=512 * 2**20)))
    few = await warm.run(SandboxRequest(code="import os, time\nfor _ in range(4): os.fork()\ntime.sleep(0.2)",
                                        limits=SandboxLimits(max_processes=4)))
    assert small.status is SandboxStatus.OOM, small
    assert large.ok and large.stdout.strip() == "200", large
    assert few.status is SandboxStatus.PIDS_LIMIT, few
    assert warm.sandboxes_started == 1


async def test_a_killed_launcher_is_replaced(warm):
    first = await warm.run(NETNS)
    [launcher] = bwrap_warm._children(warm._bwrap_pid)
    os.kill(launcher, signal.SIGKILL)
    for _ in range(500):  # until its end of the socket is closed (the kill is asynchronous)
        if bwrap_warm._hung_up(warm._conn):
            break
        await asyncio.sleep(0.01)
    second = await warm.run(NETNS)
    assert first.ok and second.ok and first.stdout != second.stdout, (first, second)
    assert warm.sandboxes_started == 2 and warm.leftover_pids() == []


async def test_a_launcher_past_the_host_deadline_is_replaced(warm, monkeypatch):
    await warm.run(NETNS)
    monkeypatch.setattr(bwrap_warm, "GRACE_S", 0.5)
    [launcher] = bwrap_warm._children(warm._bwrap_pid)
    os.kill(launcher, signal.SIGSTOP)  # it hangs: the host gives up at wall_s + GRACE_S
    hung = await warm.run(SandboxRequest(command=["true"], limits=SandboxLimits(wall_s=0.5)))
    assert hung.status is SandboxStatus.SANDBOX_ERROR and "warm sandbox lost" in hung.detail, hung
    assert hung.wall_s < 3
    again = await warm.run(SandboxRequest(code="print('fine')", limits=SMALL))
    assert again.ok and again.stdout == "fine\n" and warm.sandboxes_started == 2, again


async def test_directories_of_exited_processes_are_removed_and_others_kept(warm, tmp_path):
    import subprocess

    dead = subprocess.Popen(["true"])
    dead.wait()
    warm._base = tmp_path
    stale, alive = tmp_path / f"warm-{dead.pid}-abc", tmp_path / f"warm-{os.getppid()}-abc"
    for d in (stale, alive):
        (d / "work").mkdir(parents=True)
    result = await warm.run(NETNS)
    assert result.ok and not stale.exists() and alive.exists()
    assert warm._dir.name.startswith(f"warm-{os.getpid()}-")


def test_a_process_that_never_closes_its_pool_leaves_nothing_behind(tmp_path):
    if shutil.which("bwrap") is None or os.geteuid() != 0:
        pytest.skip("needs bwrap and root")
    import subprocess
    import sys
    import time

    script = ("import asyncio, os\nfrom kpop.envs.sandbox.api import run_command\n"
              "r = asyncio.run(run_command(['true']))\nprint(r.status.value, os.getpid())")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False)
    status, pid = done.stdout.split()
    assert status == "ok" and done.returncode == 0 and done.stderr == "", done.stderr  # no zygote traceback
    for _ in range(300):  # its sandboxes end once they see it gone
        if not any(_cmdline_has(p, f"warm-{pid}-") for p in os.listdir("/proc") if p.isdigit()):
            break
        time.sleep(0.01)
    else:
        raise AssertionError("a sandbox of the exited process is still running")


def _cmdline_has(pid: str, text: str) -> bool:
    try:
        return text.encode() in open(f"/proc/{pid}/cmdline", "rb").read()
    except OSError:
        return False


def test_the_launcher_refuses_to_run_outside_a_pid_namespace_of_its_own():
    import subprocess
    import sys

    # Its reset is kill(-1): as anything but pid 1 of its own namespace it would reach the whole host.
    done = subprocess.run([sys.executable, "-I", "-S", str(launcher.__file__)], capture_output=True, text=True,
                          timeout=30, check=False)
    assert done.returncode == 1 and "runs only as the init (pid 1)" in done.stderr, done


async def test_the_reset_works_within_a_one_process_limit(warm):
    # The clean-up helper runs in the slot's cgroups too: with max_processes 1 it must still fit.
    one = SandboxLimits(max_processes=1)
    leave = "import ctypes\nprint(ctypes.CDLL(None).shmget(0, 4096, 0o600 | 0o1000) >= 0)"  # IPC_PRIVATE, IPC_CREAT
    left = await warm.run(SandboxRequest(code=leave, limits=one))
    look = await warm.run(SandboxRequest(code="print(len(open('/proc/sysvipc/shm').readlines()) - 1)", limits=one))
    assert left.ok and left.stdout == "True\n", left
    assert look.ok and look.stdout == "0\n" and warm.sandboxes_started == 1, look


async def test_the_native_helper_is_what_starts_the_code(warm):
    # Which one started it shows in how a missing program is reported: the helper's execvp and
    # strerror, or Python's OSError; either way exit 127, as a shell would.
    missing = await warm.run(SandboxRequest(command=["no-such-program"], limits=SMALL))
    assert missing.exit_code == 127, missing
    if warm.native:
        assert missing.stderr == "no-such-program: No such file or directory\n", missing
    else:
        assert missing.stderr.startswith("no-such-program: [Errno 2]"), missing
    hidden = await warm.run(SandboxRequest(code="import os\ntry:\n    os.listdir('/kpop')\nexcept PermissionError:\n    print('hidden')",
                                           limits=SMALL))
    assert hidden.ok and hidden.stdout == "hidden\n", hidden  # the launcher and the helper are out of the code's reach


def test_the_zygote_ends_quietly_when_its_owner_exits_with_a_reply_unread():
    """The owner dies between an execution's two replies: the zygote's next receive fails with
    ECONNRESET (the closed end had unread data) rather than EOF, and must end as it does at EOF."""
    import json
    import select
    import socket
    import subprocess
    import sys

    from kpop.envs.sandbox.zygote_client import ZYGOTE

    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    zygote = subprocess.Popen([sys.executable, "-I", "-S", ZYGOTE, str(theirs.fileno())], pass_fds=(theirs.fileno(),),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    theirs.close()
    assert zygote.stdout.readline() == "ready\n"
    spec = {"cwd": "/", "rlimits": [], "uid": None, "argv": ["/bin/true"], "env": {}}
    with open(os.devnull, "rb") as stdin, open(os.devnull, "wb") as out:
        socket.send_fds(ours, [json.dumps(spec).encode()], [stdin.fileno(), out.fileno(), out.fileno()])
    assert "pid" in json.loads(ours.recv(1 << 16))
    assert select.select([ours], [], [], 30)[0]          # the returncode reply has arrived, unread
    ours.close()
    _, err = zygote.communicate(timeout=30)
    assert zygote.returncode == 0 and err == "", err
