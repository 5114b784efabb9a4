"""The private work directory of one execution: created, filled, harvested, removed.

Invariants: input paths are relative and stay inside the directory (no `..`, no absolute path),
so a request cannot write on the host; the directory is mode 0700 and owned by the uid the
untrusted code runs as, so concurrent sandboxes (other uids) cannot read it; harvesting never
follows a symlink (a link planted by the code to /etc/shadow or /root yields nothing), reads
regular files only and stops at the byte budget; `remove` always deletes the whole tree.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path, PurePosixPath

STDIN_FILE = ".sandbox-stdin"   # where the Docker backends put a request's stdin (launcher.py has its own copy)


def request_files(files: Mapping[str, bytes | str], code: str | None, stdin: bytes | str | None = None) -> dict[str, bytes | str]:
    """The files an execution starts with: the request's files, its code as main.py, its stdin
    (only backends that feed stdin from a file pass it) as STDIN_FILE."""
    out = dict(files)
    if code is not None:
        out["main.py"] = code
    if stdin is not None:
        out[STDIN_FILE] = stdin
    return out


def default_base() -> Path:
    """tmpfs when there is one (cheap), else the system temp dir; created 0711 and owned by us."""
    shm = Path("/dev/shm")
    root = shm if shm.is_dir() and os.access(shm, os.W_OK) else Path(tempfile.gettempdir())
    base = root / f"kpop-sandbox-{os.getuid()}"
    base.mkdir(mode=0o711, exist_ok=True)
    return base


def safe_relpath(name: str) -> PurePosixPath:
    path = PurePosixPath(name)
    if not name or path.is_absolute() or ".." in path.parts or str(path) in (".", ""):
        raise ValueError(f"sandbox file name must be a relative path inside the work dir: {name!r}")
    return path


def create(base: Path, files: Mapping[str, bytes | str], owner: int | None) -> Path:
    """A fresh directory holding `files`, owned (with its content) by uid/gid `owner` if given."""
    workdir = Path(tempfile.mkdtemp(prefix="w", dir=base))
    fill(workdir, files, owner)
    return workdir


def fill(workdir: Path, files: Mapping[str, bytes | str], owner: int | None) -> None:
    """Write `files` into the existing `workdir` and give it, with its content, to `owner` if given."""
    for name, content in files.items():
        rel = safe_relpath(name)
        target = workdir.joinpath(*rel.parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content.encode() if isinstance(content, str) else bytes(content))
    if owner is not None:
        for dirpath, dirnames, filenames in os.walk(workdir):
            for entry in [dirpath, *(os.path.join(dirpath, n) for n in dirnames + filenames)]:
                os.lchown(entry, owner, owner)


def harvest(workdir: Path, patterns: Iterable[str], budget: int) -> dict[str, bytes]:
    """Regular files matching the glob `patterns`, relative names -> bytes, within `budget` bytes."""
    found: dict[str, bytes] = {}
    for pattern in patterns:
        safe_relpath(pattern)
        for path in sorted(workdir.glob(pattern)):
            rel = path.relative_to(workdir).as_posix()
            if rel in found or not _is_plain_file_inside(workdir, path):
                continue
            data = _read_nofollow(path, budget + 1)
            if data is None or len(data) > budget:
                continue
            budget -= len(data)
            found[rel] = data
    return found


def _is_plain_file_inside(workdir: Path, path: Path) -> bool:
    # Every component must be a real directory: a symlinked parent could point anywhere.
    current = workdir
    for part in path.relative_to(workdir).parts:
        current = current / part
        mode = os.lstat(current).st_mode
        if stat.S_ISLNK(mode):
            return False
    return stat.S_ISREG(os.lstat(path).st_mode)


def _read_nofollow(path: Path, limit: int) -> bytes | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return os.read(fd, limit)
    finally:
        os.close(fd)


def remove(workdir: Path) -> None:
    # The code may have removed its own write permission on subdirectories; restore then delete.
    def onerror(func, path, _exc):
        try:
            os.chmod(os.path.dirname(path), 0o700)
            func(path)
        except OSError:
            pass

    shutil.rmtree(workdir, onerror=onerror)


def empty(directory: Path) -> None:
    """Remove everything inside `directory`, keeping the directory itself (a mount point stays valid)."""
    with os.scandir(directory) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                remove(Path(entry.path))
            else:
                os.unlink(entry.path)
