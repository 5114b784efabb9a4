"""`tool_use`: function calling against a stateful customer-service simulator (orders, refunds, policies).

The model serves one customer request with typed tools; its last turn (no tool call) is the reply
to the customer. Reward = state_ok * answer_ok * (1 - w + w * agreement): the final orders must
equal the expected state exactly, the reply must mention what the task requires (a policy code
when a request is refused, the order id and status when asked), and `agreement` is the weighted
LCS F1 of the tool calls made against the reference sequence (w = `sequence_weight`), so
unnecessary calls cost a little and a wrong final state costs everything.
"""

from __future__ import annotations

import random

from pydantic import BaseModel, ConfigDict, Field

from kpop.envs.families.tool_use.backend import CANCEL_REASONS, POLICIES, Store
from kpop.envs.families.tool_use.tasks import make_task
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

    def __init__(self, sequence_weight: float = 0.25, max_turns: int = 10) -> None:
        super().__init__(max_turns=max_turns)
        self.sequence_weight = sequence_weight
        self.store = Store()

    def build(self, seed: int, rng: random.Random) -> Episode:
        task = make_task(rng)
        self.store = task.store
        plan = [tool_call_text(name, args) for name, args in task.calls] + [task.answer]
        facts = {"expected": task.expected, "must_mention": task.must_mention, "kind": task.kind}
        return Episode(f"tool_use-{seed}", SYSTEM, task.request, plan, reference_calls=task.calls, facts=facts)

    def tools(self) -> list[Tool]:
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
