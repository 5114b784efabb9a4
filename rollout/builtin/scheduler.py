"""Continuous batching: the synchronous core of the built-in engine.

Each `step(version)`:
1. decodes one token for every running sequence (one forward pass over the slot cache, each row
   at its own length),
2. retires the sequences that finished (their rows leave the cache at once: the last running row
   moves into the hole, so the running rows stay dense),
3. admits waiting sequences up to `max_batch` running, in priority order (sequences a weight update
   took off the cache first, then the lowest `priority`, ties in arrival order: the order vLLM's
   "priority" policy uses), prefilling those of equal context length together (no padding inside a
   prefill) and writing their state into free rows of the cache,
and returns a `StepEvent` per token produced, labelled with `version`.

Invariants:
- The cache holds each running sequence's context (prompt + output) except its last sampled token
  (`pending`), which the next decode step feeds: `lengths[i]` tokens in row i, which is
  `running[i]`. Rows [0, len(running)) are exactly the running ones.
- A finished or aborted sequence holds no cache rows after the step/abort that ended it; with
  nothing running the cache holds no memory.
- `invalidate()` (after a weight update) drops the cache and puts the running sequences back at
  the head of the queue (admitted before any sequence that has not started): they are prefilled again, prompt + output, under the new weights, so
  every later token is exactly what the new weights produce for that context.
- Finish rules, checked in this order on each new token (which is always kept in the output):
  a stop token id or EOS -> "stop"; a stop string appearing in the decoded output -> "stop";
  `max_tokens` reached -> "length"; the context reaching `max_model_len` -> "length".
The scheduler is not thread-safe: the engine calls `step`, `abort` and `invalidate` one at a time;
only `submit` (a deque append) may race with them.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import torch

from kpop.rollout.builtin.sampling import sample
from kpop.rollout.builtin.slots import CacheSpec, SlotCache
from kpop.rollout.engine import SamplingParams

RESERVE_FLOOR = 256  # columns a reallocation may reserve whatever the widest row (see `Scheduler._reserve`)


@dataclass
class Sequence:
    request_id: str
    prompt: list[int]
    params: SamplingParams
    generator: torch.Generator
    stop_ids: frozenset[int]
    output: list[int] = field(default_factory=list)
    priority: int = 0   # lower is admitted first
    arrival: int = 0    # ties in arrival order

    def admission_key(self) -> tuple[bool, int, int]:
        # a sequence with output was running (a weight update re-queued it): it goes first
        return (not self.output, self.priority, self.arrival)

    @property
    def context(self) -> list[int]:
        return self.prompt + self.output


@dataclass(frozen=True)
class StepEvent:
    request_id: str
    token_id: int
    logprob: float
    version: int
    finish_reason: str | None


class Scheduler:
    def __init__(self, adapter, max_batch: int, max_model_len: int, tokenizer=None) -> None:
        self.adapter = adapter
        self.max_batch = max_batch
        self.max_model_len = max_model_len
        self.tokenizer = tokenizer
        self.inbox: deque[Sequence] = deque()
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.lengths: list[int] = []  # cached tokens of running[i]
        self.cache: SlotCache | None = None  # built at the first prefill, from the state it returns
        self.generated_tokens = 0

    # ------------------------------------------------------------------ bookkeeping
    def submit(self, seq: Sequence) -> None:
        self.inbox.append(seq)

    def has_work(self) -> bool:
        return bool(self.inbox or self.waiting or self.running)

    def num_waiting(self) -> int:
        return len(self.inbox) + len(self.waiting)

    def cache_nbytes(self) -> int:
        cache = self.cache
        return 0 if cache is None else cache.nbytes()

    def _drain_inbox(self) -> None:
        while self.inbox:
            self.waiting.append(self.inbox.popleft())

    def abort(self, request_id: str) -> bool:
        """Forget `request_id` wherever it is; True if it was live. Its cache rows are freed."""
        self._drain_inbox()
        for seq in self.waiting:
            if seq.request_id == request_id:
                self.waiting.remove(seq)
                return True
        keep = [i for i, s in enumerate(self.running) if s.request_id != request_id]
        if len(keep) == len(self.running):
            return False
        self._keep_rows(keep)
        return True

    def invalidate(self) -> None:
        """Drop all cache; running sequences go back to the head of the queue, output kept."""
        self._drain_inbox()
        self.waiting.extendleft(reversed(self.running))
        self._drop_running()

    def clear(self) -> list[str]:
        """Drop everything (after an engine failure); returns the ids that were live."""
        self._drain_inbox()
        ids = [s.request_id for s in self.running] + [s.request_id for s in self.waiting]
        self.waiting = deque()
        self._drop_running()
        return ids

    def _drop_running(self) -> None:
        self.running, self.lengths = [], []
        if self.cache is not None:
            self.cache.release()

    def _keep_rows(self, keep: list[int]) -> None:
        """Keep the rows `keep` (ascending); rows past the new end fill the holes below it."""
        n = len(keep)
        if n == len(self.running):
            return
        kept = set(keep)
        holes = [i for i in range(n) if i not in kept]
        movers = [i for i in range(n, len(self.running)) if i in kept]
        for hole, src in zip(holes, movers):
            self.cache.move_row(src, hole, self.lengths[src])
            self.running[hole], self.lengths[hole] = self.running[src], self.lengths[src]
        del self.running[n:], self.lengths[n:]
        if n == 0:
            self.cache.release()

    # ------------------------------------------------------------------ the step
    def step(self, version: int) -> list[StepEvent]:
        self._drain_inbox()
        events: list[StepEvent] = []
        if self.running:
            width = max(self.lengths)
            if width + 1 > self.cache.col_cap:
                self.cache.ensure(len(self.running), width + 1, self._reserve(width + 1))
            device = self.cache.device
            pending = torch.tensor([s.output[-1] for s in self.running], device=device)
            lengths = torch.tensor(self.lengths, device=device)
            logits = self.adapter.decode(self.cache.tensors, lengths, width, pending)
            self.lengths = [n + 1 for n in self.lengths]
            alive = self._sample_into(self.running, logits, version, events)
            self._keep_rows(alive)
        self._admit(version, events)
        return events

    def _admit(self, version: int, events: list[StepEvent]) -> None:
        free = self.max_batch - len(self.running)
        if free <= 0 or not self.waiting:
            return
        ordered = sorted(self.waiting, key=Sequence.admission_key)
        batch, self.waiting = ordered[:free], deque(ordered[free:])
        groups: dict[int, list[Sequence]] = {}
        for seq in batch:
            groups.setdefault(len(seq.context), []).append(seq)
        for seqs in groups.values():
            ids = torch.tensor([s.context for s in seqs], device=_model_device(self.adapter))
            logits, state = self.adapter.prefill(ids)
            alive = self._sample_into(seqs, logits, version, events)
            if alive:
                self._store(state, alive, ids.shape[1], batch)
                self.running += [seqs[i] for i in alive]
                self.lengths += [ids.shape[1]] * len(alive)

    def _store(self, state: list[torch.Tensor], alive: list[int], width: int, admitted: list[Sequence]) -> None:
        if self.cache is None:
            specs = [CacheSpec(tuple(t.shape[1:]), d, t.dtype) for t, d in zip(state, self.adapter.col_dims)]
            self.cache = SlotCache(specs, self.max_batch, self.max_model_len, state[0].device)
        if len(alive) < state[0].shape[0]:
            idx = torch.tensor(alive, device=state[0].device)
            state = [t.index_select(0, idx) for t in state]
        self.cache.ensure(len(self.running) + len(alive), width, self._reserve(width, admitted))
        self.cache.write_rows(len(self.running), state)

    def _reserve(self, width: int, admitted: list[Sequence] = ()) -> int:
        """Columns to reserve when the cache is reallocated: what the running sequences and those
        being admitted can reach (prompt + max_tokens, at most `max_model_len`), up to 8x `width`
        or `RESERVE_FLOOR` columns, whichever is more. The bound keeps a long `max_tokens` from
        reserving its whole reach up front; the floor keeps short prompts from regrowing mid-batch
        (8-token prompts with 64 tokens each had 64 columns, then a copy into 128 at step 57: 0.3 s
        of a 64-row Llama batch's ~5 s)."""
        need = max((len(s.prompt) + s.params.max_tokens for s in [*self.running, *admitted]), default=0)
        return min(need, self.max_model_len, max(8 * width, RESERVE_FLOOR))

    def _sample_into(self, seqs: list[Sequence], logits: torch.Tensor, version: int, events: list[StepEvent]) -> list[int]:
        """Sample one token per sequence, record it, return the indices still running."""
        tokens, logprobs = sample(logits, [s.params for s in seqs], [s.generator for s in seqs])
        alive = []
        for i, (seq, tok, lp) in enumerate(zip(seqs, tokens, logprobs)):
            seq.output.append(tok)
            reason = self._finish_reason(seq, tok)
            events.append(StepEvent(seq.request_id, tok, lp, version, reason))
            if reason is None:
                alive.append(i)
        self.generated_tokens += len(tokens)
        return alive

    def _finish_reason(self, seq: Sequence, token: int) -> str | None:
        if token in seq.stop_ids:
            return "stop"
        if seq.params.stop and self._hits_stop_string(seq):
            return "stop"
        if len(seq.output) >= seq.params.max_tokens:
            return "length"
        if len(seq.prompt) + len(seq.output) >= self.max_model_len:
            return "length"
        return None

    def _hits_stop_string(self, seq: Sequence) -> bool:
        # Checked after every token, so a match found now was completed by the newest token.
        text = self.tokenizer.decode(seq.output, skip_special_tokens=True)
        return any(stop in text for stop in seq.params.stop)


def _model_device(adapter) -> torch.device:
    return next(adapter.model.parameters()).device
