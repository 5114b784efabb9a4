"""`workflow`: multi-step jobs over several stateful tools (files, an SQLite database, a calendar).

The model gets one job in plain language and the tools; its last turn (no tool call) ends the
episode. The reward is 1.0 when the workspace's final snapshot equals the expected one exactly
(files, tables and employees, calendar events), else 0.0; the parts say which of the three matched.
The reference solver replays the generator's tool calls, then says it is done.

Difficulty options: `kinds` (which jobs are drawn; envs/families/workflow/tasks.py lists them) and
`all_tools` (offer all seven tools, or only those the job's reference plan calls: fewer distractor
tools and a shorter prompt). `reference_read_rate` is the share of tasks on which the reference
solver makes the job's first call, the one that reads its input (the request file, the query, the
day's events); on the others it skips it and acts at once, correctly (it knows the workspace),
which a model cannot imitate: cold-start data with a low rate teaches a plausible but worse habit,
acting without reading, that RL can unlearn from reward.
"""

from __future__ import annotations

import random
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from kpop.envs.families.workflow.backend import Workspace
from kpop.envs.families.workflow.tasks import KINDS, make_task
from kpop.envs.registry import register_env
from kpop.envs.tool_env import Episode, ToolEnv, Verdict, tool_call_text
from kpop.envs.tools import Tool, params

SYSTEM = "You operate a workspace with files, an SQLite database and a calendar. Do the job with the tools, then say Done."
_DATE = {"type": "string", "maxLength": 10, "description": "YYYY-MM-DD"}
_HOUR = {"type": "integer", "description": "0-24"}


@register_env("workflow")
class WorkflowEnv(ToolEnv):
    family = "workflow"

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")
        max_turns: int = Field(12, ge=2, le=64, description="Model turns before truncation.")
        kinds: list[Literal[KINDS]] = Field(list(KINDS), min_length=1, description="Job kinds to draw from (meeting_from_file is the shortest).")
        all_tools: bool = Field(True, description="Offer all seven tools; false: only the tools the job's reference plan calls.")
        reference_read_rate: float = Field(1.0, ge=0.0, le=1.0, description="Share of tasks on which the reference solver makes the job's first, reading call; on the others it acts at once, correctly, without reading.")

    def __init__(self, max_turns: int = 12, kinds: list[str] | tuple[str, ...] = KINDS, all_tools: bool = True,
                 reference_read_rate: float = 1.0) -> None:
        super().__init__(max_turns=max_turns)
        unknown = set(kinds) - set(KINDS)
        if unknown or not kinds:
            raise ValueError(f"kinds must be a non-empty subset of {KINDS}; unknown: {sorted(unknown)}")
        self.kinds, self.all_tools, self.reference_read_rate = tuple(kinds), all_tools, reference_read_rate
        self.workspace = Workspace()
        self.needed: set[str] = set()

    def build(self, seed: int, rng: random.Random) -> Episode:
        task = make_task(rng, self.kinds)
        self.workspace = task.workspace
        self.needed = {name for name, _ in task.calls}
        # its own stream, so the rate leaves each seed's job unchanged
        reads = random.Random(f"workflow-reference:{seed}").random() < self.reference_read_rate
        calls = task.calls if reads else task.calls[1:]
        plan = [tool_call_text(name, args) for name, args in calls] + ["Done."]
        return Episode(f"workflow-{seed}", SYSTEM, task.request, plan, reference_calls=task.calls, facts={"expected": task.expected, "kind": task.kind})

    def tools(self) -> list[Tool]:
        return [t for t in self._all_tools() if self.all_tools or t.name in self.needed]

    def _all_tools(self) -> list[Tool]:
        w = self.workspace
        return [
            Tool("list_files", "List file paths starting with a prefix.", params([], prefix={"type": "string", "maxLength": 128}), w.list_files),
            Tool("read_file", "Read a file.", params(path={"type": "string", "maxLength": 128}), w.read_file),
            Tool("write_file", "Create or overwrite a file.", params(path={"type": "string", "maxLength": 128}, content={"type": "string", "maxLength": 8192}), w.write_file),
            Tool("sql", "Run one SQLite statement on the database (table employees(id, name, department, salary)).",
                 params(query={"type": "string", "maxLength": 4096}), w.sql),
            Tool("list_events", "Calendar events on a date.", params(date=_DATE), w.list_events),
            Tool("create_event", "Create a calendar event; it must not overlap another on the same date.",
                 params(title={"type": "string", "maxLength": 200}, date=_DATE, start_hour=_HOUR, end_hour=_HOUR), w.create_event),
            Tool("delete_event", "Delete a calendar event by id.", params(event_id={"type": "integer"}), w.delete_event),
        ]

    async def verify(self, answer: str) -> Verdict:
        got, want = self.workspace.snapshot(), self.episode.facts["expected"]
        parts = {
            "files": float(got["files"] == want["files"]),
            "database": float(got["tables"] == want["tables"] and got["employees"] == want["employees"]),
            "calendar": float(got["events"] == want["events"]),
        }
        score = float(all(v == 1.0 for v in parts.values()))
        return Verdict(score, parts, {"kind": self.episode.facts["kind"]})
