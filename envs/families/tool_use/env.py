"""`tool_use`: function calling against a stateful customer-service simulator (orders, refunds, policies).

The model serves one customer request with typed tools; its last turn (no tool call) is the reply
to the customer. Reward = state_ok * answer_ok * (1 - w + w * agreement): the final orders must
equal the expected state exactly, the reply must mention what the task requires (a policy code
when a request is refused, the order id and status when asked), and `agreement` is the weighted
LCS F1 of the tool calls made against the reference sequence (w = `sequence_weight`), so
unnecessary calls cost a little and a wrong final state costs everything.

Difficulty options: `kinds` (which requests are drawn), `all_tools` (offer all seven tools, or only
those the request's reference plan calls: fewer distractor tools and a prompt that fits a small
model's context), `customers` and `orders_per_customer` (the store's size: the other orders a
status question must pick the most recent one from). `reference_lookup_rate` is the share of the
requests that change nothing (status, refund_denied) on which the reference solver looks things
up through the tools; on the others it answers at once, correctly (it knows the store), which a
model cannot imitate: cold-start data with a low rate teaches a plausible but worse habit,
answering without looking, that RL can unlearn from reward. (With `sequence_weight` above 0 the
skipped calls cost agreement, so such replies score below the cold start's verified threshold.)
"""

from __future__ import annotations

import random
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from kpop.envs.families.tool_use.backend import CANCEL_REASONS, POLICIES, Store
from kpop.envs.families.tool_use.tasks import KINDS, make_task
from kpop.envs.registry import register_env
from kpop.envs.rewards.tool_sequence import tool_sequence_agreement
from kpop.envs.tool_env import Episode, ToolEnv, Verdict, tool_call_text
from kpop.envs.tools import Tool, params

SYSTEM = ("You are a customer-service agent. Identify the customer by email first, check the order and the "
          "policies, make only the changes the customer asks for and the policies allow, then reply to the customer. "
          "If a policy forbids the request, quote the policy code in your reply.")
_ORDER = {"type": "string", "maxLength": 64}


@register_env("tool_use")
class ToolUseEnv(ToolEnv):
    family = "tool_use"

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")
        sequence_weight: float = Field(0.25, ge=0.0, le=1.0, description="Weight of tool-sequence agreement in the reward.")
        max_turns: int = Field(10, ge=2, le=64, description="Model turns before truncation.")
        kinds: list[Literal[KINDS]] = Field(list(KINDS), min_length=1, description="Request kinds to draw from.")
        all_tools: bool = Field(True, description="Offer all seven tools; false: only the tools the request's reference plan calls.")
        customers: int = Field(5, ge=1, le=50, description="Customers in the store.")
        orders_per_customer: int = Field(3, ge=1, le=10, description="Orders of each customer.")
        reference_lookup_rate: float = Field(1.0, ge=0.0, le=1.0, description="Share of the requests that change nothing (status, refund_denied) on which the reference solver calls the tools; on the others it answers at once, correctly.")

    def __init__(self, sequence_weight: float = 0.25, max_turns: int = 10, kinds: list[str] | tuple[str, ...] = KINDS,
                 all_tools: bool = True, customers: int = 5, orders_per_customer: int = 3, reference_lookup_rate: float = 1.0) -> None:
        super().__init__(max_turns=max_turns)
        unknown = set(kinds) - set(KINDS)
        if unknown or not kinds:
            raise ValueError(f"kinds must be a non-empty subset of {KINDS}; unknown: {sorted(unknown)}")
        self.sequence_weight, self.kinds, self.all_tools = sequence_weight, tuple(kinds), all_tools
        self.customers, self.orders_per_customer, self.reference_lookup_rate = customers, orders_per_customer, reference_lookup_rate
        self.store = Store()
        self.needed: set[str] = set()

    def build(self, seed: int, rng: random.Random) -> Episode:
        task = make_task(rng, self.kinds, self.customers, self.orders_per_customer)
        self.store = task.store
        self.needed = {name for name, _ in task.calls}
        # its own stream, so the rate leaves each seed's request unchanged
        looks = random.Random(f"tool_use-reference:{seed}").random() < self.reference_lookup_rate
        calls = task.calls if looks or task.expected != task.store.state() else []
        plan = [tool_call_text(name, args) for name, args in calls] + [task.answer]
        facts = {"expected": task.expected, "must_mention": task.must_mention, "kind": task.kind}
        return Episode(f"tool_use-{seed}", SYSTEM, task.request, plan, reference_calls=task.calls, facts=facts)

    def tools(self) -> list[Tool]:
        return [t for t in self._all_tools() if self.all_tools or t.name in self.needed]

    def _all_tools(self) -> list[Tool]:
        s = self.store
        return [
            Tool("find_customer", "Identify the customer by email.", params(email={"type": "string", "maxLength": 200}), s.find_customer),
            Tool("list_orders", "List the identified customer's orders.", params(customer_id={"type": "string", "maxLength": 32}), s.list_orders),
            Tool("get_order", "Details of one of the identified customer's orders.", params(order_id=_ORDER), s.get_order),
            Tool("get_policy", "The store policy on a topic.", params(topic={"type": "string", "enum": sorted(POLICIES)}), s.get_policy),
            Tool("cancel_order", "Cancel a processing order (refunds it in full).",
                 params(order_id=_ORDER, reason={"type": "string", "enum": CANCEL_REASONS}), s.cancel_order),
            Tool("refund_items", "Refund items of a delivered order.",
                 params(order_id=_ORDER, skus={"type": "array", "items": {"type": "string", "maxLength": 32}, "maxItems": 10}), s.refund_items),
            Tool("update_address", "Change the shipping address of a processing order.",
                 params(order_id=_ORDER, address={"type": "string", "maxLength": 200}), s.update_address),
        ]

    async def verify(self, answer: str) -> Verdict:
        facts = self.episode.facts
        state_ok = float(self.store.state() == facts["expected"])
        missing = [m for m in facts["must_mention"] if m.lower() not in answer.lower()]
        answer_ok = float(bool(answer.strip()) and not missing)
        agreement = tool_sequence_agreement(self.view.calls, self.episode.reference_calls or [])
        score = state_ok * answer_ok * (1 - self.sequence_weight + self.sequence_weight * agreement)
        details = {"kind": facts["kind"], "missing_from_answer": missing}
        return Verdict(score, {"state": state_ok, "answer": answer_ok, "agreement": agreement}, details)
