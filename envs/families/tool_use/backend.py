"""The customer-service backend: customers, orders, products and the policies that bind them.

State is plain dicts (cheap to copy, pickle and compare). Every mutation goes through a method that
enforces the policies and raises ToolError, leaving the state untouched, when a request breaks one:
- a customer must be identified (`find_customer`) before their orders are read or changed, and
  only their own orders can be touched;
- cancel: only a `processing` order; it becomes `cancelled` and its total is refunded;
- refund: only items of a `delivered` order, within 30 days of delivery (60 for gold customers),
  each item at most once;
- address change: only while `processing`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from kpop.envs.tools import ToolError

REFUND_DAYS = {"standard": 30, "gold": 60}
POLICIES = {
    "cancel": "POL-CANCEL-1: an order can be cancelled only while its status is processing; the full total is refunded.",
    "refund": "POL-REFUND-2: delivered items can be refunded within 30 days of delivery (60 days for gold customers), each item once.",
    "address": "POL-ADDRESS-3: the shipping address can be changed only while the order is processing.",
}
POLICY_CODES = {topic: text.split(":")[0] for topic, text in POLICIES.items()}
CANCEL_REASONS = ["no_longer_needed", "ordered_by_mistake", "found_cheaper", "other"]


@dataclass
class Store:
    customers: dict[str, dict[str, Any]] = field(default_factory=dict)  # id -> {name, email, tier}
    orders: dict[str, dict[str, Any]] = field(default_factory=dict)  # id -> {customer_id, items, status, days, address, refunded}
    products: dict[str, dict[str, Any]] = field(default_factory=dict)  # sku -> {name, price}
    identified: str | None = None

    def state(self) -> dict[str, Any]:
        """What the verifier compares: the orders (the only thing the tools may change)."""
        return copy.deepcopy(self.orders)

    def find_customer(self, email: str) -> dict[str, Any]:
        for cid, c in self.customers.items():
            if c["email"] == email.strip().lower():
                self.identified = cid
                return {"customer_id": cid, "name": c["name"], "tier": c["tier"]}
        raise ToolError(f"no customer with email {email[:80]!r}")

    def _own(self, order_id: str) -> dict[str, Any]:
        if self.identified is None:
            raise ToolError("identify the customer with find_customer first")
        order = self.orders.get(order_id)
        if order is None or order["customer_id"] != self.identified:
            raise ToolError(f"the identified customer has no order {order_id[:40]!r}")
        return order

    def list_orders(self, customer_id: str) -> list[dict[str, Any]]:
        if customer_id != self.identified:
            raise ToolError("only the identified customer's orders can be listed")
        return [{"order_id": oid, "status": o["status"], "days_ago": o["days"]} for oid, o in sorted(self.orders.items()) if o["customer_id"] == customer_id]

    def get_order(self, order_id: str) -> dict[str, Any]:
        order = self._own(order_id)
        items = [{"sku": i["sku"], "name": self.products[i["sku"]]["name"], "price": i["price"], "refunded": i["refunded"]} for i in order["items"]]
        return {"order_id": order_id, "status": order["status"], "days_ago": order["days"], "address": order["address"], "items": items}

    def get_policy(self, topic: str) -> str:
        return POLICIES[topic]

    def cancel_order(self, order_id: str, reason: str) -> str:
        order = self._own(order_id)
        if order["status"] != "processing":
            raise ToolError(f"order {order_id} is {order['status']}; {POLICIES['cancel']}")
        order["status"], order["cancel_reason"] = "cancelled", reason
        for item in order["items"]:
            item["refunded"] = True
        return f"order {order_id} cancelled; {sum(i['price'] for i in order['items'])} refunded"

    def refund_items(self, order_id: str, skus: list[str]) -> str:
        order = self._own(order_id)
        limit = REFUND_DAYS[self.customers[order["customer_id"]]["tier"]]
        if order["status"] != "delivered" or order["days"] > limit:
            raise ToolError(f"order {order_id} is {order['status']}, {order['days']} days ago; {POLICIES['refund']}")
        by_sku = {i["sku"]: i for i in order["items"]}
        if not skus or any(s not in by_sku or by_sku[s]["refunded"] for s in skus) or len(set(skus)) != len(skus):
            raise ToolError("every sku must be an item of the order that was not refunded yet, listed once")
        for sku in skus:
            by_sku[sku]["refunded"] = True
        return f"refunded {sum(by_sku[s]['price'] for s in skus)} for {len(skus)} item(s) of order {order_id}"

    def update_address(self, order_id: str, address: str) -> str:
        order = self._own(order_id)
        if order["status"] != "processing":
            raise ToolError(f"order {order_id} is {order['status']}; {POLICIES['address']}")
        if not 5 <= len(address.strip()) <= 200:
            raise ToolError("the address must be 5 to 200 characters")
        order["address"] = address.strip()
        return f"shipping address of order {order_id} updated"
