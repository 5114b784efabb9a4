"""Fault points: named places in the run where a fault test can stop it, to SIGKILL it exactly there.

`fault_point(where, name)` returns at once unless the environment variable KPOP_FAULT_POINT matches
`name` (equal, or an fnmatch pattern such as `rollout:*:12:0:turn_1_generated`) and no marker is in
`where` yet; then it writes `<where>/fault_point` (the name reached, then the pid of the process
that reached it, one per line) and blocks until that process is killed. A test sets the variable
for the run it starts, waits for the marker to appear and kills the run, or only the process the
marker names: the kill lands at that point whatever the machine's load, which polling for a
short-lived file cannot promise. A point fires once per marker: a replacement of the killed
process that reaches the same point goes on while the marker is there (the test removes it before
it sets the next point). Ray actors inherit the variables from the driver that starts the local
Ray instance, so points inside actors (the learner's checkpoint writer, environment workers) work
the same way. Points with no run directory at hand (environment workers) take `where` None: the
marker goes to $KPOP_FAULT_DIR.

Names: "step_<NNNNNN>:<point>" (kpop.launch.checkpoint: learner_saved, files_written, set_aside (a
step saved again: the older folder moved aside, the new one not yet renamed), renamed, linked;
kpop.learner.checkpoint.save_checkpoint: weights_written);
"rollout:<group_id>:<sample>:turn_<k>_generated" (kpop.rollout.env_worker: an episode's k-th model
turn generated, its environment step not yet run).
"""

from __future__ import annotations

import fnmatch
import os
import time
from dataclasses import dataclass
from pathlib import Path

ENV = "KPOP_FAULT_POINT"
DIR_ENV = "KPOP_FAULT_DIR"
MARKER = "fault_point"


@dataclass(frozen=True)
class Reached:
    name: str
    pid: int


def fault_point(where: str | Path | None, name: str) -> None:
    pattern = os.environ.get(ENV)
    if not pattern or not fnmatch.fnmatchcase(name, pattern):
        return
    if where is None:
        where = os.environ.get(DIR_ENV)
        if not where:
            raise RuntimeError(f"fault point {name!r} matches {ENV} but {DIR_ENV} names no directory for its marker")
    marker = Path(where, MARKER)
    if marker.exists():  # fired already: the process that reached it first was the one to kill
        return
    tmp = Path(where, f"{MARKER}.{os.getpid()}.tmp")
    tmp.write_text(f"{name}\n{os.getpid()}\n")
    tmp.replace(marker)  # appears with its content: a test may read it the moment it exists
    while True:  # the test that set the variable kills the process now
        time.sleep(3600)


def read_marker(path: str | Path) -> Reached:
    name, pid = Path(path).read_text().split()
    return Reached(name, int(pid))
