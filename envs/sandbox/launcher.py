"""The launcher inside a warm sandbox (docker_warm.py, bwrap_warm.py); stdlib only, any Python 3.9+.

It is the sandbox's init: pid 1 of its pid namespace, uid 0 holding only CAP_SETUID, CAP_SETGID and
CAP_KILL (no DAC override, no ptrace; with CAP_SETPCAP too it first empties its capability bounding
set, so nothing it starts can regain a capability, but for SETUID, SETGID and SETPCAP when the
native helper is there, which empties it before the code runs), so the code it runs (another uid,
without those capabilities) can neither reach its socket nor signal, trace or replace it. In a
Docker container it listens on a Unix socket in a root-only (0700) directory (`launcher.py`); in a
warm bubblewrap slot it serves the connected socket it was given as a file descriptor (`launcher.py
--fd N`) and exits at EOF. Per request (4-byte big-endian length + JSON, answered the same way) it
runs one command as the request's uid (65534 if none) in /work at the caller's niceness with the
request's rlimits (CPU, file size, no core files, any extra ones named), started by the native
helper exec_as.c when the host mounted it at /kpop/exec_as (a vfork and two execs), else by a Python
fork; stdin from the request's file, stdout/stderr read up to the cap, the wall clock enforced; then
it resets the sandbox for the next execution: SIGKILL to every process but itself (kill(-1) cannot
race a fork: the kernel holds the task list while it signals), every zombie reaped (as pid 1 it
inherits every orphan), and the System V IPC objects and POSIX queues the code left removed, and the
keys it added to its uid's user and user-session keyrings (kernel keys belong to the uid, not to a
namespace; on x86_64, aarch64 and riscv64), by one helper running as the code's uid, started only
when there is something to remove. /work and /tmp are host directories the host empties after each
execution. Out-of-memory kills are read from the sandbox's memory cgroup when it is mounted (its
oom_kill counter before and after); where it is not (bubblewrap), the host reads the slot's.
"""

import base64
import ctypes
import json
import os
import resource
import selectors
import signal
import socket
import struct
import subprocess
import sys
import time

SOCKET = "/kpop/ctl/agent.sock"
UID = 65534
STDIN_FILE = ".sandbox-stdin"
OOM_FILES = ("/sys/fs/cgroup/memory.events", "/sys/fs/cgroup/memory/memory.oom_control")
OOM_FILE = next((path for path in OOM_FILES if os.path.exists(path)), None)  # none in a bwrap sandbox (no /sys)
PR_CAPBSET_DROP = 24
HELPER = "/kpop/exec_as"  # the native helper, where the host could compile it and mount it (bwrap_warm.py)
NATIVE = os.path.exists(HELPER)
CAP_SETGID, CAP_SETUID, CAP_SETPCAP = 6, 7, 8  # what the helper needs to switch uid and empty the bounding set
KEYCTL = {"x86_64": 250, "aarch64": 219, "riscv64": 219}.get(os.uname().machine)  # the syscall's number
# Run as the code's uid, one process (a slot's process limit leaves room for one besides the
# launcher): removes the System V IPC objects (IPC_RMID), the POSIX queues, and the keys of its user
# and user-session keyrings (KEYCTL_CLEAR, what `keyctl clear @u; keyctl clear @us` does).
CLEANUP = f"""
import ctypes, os
libc = ctypes.CDLL(None)
for kind, remove in (("shm", lambda i: libc.shmctl(i, 0, None)), ("sem", lambda i: libc.semctl(i, 0, 0)),
                     ("msg", lambda i: libc.msgctl(i, 0, None))):
    with open("/proc/sysvipc/" + kind) as f:
        for line in f.readlines()[1:]:
            remove(int(line.split()[1]))
for name in os.listdir("/dev/mqueue") if os.path.isdir("/dev/mqueue") else ():
    os.unlink("/dev/mqueue/" + name)
if {KEYCTL}:
    libc.syscall({KEYCTL}, 7, -4)
    libc.syscall({KEYCTL}, 7, -5)
"""


def recv(conn):
    head = _exactly(conn, 4)
    return None if head is None else json.loads(_exactly(conn, struct.unpack(">I", head)[0]))


def _exactly(conn, n):
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def send(conn, obj):
    data = json.dumps(obj).encode()
    conn.sendall(struct.pack(">I", len(data)) + data)


def oom_kills():
    if OOM_FILE is None:
        return 0
    try:
        with open(OOM_FILE) as f:
            for line in f:
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
    except OSError:
        pass
    return 0


def _child_setup(req):
    # Runs in the child after it became the request's uid (subprocess switches uid before preexec_fn).
    os.chdir("/work")
    if req["nice"] > os.getpriority(os.PRIO_PROCESS, 0):  # the caller's niceness (raising it needs no privilege)
        os.setpriority(os.PRIO_PROCESS, 0, req["nice"])
    cpu = max(1, int(round(req["cpu_s"])))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    resource.setrlimit(resource.RLIMIT_FSIZE, (req["file_bytes"], req["file_bytes"]))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    for name, soft, hard in req.get("rlimits", ()):
        resource.setrlimit(getattr(resource, name), (soft, hard))
    if req["stdin"]:
        fd = os.open(STDIN_FILE, os.O_RDONLY)
        os.dup2(fd, 0)
        os.close(fd)


class Spawned:
    """The parts of a Popen that `execute` uses, for a child the native helper started."""

    def __init__(self, pid, out_fd, err_fd):
        self.pid = pid
        self.stdout, self.stderr = open(out_fd, "rb", buffering=0), open(err_fd, "rb", buffering=0)

    def wait(self):
        return os.waitstatus_to_exitcode(os.waitpid(self.pid, 0)[1])


def spawn_native(req, uid):
    """The child through the native helper (exec_as.c): a vfork and two execs, no Python in between."""
    cpu = max(1, int(round(req["cpu_s"])))
    limits = [("CPU", cpu, cpu + 1), ("FSIZE", req["file_bytes"], req["file_bytes"]), ("CORE", 0, 0)]
    limits += [(name.removeprefix("RLIMIT_"), soft, hard) for name, soft, hard in req.get("rlimits", ())]
    argv = [HELPER, str(uid), str(req["nice"]), "1" if req["stdin"] else "0",
            *(f"{name}={soft}:{hard}" for name, soft, hard in limits), "--", *req["argv"]]
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    try:
        pid = os.posix_spawn(HELPER, argv, req["env"], setsid=True,
                             file_actions=[(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                                           (os.POSIX_SPAWN_DUP2, out_w, 1), (os.POSIX_SPAWN_DUP2, err_w, 2)])
    except BaseException:
        os.close(out_r)
        os.close(err_r)
        raise
    finally:
        os.close(out_w)
        os.close(err_w)
    return Spawned(pid, out_r, err_r)


def spawn(req, uid):
    if NATIVE:
        return spawn_native(req, uid)
    # The child inherits 1000 (the memory cgroup's OOM killer then picks the code, not the launcher);
    # it could not set it itself once it is another uid (its /proc files then belong to root).
    set_oom_score_adj(1000)
    try:
        return subprocess.Popen(req["argv"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env=req["env"], user=uid, group=uid, extra_groups=[], start_new_session=True,
                                preexec_fn=lambda: _child_setup(req))
    finally:
        set_oom_score_adj(0)


def execute(req):
    oom_before, start, uid = oom_kills(), time.monotonic(), req.get("uid", UID)
    try:
        proc = spawn(req, uid)
    except OSError as exc:  # no such program, or not executable: what a shell would report
        reset(uid)
        return {"exit": 127, "signal": None, "wall_s": time.monotonic() - start, "timed_out": False,
                "overflow": False, "oom": False, "stdout": "", "stderr": _b64(f"{req['argv'][0]}: {exc}\n".encode())}
    out, err, timed_out, overflow = collect(proc, start + req["wall_s"], req["output_bytes"])
    code = proc.wait()
    wall = time.monotonic() - start
    reset(uid)
    return {"exit": code if code >= 0 else None, "signal": -code if code < 0 else None, "wall_s": wall,
            "timed_out": timed_out, "overflow": overflow, "oom": oom_kills() > oom_before,
            "stdout": _b64(out[: req["output_bytes"]]), "stderr": _b64(err[: req["output_bytes"]])}


def collect(proc, deadline, cap):
    """stdout and stderr until the process exits (its pidfd), the deadline passes or a stream passes `cap`."""
    out_fd, err_fd = proc.stdout.fileno(), proc.stderr.fileno()
    buffers = {out_fd: bytearray(), err_fd: bytearray()}
    pidfd = os.pidfd_open(proc.pid)
    sel = selectors.DefaultSelector()
    for fd in buffers:
        os.set_blocking(fd, False)
        sel.register(fd, selectors.EVENT_READ)
    sel.register(pidfd, selectors.EVENT_READ)
    timed_out = overflow = exited = False
    while not exited and sel.get_map():
        left = deadline - time.monotonic()
        if left <= 0:
            timed_out = True
            break
        for key, _ in sel.select(left):
            if key.fd == pidfd:
                exited = True  # streams a leftover process still holds are not waited for
                continue
            chunk = os.read(key.fd, 65536)
            if chunk:
                buffers[key.fd] += chunk
                overflow = overflow or len(buffers[key.fd]) > cap
            else:
                sel.unregister(key.fd)
        if overflow:
            break
    for fd in buffers:  # what is already in the pipes
        try:
            while len(buffers[fd]) <= cap and (chunk := os.read(fd, 65536)):
                buffers[fd] += chunk
        except BlockingIOError:
            pass
    sel.close()
    os.close(pidfd)
    if timed_out or overflow:
        kill_all()
    proc.stdout.close()
    proc.stderr.close()
    return bytes(buffers[out_fd]), bytes(buffers[err_fd]), timed_out, overflow


def kill_all():
    if os.getpid() != 1:  # outside a pid namespace of its own, kill(-1) would reach every process of the host
        raise RuntimeError("the launcher must be pid 1 of its own pid namespace")
    try:
        os.kill(-1, signal.SIGKILL)  # every process but pid 1 (this one)
    except ProcessLookupError:
        pass


def reset(uid):
    kill_all()
    while True:
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            break
    if _ipc_left() or (KEYCTL is not None and _keys_left(uid)):
        subprocess.run([sys.executable, "-I", "-S", "-c", CLEANUP], user=uid, group=uid, extra_groups=[],
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={}, cwd="/",
                       check=False)


def _keys_left(uid):
    """Keys of `uid` beyond its two (then empty) keyrings: kernel keys are per uid, not per pid namespace."""
    try:
        with open("/proc/key-users") as f:
            for line in f:
                fields = line.split()
                if fields and fields[0] == f"{uid}:":
                    return int(fields[2].split("/")[0]) > 2
    except (OSError, ValueError, IndexError):
        pass
    return False


def _ipc_left():
    for kind in ("shm", "sem", "msg"):
        try:
            with open(f"/proc/sysvipc/{kind}") as f:
                if len(f.readlines()) > 1:
                    return True
        except OSError:
            pass
    try:
        return bool(os.listdir("/dev/mqueue"))
    except OSError:
        return False


def _b64(data):
    return base64.b64encode(data).decode()


def drop_bounding_set():
    """Empties the capability bounding set when CAP_SETPCAP allows it (the launcher keeps what it holds),
    but for what the native helper needs (it empties the rest itself before the code runs)."""
    libc = ctypes.CDLL(None, use_errno=True)
    keep = {CAP_SETGID, CAP_SETUID, CAP_SETPCAP} if NATIVE else set()
    cap = 0
    while cap in keep or libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) == 0:  # EINVAL past the last one, EPERM without SETPCAP
        cap += 1


def serve(conn):
    with conn:
        while (req := recv(conn)) is not None:
            send(conn, execute(req))


def set_oom_score_adj(value):
    # Lowering it back needs no privilege down to the lowest value a privileged process set (the
    # -1000 a bwrap slot's zygote passes down; Docker's own setting).
    try:
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write(str(value))
    except OSError:
        pass


def main(argv):
    if os.getpid() != 1:
        sys.exit("launcher.py runs only as the init (pid 1) of a sandbox's own pid namespace: its reset kills every other process")
    drop_bounding_set()
    set_oom_score_adj(0)  # not the zygote's -1000: after the code, the OOM killer may take us (the host replaces us)
    if len(argv) == 3 and argv[1] == "--fd":
        serve(socket.socket(fileno=int(argv[2])))
        return
    if os.path.exists(SOCKET):
        os.unlink(SOCKET)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(SOCKET)
    server.listen(1)
    while True:
        serve(server.accept()[0])


if __name__ == "__main__":
    main(sys.argv)
