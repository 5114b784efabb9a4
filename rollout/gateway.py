"""The training-time OpenAI gateway: an unmodified OpenAI-API agent harness generates rollouts.

The harness points its `openai` client at `{url}/sessions/{session_id}/v1` (or at `{url}/v1` with
the header `X-KPop-Session: {session_id}`); every request of a session is recorded, as token ids
with log-probs and policy versions, into one Trajectory (kpop.trajectory). The HTTP layer is the
same app as `kpop serve` (kpop.deploy.openai_api); only the prompt policy differs.

Append-only recording (invariant: a Trajectory's ids are exactly what the engine received and
produced, turn by turn):
- The first request of a segment is rendered with the chat template: mask-0 tokens.
- A later request must repeat the segment's conversation: the same tools, the same earlier
  messages, then the assistant reply the gateway returned (content and tool calls, compared as
  parsed values) and only new non-assistant messages (tool results, user turns). Only those new
  messages are rendered, as the template's suffix (ChatFormat.observation_ids), and appended to the
  recorded context (mask 0). So the prompt of turn k is the recorded context itself; the assistant
  reply is never decoded and re-tokenised.
- Generated tokens are appended with mask 1, the engine's log-probs and versions.
- A request that does not extend the segment (the harness rewrote, truncated or summarised the
  history, or changed tools) starts a new segment: a separate Trajectory of the same session,
  rendered from scratch. Such rewrites are counted per session and in `Gateway.rewrites`.
- Sessions take one request at a time and n = 1 (a session is one line of play).

The trainer opens sessions (`open_session`, optional: a first request opens one too), lets the
harness play, scores the episode and calls `finish(session_id, reward, parts)`, which returns the
session's Trajectories (one per segment) with the reward on each.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field

from fastapi import Request
from fastapi.responses import JSONResponse

from kpop.deploy.openai_api import schemas as S
from kpop.deploy.openai_api.app import create_app, serving, session_id
from kpop.deploy.openai_api.errors import APIError, bad_request
from kpop.deploy.openai_api.generation import Finished
from kpop.deploy.openai_api.prompting import as_env_message
from kpop.deploy.openai_api.service import ModelInfo, OpenAIService
from kpop.rollout.chat import ChatFormat
from kpop.rollout.engine import Engine
from kpop.trajectory import Trajectory, TrajectoryBuilder


def _args(raw: str):
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def message_key(m: S.ChatMessage | S.AssistantMessage) -> tuple:
    """What must be equal for a message to count as repeated (ids and formatting ignored)."""
    calls = tuple((c.function.name, json.dumps(_args(c.function.arguments), sort_keys=True))
                  for c in (m.tool_calls or []))
    text = m.text() if isinstance(m, S.ChatMessage) else (m.content or "")
    return (m.role, text, calls)


def tools_key(tools: list[S.ToolDef] | None) -> str:
    return json.dumps([t.model_dump(exclude_none=True) for t in tools or []], sort_keys=True)


@dataclass
class Segment:
    builder: TrajectoryBuilder
    tools: str
    history: list[tuple] = field(default_factory=list)  # message keys, assistant replies included
    turns: int = 0
    finish_reason: str = "stop"


class SessionRecorder:
    """The PromptPolicy of one session (see the module docstring for the rules)."""

    def __init__(self, sid: str, chat: ChatFormat, task_id: str = "", env_id: str = "", group_id: str = "") -> None:
        self.sid, self.chat = sid, chat
        self.task_id, self.env_id, self.group_id = task_id or sid, env_id or "gateway", group_id
        self.segments: list[Segment] = []
        self.rewrites = 0
        self._pending: tuple[Segment, list[int], list[tuple]] | None = None

    def check(self, req: S.ChatCompletionRequest) -> None:
        if req.n != 1:
            raise bad_request("Gateway sessions record one line of play: n must be 1.", "n", "unsupported_value")

    def _extension(self, req: S.ChatCompletionRequest) -> list[S.ChatMessage] | None:
        """The new messages if `req` extends the current segment, else None."""
        if not self.segments:
            return None
        seg = self.segments[-1]
        keys = [message_key(m) for m in req.messages]
        if tools_key(req.tools) != seg.tools or keys[: len(seg.history)] != seg.history:
            return None
        new = req.messages[len(seg.history):]
        if not new or any(m.role == "assistant" for m in new):
            return None
        return new

    def prompt_ids(self, req: S.ChatCompletionRequest, render: Callable[[], list[int]]) -> list[int]:
        keys = [message_key(m) for m in req.messages]
        new = self._extension(req)
        if new is not None:
            seg = self.segments[-1]
            suffix = self.chat.observation_ids([as_env_message(m) for m in new])
            self._pending = (seg, suffix, keys)
            return list(seg.builder.token_ids) + suffix
        ids = render()
        seg = Segment(TrajectoryBuilder(self.task_id, self.env_id, self.group_id), tools_key(req.tools))
        self._pending = (seg, ids, keys)
        return ids

    def record(self, req: S.ChatCompletionRequest, prompt_ids: list[int], out: Finished,
               message: S.AssistantMessage) -> None:
        if self._pending is None:
            return
        seg, context, keys = self._pending
        self._pending = None
        if not self.segments or seg is not self.segments[-1]:
            if self.segments:
                self.rewrites += 1
            self.segments.append(seg)
        seg.builder.add_context(context)
        seg.builder.add_generated(out.token_ids, out.logprobs, out.versions)
        seg.history = keys + [message_key(message)]
        seg.turns += 1
        seg.finish_reason = out.finish_reason

    def trajectories(self, reward: float = 0.0, parts: dict[str, float] | None = None) -> list[Trajectory]:
        from kpop.trajectory import Timing

        return [s.builder.build(reward, dict(parts or {}), s.turns, s.finish_reason, Timing())
                for s in self.segments if s.turns]

    def summary(self) -> dict:
        return {"session_id": self.sid, "segments": [{"tokens": len(s.builder), "turns": s.turns,
                                                      "generated": sum(s.builder.loss_mask)} for s in self.segments],
                "rewrites": self.rewrites}


class Gateway:
    """The gateway app over one engine (in-process). Drive it from the loop the engine runs on."""

    def __init__(self, engine: Engine, tokenizer, model_name: str = "policy", max_model_len: int = 2048) -> None:
        self.chat = ChatFormat(tokenizer)
        self.service = OpenAIService(engine, tokenizer, ModelInfo(model_name, "gateway", max_model_len, "gateway"))
        self.sessions: dict[str, SessionRecorder] = {}
        self.app = create_app(self.service, policy_for=self._policy, prefixes=["", "/sessions/{session_id}"],
                              title="KPop training gateway")
        self.app.add_api_route("/sessions/{session_id}", self._summary, methods=["GET"])

    def _policy(self, request: Request) -> SessionRecorder:
        sid = session_id(request)
        if not sid:
            raise bad_request("No session: use the base URL /sessions/{session_id}/v1 or the X-KPop-Session header.",
                              None, "missing_session")
        return self.sessions.get(sid) or self.open_session(sid)

    async def _summary(self, session_id: str) -> JSONResponse:
        if session_id not in self.sessions:
            raise APIError(404, f"No session {session_id!r}.", "session_id", "session_not_found")
        return JSONResponse(self.sessions[session_id].summary())

    def open_session(self, sid: str | None = None, task_id: str = "", env_id: str = "", group_id: str = "") -> SessionRecorder:
        sid = sid or uuid.uuid4().hex
        if sid in self.sessions:
            raise ValueError(f"session {sid!r} is already open")
        self.sessions[sid] = SessionRecorder(sid, self.chat, task_id, env_id, group_id)
        return self.sessions[sid]

    def finish(self, sid: str, reward: float = 0.0, parts: dict[str, float] | None = None) -> list[Trajectory]:
        """Close the session and return its Trajectories (one per segment), rewarded."""
        return self.sessions.pop(sid).trajectories(reward, parts)

    @property
    def rewrites(self) -> int:
        return sum(s.rewrites for s in self.sessions.values())

    def running(self, host: str = "127.0.0.1", port: int = 0) -> AbstractAsyncContextManager[str]:
        """Serve on the current event loop; `async with gateway.running() as url` (port 0: a free port)."""
        return serving(self.app, host, port)
