"""Task generator for the workflow family: a seeded workspace and one multi-step job across tools.

Kinds (each touches at least two tools):
- meeting_from_file: read a request file, create the calendar event it describes;
- report_from_sql: query a department's employees, write their sorted names to a file;
- hires_to_sql: read a CSV file, insert its rows into the employees table;
- first_free_slot: list a day's events, book an hour at the earliest free slot in 9-17;
- clear_day: list a day's events, delete them all, write their titles to a file.
The expected snapshot is computed here from plain Python data (never through the tools), so the
reference plan, which runs through the tools, is validated against an independent oracle.
"""

from __future__ import annotations

import copy
import random
from dataclasses import dataclass
from typing import Any

from kpop.envs.families.workflow.backend import Workspace

_NAMES = ["Abebe", "Birgit", "Carlos", "Deniz", "Elif", "Femi", "Greta", "Hiro", "Ines", "Jonas", "Kaveh", "Liam", "Mira", "Nadia", "Omar", "Priya", "Quinn", "Rosa"]
_DEPTS = ["sales", "research", "finance", "support"]
_TITLES = ["design review", "budget sync", "hiring panel", "customer call", "retro", "planning"]
KINDS = ("meeting_from_file", "report_from_sql", "hires_to_sql", "first_free_slot", "clear_day")
SCHEMA = "CREATE TABLE employees (id INTEGER PRIMARY KEY, name TEXT NOT NULL, department TEXT NOT NULL, salary INTEGER NOT NULL);"


@dataclass
class WorkflowTask:
    workspace: Workspace
    request: str
    calls: list[tuple[str, dict[str, Any]]]
    expected: dict[str, Any]
    kind: str


def _workspace(rng: random.Random) -> tuple[Workspace, list[tuple[str, str, int]], list[str]]:
    ws = Workspace(SCHEMA)
    staff = [(n, rng.choice(_DEPTS), rng.randrange(40, 150) * 1000) for n in rng.sample(_NAMES, 10)]
    ws.db.executemany("INSERT INTO employees (name, department, salary) VALUES (?, ?, ?)", staff)
    ws.db.commit()
    dates = [f"2025-{rng.randint(1, 12):02d}-{d:02d}" for d in rng.sample(range(1, 28), 3)]
    for date in dates:
        hour = 9
        for _ in range(rng.randint(1, 3)):
            hour += rng.randint(0, 2)
            if hour >= 16:
                break
            ws.create_event(rng.choice(_TITLES), date, hour, hour + 1)
            hour += 1
    ws.files["/README.txt"] = "Shared workspace. Reports go under /reports/."
    return ws, staff, dates


def make_task(rng: random.Random, kinds: tuple[str, ...] = KINDS) -> WorkflowTask:
    """One job of a kind drawn from `kinds` (taken in KINDS order, so all kinds draw as they always did)."""
    ws, staff, dates = _workspace(rng)
    kind = rng.choice([k for k in KINDS if k in kinds])
    date = rng.choice(dates)
    day = ws.list_events(date)
    if kind == "meeting_from_file":
        title, start = rng.choice(_TITLES) + " follow-up", 17 + rng.randint(0, 2)
        ws.files["/inbox/request.txt"] = f"Please book '{title}' on {date} from {start}:00 to {start + 1}:00."
        calls = [("read_file", {"path": "/inbox/request.txt"}), ("create_event", {"title": title, "date": date, "start_hour": start, "end_hour": start + 1})]
        request = "Read /inbox/request.txt and add the meeting it asks for to the calendar."
        return _finish(ws, request, calls, kind, events=[(date, start, start + 1, title)])
    if kind == "report_from_sql":
        dept = rng.choice(sorted({d for _, d, _ in staff}))
        names = sorted(n for n, d, _ in staff if d == dept)
        path = f"/reports/{dept}.txt"
        calls = [("sql", {"query": f"SELECT name FROM employees WHERE department = '{dept}' ORDER BY name"}), ("write_file", {"path": path, "content": "\n".join(names) + "\n"})]
        request = f"Write the names of all employees in the {dept} department, sorted alphabetically, one per line, to {path}."
        return _finish(ws, request, calls, kind, files={path: "\n".join(names)})
    if kind == "hires_to_sql":
        hires = [(n, rng.choice(_DEPTS), rng.randrange(40, 150) * 1000) for n in rng.sample([n for n in _NAMES if n not in {s[0] for s in staff}], 2)]
        ws.files["/data/new_hires.csv"] = "name,department,salary\n" + "".join(f"{n},{d},{s}\n" for n, d, s in hires)
        values = ", ".join(f"('{n}', '{d}', {s})" for n, d, s in hires)
        calls = [("read_file", {"path": "/data/new_hires.csv"}), ("sql", {"query": f"INSERT INTO employees (name, department, salary) VALUES {values}"})]
        request = "Add every person listed in /data/new_hires.csv (columns name, department, salary) to the employees table."
        return _finish(ws, request, calls, kind, employees=hires)
    if kind == "first_free_slot":
        title = rng.choice(_TITLES)
        busy = {h for e in day for h in range(e["start_hour"], e["end_hour"])}
        start = min(h for h in range(9, 17) if h not in busy)
        calls = [("list_events", {"date": date}), ("create_event", {"title": title, "date": date, "start_hour": start, "end_hour": start + 1})]
        request = f"Book a one-hour '{title}' on {date} at the earliest whole hour between 9:00 and 17:00 that is free."
        return _finish(ws, request, calls, kind, events=[(date, start, start + 1, title)])
    path = f"/notes/cancelled-{date}.txt"
    calls = [("list_events", {"date": date})] + [("delete_event", {"event_id": e["event_id"]}) for e in day]
    calls.append(("write_file", {"path": path, "content": "\n".join(e["title"] for e in day) + "\n"}))
    request = f"Cancel every calendar event on {date} and write their titles, in order of start time, one per line, to {path}."
    return _finish(ws, request, calls, kind, files={path: "\n".join(e["title"] for e in day)}, drop_date=date)


def _finish(ws: Workspace, request: str, calls: list, kind: str, events=(), files=None, employees=(), drop_date: str | None = None) -> WorkflowTask:
    expected = copy.deepcopy(ws.snapshot())
    expected["events"] = sorted([e for e in expected["events"] if e[0] != drop_date] + list(events))
    expected["files"].update(files or {})
    expected["employees"] = sorted(expected["employees"] + list(employees))
    return WorkflowTask(ws, request, calls, expected, kind)
