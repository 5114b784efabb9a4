"""Stateful tools of the workflow family: a small file store, an SQLite database and a calendar.

Invariants:
- every operation either succeeds or raises ToolError with the state unchanged;
- the database is in memory, one statement per call; ATTACH/DETACH are refused by an authorizer,
  strings and blobs are capped (SQLITE_LIMIT_LENGTH) and a statement is interrupted after
  `SQL_BUDGET_S`, so no query can touch the disk or run without bound;
- `snapshot()` is the state the verifier compares: file contents (trailing whitespace dropped),
  the set of tables with the employees' rows, and the calendar events without their ids;
- a Workspace pickles (the database travels as its SQL dump).
"""

from __future__ import annotations

import re
import sqlite3
import time
from typing import Any

from kpop.envs.tools import ToolError

SQL_BUDGET_S = 2.0
MAX_ROWS = 100
MAX_FILES = 64
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_PATH = re.compile(r"^/[A-Za-z0-9_./-]{1,127}$")


class Workspace:
    def __init__(self, schema_sql: str = "") -> None:
        self.files: dict[str, str] = {}
        self.events: dict[int, dict[str, Any]] = {}
        self.next_event = 1
        self._connect(schema_sql)

    def _connect(self, script: str) -> None:
        self.db = sqlite3.connect(":memory:", check_same_thread=False)
        self.db.executescript(script)
        self.db.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, 1_000_000)
        self.db.set_authorizer(lambda action, *_: sqlite3.SQLITE_DENY if action in (sqlite3.SQLITE_ATTACH, sqlite3.SQLITE_DETACH) else sqlite3.SQLITE_OK)

    def __getstate__(self) -> dict[str, Any]:
        state = {k: v for k, v in self.__dict__.items() if k != "db"}
        state["dump"] = "\n".join(self.db.iterdump())
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        dump = state.pop("dump")
        self.__dict__.update(state)
        self._connect(dump)

    # files
    def list_files(self, prefix: str = "/") -> list[str]:
        return sorted(p for p in self.files if p.startswith(prefix))

    def read_file(self, path: str) -> str:
        if path not in self.files:
            raise ToolError(f"no file {path[:128]!r}")
        return self.files[path]

    def write_file(self, path: str, content: str) -> str:
        if not _PATH.match(path) or ".." in path:
            raise ToolError("path must be absolute, at most 128 characters of letters, digits, _ . / -, and no '..'")
        if path not in self.files and len(self.files) >= MAX_FILES:
            raise ToolError(f"at most {MAX_FILES} files")
        self.files[path] = content
        return f"wrote {len(content)} characters to {path}"

    # database
    def sql(self, query: str) -> dict[str, Any]:
        deadline = time.monotonic() + SQL_BUDGET_S
        self.db.set_progress_handler(lambda: int(time.monotonic() > deadline), 10_000)
        try:
            with self.db:  # one transaction: a failing statement leaves no partial change
                cursor = self.db.execute(query)
                rows = cursor.fetchmany(MAX_ROWS + 1)
        except (sqlite3.Error, sqlite3.Warning, ValueError, OverflowError) as exc:
            raise ToolError(f"SQL error: {exc}") from None
        finally:
            self.db.set_progress_handler(None, 0)
        if cursor.description is None:
            return {"rows_changed": cursor.rowcount}
        columns = [d[0] for d in cursor.description]
        return {"columns": columns, "rows": [list(r) for r in rows[:MAX_ROWS]], "more_rows": len(rows) > MAX_ROWS}

    # calendar
    def list_events(self, date: str) -> list[dict[str, Any]]:
        return [{"event_id": i, **e} for i, e in sorted(self.events.items()) if e["date"] == date]

    def create_event(self, title: str, date: str, start_hour: int, end_hour: int) -> dict[str, Any]:
        if not _DATE.match(date):
            raise ToolError("date must be YYYY-MM-DD")
        if not (0 <= start_hour < end_hour <= 24) or not title.strip():
            raise ToolError("need a title and 0 <= start_hour < end_hour <= 24")
        clash = [i for i, e in self.events.items() if e["date"] == date and start_hour < e["end_hour"] and e["start_hour"] < end_hour]
        if clash:
            raise ToolError(f"overlaps event(s) {clash}")
        event_id, self.next_event = self.next_event, self.next_event + 1
        self.events[event_id] = {"title": title, "date": date, "start_hour": start_hour, "end_hour": end_hour}
        return {"event_id": event_id}

    def delete_event(self, event_id: int) -> str:
        if self.events.pop(event_id, None) is None:
            raise ToolError(f"no event {event_id}")
        return f"deleted event {event_id}"

    def snapshot(self) -> dict[str, Any]:
        tables = [r[0] for r in self.db.execute("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name")]
        employees = sorted(tuple(r) for r in self.db.execute("SELECT name, department, salary FROM employees")) if "employees" in tables else None
        events = sorted((e["date"], e["start_hour"], e["end_hour"], e["title"]) for e in self.events.values())
        return {"files": {p: c.rstrip() for p, c in self.files.items()}, "tables": tables, "employees": employees, "events": events}
