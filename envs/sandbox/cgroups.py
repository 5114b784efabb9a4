"""Per-slot control groups: a pids limit (fork bombs) and a memory limit with OOM detection.

Works with cgroup v1 (separate `pids` and `memory` hierarchies, as on these machines) and with
cgroup v2 (unified, controllers enabled at the root). `CgroupSlot.create` returns None when the
host gives us neither (not root, read-only /sys/fs/cgroup); backends then fall back to rlimits.
Invariants: a slot's directories are named `<owner pid>-<slot>` under `kpop-sandbox/`, so
concurrent processes never share one and leftovers of dead owners are removed on creation;
`kill_all` returns only once the slot holds no process, which makes the slot safe to reuse.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

ROOT = Path("/sys/fs/cgroup")
GROUP = "kpop-sandbox"


def _own_path(controller: str) -> str:
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, ctrls, path = line.split(":", 2)
        if controller in ctrls.split(","):
            return path.lstrip("/")
    return ""


def _parents() -> dict[str, Path] | None:
    """controller -> directory to create slots in, or None without usable cgroups."""
    if (ROOT / "cgroup.controllers").exists():  # v2
        if not {"memory", "pids"} <= set((ROOT / "cgroup.controllers").read_text().split()):
            return None
        (ROOT / "cgroup.subtree_control").write_text("+memory +pids")
        return {"v2": ROOT / GROUP}
    if (ROOT / "pids").is_dir() and (ROOT / "memory").is_dir():
        return {c: ROOT / c / _own_path(c) / GROUP for c in ("pids", "memory")}
    return None


def _cleanup_stale(parent: Path) -> None:
    for entry in parent.iterdir():
        owner = entry.name.split("-", 1)[0]
        if entry.is_dir() and owner.isdigit() and not Path(f"/proc/{owner}").exists():
            try:
                entry.rmdir()
            except OSError:
                pass


class CgroupSlot:
    def __init__(self, dirs: dict[str, Path]) -> None:
        self.dirs = dirs
        self.v2 = "v2" in dirs
        self._base = {"oom": 0, "pids": 0}
        self._limits: tuple[int, int] | None = None
        self._base_current = False  # _base holds the counters as the last `events` read them

    @classmethod
    def create(cls, slot: int) -> CgroupSlot | None:
        try:
            parents = _parents()
            if parents is None:
                return None
            dirs = {}
            for ctrl, parent in parents.items():
                parent.mkdir(exist_ok=True)
                if parent.parent == ROOT and ctrl == "v2":
                    (parent / "cgroup.subtree_control").write_text("+memory +pids")
                _cleanup_stale(parent)
                dirs[ctrl] = parent / f"{os.getpid()}-{slot}"
                dirs[ctrl].mkdir(exist_ok=True)
            return cls(dirs)
        except OSError:
            return None

    def _file(self, ctrl: str, name: str) -> Path:
        return self.dirs["v2" if self.v2 else ctrl] / name

    def set_limits(self, memory_bytes: int, pids_max: int) -> None:
        """Applies the limits (written only when they changed) and starts counting events from now:
        from the counters the last `events` read when nothing changed since (no process of the slot
        runs between two executions), else from a new reading."""
        if self._limits != (memory_bytes, pids_max):
            self._write_limits(memory_bytes, pids_max)
            self._limits = (memory_bytes, pids_max)
            self._base_current = False
        if not self._base_current:
            self._base = self._counters()
        self._base_current = False

    def _write_limits(self, memory_bytes: int, pids_max: int) -> None:
        self._file("pids", "pids.max").write_text(str(pids_max))
        if self.v2:
            self._file("memory", "memory.max").write_text(str(memory_bytes))
            self._file("memory", "memory.swap.max").write_text("0") if self._file("memory", "memory.swap.max").exists() else None
        else:
            files = [self._file("memory", "memory.limit_in_bytes"), self._file("memory", "memory.memsw.limit_in_bytes")]
            files = [f for f in files if f.exists()]
            try:
                for f in files:
                    f.write_text(str(memory_bytes))
            except OSError:  # memsw must stay >= the memory limit: lower/raise in the other order
                for f in reversed(files):
                    f.write_text(str(memory_bytes))

    def _counters(self) -> dict[str, int]:
        if self.v2:
            mem = self._file("memory", "memory.events").read_text()
        else:
            mem = self._file("memory", "memory.oom_control").read_text()
        return {"oom": _field(mem, "oom_kill"), "pids": _field(self._file("pids", "pids.events").read_text(), "max")}

    def attach(self, pid: int) -> None:
        for ctrl in ("v2",) if self.v2 else ("pids", "memory"):
            (self.dirs[ctrl] / "cgroup.procs").write_text(str(pid))

    def events(self) -> tuple[bool, bool]:
        """(an OOM kill happened, the pids limit was hit) since `set_limits`."""
        now = self._counters()
        hit = now["oom"] > self._base["oom"], now["pids"] > self._base["pids"]
        self._base, self._base_current = now, True
        return hit

    def pids(self, keep: int | None = None) -> list[int]:
        return [int(p) for p in self._file("pids", "cgroup.procs").read_text().split() if int(p) != keep]

    def kill_all(self, timeout_s: float = 5.0, keep: int | None = None) -> bool:
        """SIGKILL every process in the slot but `keep` until none is left; False if some survived."""
        deadline = time.monotonic() + timeout_s
        while pids := self.pids(keep):
            if self.v2 and keep is None and self._file("pids", "cgroup.kill").exists():
                self._file("pids", "cgroup.kill").write_text("1")
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            if time.monotonic() > deadline:
                return False
            time.sleep(0.001)
        return True

    def destroy(self) -> None:
        self.kill_all()
        for d in self.dirs.values():
            try:
                d.rmdir()
            except OSError:
                pass


def _field(text: str, key: str) -> int:
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == key:
            return int(parts[1])
    return 0
