"""`workflow`: multi-step jobs over several stateful tools (files, an SQLite database, a calendar).

The model gets one job in plain language and the tools; its last turn (no tool call) ends the
episode. The reward is 1.0 when the workspace's final snapshot equals the expected one exactly
(files, tables and employees, calendar events), else 0.0; the parts say which of the three matched.
The reference solver replays the generator's tool calls, then says it is done.
"""

from __future__ import annotations

import random

from pydantic import BaseModel, ConfigDict, Field

from kpop.envs.families.workflow.backend import Workspace
from kpop.envs.families.workflow.tasks import make_task
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

    def __init__(self, max_turns: int = 12) -> None:
        super().__init__(max_turns=max_turns)
        self.workspace = Workspace()

    def build(self, seed: int, rng: random.Random) -> Episode:
        task = make_task(rng)
        self.workspace = task.workspace
        plan = [tool_call_text(name, args) for name, args in task.calls] + ["Done."]
        return Episode(f"workflow-{seed}", SYSTEM, task.request, plan, reference_calls=task.calls, facts={"expected": task.expected, "kind": task.kind})

    def tools(self) -> list[Tool]:
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
