"""The slot's zygote: a small root process living in the slot's cgroups that forks every execution.

Run as `python -I -S zygote.py SOCKET_FD` (stdlib only, no site) by `ZygoteClient`. It serves
one request at a time over a SOCK_SEQPACKET socket: a JSON `spec` with three file descriptors
(the child's stdin, stdout, stderr) attached. It forks; the child starts a new session, takes
the descriptors as 0/1/2, sets the rlimits, drops to the spec's uid (no supplementary groups,
an empty capability bounding set) and execs the argv with exactly the spec's environment. The
zygote answers `{"pid": P}` at once and `{"pid": P, "returncode": R}` when the child is reaped
(R as asyncio reports it: negative for a signal). EOF on the socket ends the zygote.

Why: on cgroup v1 moving a task into a cgroup waits for an RCU grace period (~10 ms here), more
than all the rest of the wrapping; children of a process already inside inherit the cgroups for
free. The zygote is a child subreaper and reaps every orphan of the last execution before the next
fork. Invariants: the zygote is in the cgroups before it forks anything, so no untrusted
instruction ever runs outside them; it is never an OOM-kill victim (oom_score_adj -1000); its
children cannot signal it (other uid, other pid namespace once bwrap runs).
"""

import ctypes
import json
import os
import resource
import socket
import sys
import time

PR_CAPBSET_DROP = 24
PR_SET_CHILD_SUBREAPER = 36
CHILD_FAILED = 125


def _drop_bounding_set(libc) -> None:
    cap = 0
    while libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) == 0:  # EINVAL past the last capability
        cap += 1


def _child(spec: dict, fds: list[int], libc) -> None:
    try:
        os.setsid()
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
        os.closerange(3, 65536)
        os.chdir(spec["cwd"])
        for name, soft, hard in spec["rlimits"]:
            resource.setrlimit(getattr(resource, name), (soft, hard))
        uid = spec["uid"]
        if uid is not None:
            _drop_bounding_set(libc)
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
        os.execve(spec["argv"][0], spec["argv"], spec["env"])
    except BaseException as exc:  # noqa: BLE001 (the child must never return into the zygote loop)
        os.write(2, f"kpop-sandbox: cannot start {spec['argv'][0]!r}: {exc}\n".encode())
    os._exit(CHILD_FAILED)


def _reap_orphans(wait_s: float = 0.0) -> None:
    """Reaps dead children; with `wait_s`, waits that long for the living ones too."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            if time.monotonic() >= deadline:
                return
            time.sleep(0.005)


def serve(sock: socket.socket) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    # Orphans of an execution (bwrap's inner init once the outer one is killed) come to us, and
    # are reaped before the next fork: a zombie would still count against that uid's RLIMIT_NPROC.
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    while True:
        try:
            msg, fds, _flags, _addr = socket.recv_fds(sock, 1 << 20, 3)
        except ConnectionResetError:
            # the owner exited with our last reply unread: as gone as a clean close
            msg, fds = b"", []
        if not msg:
            _reap_orphans(wait_s=2.0)  # the slot killed everything before closing us
            return
        _reap_orphans()
        spec = json.loads(msg)
        pid = os.fork()
        if pid == 0:
            sock.close()
            _child(spec, fds, libc)
        for fd in fds:
            os.close(fd)
        try:
            sock.send(json.dumps({"pid": pid}).encode())
            _, status = os.waitpid(pid, 0)
            sock.send(json.dumps({"pid": pid, "returncode": os.waitstatus_to_exitcode(status)}).encode())
        except (BrokenPipeError, ConnectionResetError):
            return  # the parent is gone (it exited without closing its pool): so is the reason to serve


def main(argv: list[str]) -> None:
    try:
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write("-1000")
    except OSError:
        pass  # not root: no cgroups either, so no OOM killer inside the slot to hide from
    sock = socket.socket(fileno=int(argv[1]))
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    serve(sock)


if __name__ == "__main__":
    main(sys.argv)
