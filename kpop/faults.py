"""Fault points: named places in the run where a fault test can stop it, to SIGKILL it exactly there.

`fault_point(where, name)` returns at once unless the environment variable KPOP_FAULT_POINT equals
`name`; then it writes `<where>/fault_point` (holding the name) and blocks until the process is
killed. A test sets the variable for the run it starts, waits for the file to appear and kills
the run: the kill lands at that point whatever the machine's load, which polling for a short-lived
file cannot promise. Ray actors inherit the variable from the driver that starts the local Ray
instance, so points inside actors (the learner's checkpoint writer) work the same way.

Names: "checkpoint:<step>:<point>" (kpop.launch.checkpoint: learner_saved, files_written, renamed, linked;
kpop.learner.checkpoint.save_checkpoint: weights_written).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

ENV = "KPOP_FAULT_POINT"
MARKER = "fault_point"


def fault_point(where: str | Path, name: str) -> None:
    if os.environ.get(ENV) != name:
        return
    tmp = Path(where, MARKER + ".tmp")
    tmp.write_text(name)
    tmp.replace(Path(where, MARKER))  # appears with its content: a test may read it the moment it exists
    while True:  # the test that set the variable kills the process now
        time.sleep(3600)
