"""Task generator for the customer-service simulator: a seeded store and one customer request.

Each task carries the reference tool-call sequence, the reference final answer, the strings the
answer must contain (a policy code, an order id and status) and the expected final state. The
expected state is computed here by direct edits of a copy of the orders, not through the tools, so
the reference solver (which goes through the tools) is checked against an independent oracle.
"""

from __future__ import annotations

import copy
import random
from dataclasses import dataclass, field
from typing import Any

from kpop.envs.families.tool_use.backend import (
    CANCEL_REASONS,
    POLICY_CODES,
    REFUND_DAYS,
    Store,
)

_FIRST = ["Ada", "Bruno", "Chen", "Dara", "Emil", "Farah", "Goran", "Hana", "Ivo", "Jun", "Kemi", "Lena"]
_LAST = ["Okafor", "Silva", "Novak", "Haddad", "Larsen", "Moreau", "Tanaka", "Reyes", "Kowalski", "Osei"]
_PRODUCTS = ["desk lamp", "water bottle", "yoga mat", "phone case", "backpack", "coffee grinder", "headphones", "notebook", "kettle", "umbrella"]
_STREETS = ["Oak Street", "Harbour Road", "Mill Lane", "Station Avenue", "Park Row", "Elm Court"]
_REASON_TEXT = {"no_longer_needed": "I no longer need it", "ordered_by_mistake": "I ordered it by mistake", "found_cheaper": "I found it cheaper elsewhere", "other": "of personal reasons"}
KINDS = ("cancel", "refund", "address", "refund_denied", "status")


@dataclass
class ServiceTask:
    store: Store
    request: str
    calls: list[tuple[str, dict[str, Any]]]
    answer: str
    must_mention: list[str] = field(default_factory=list)
    expected: dict[str, Any] = field(default_factory=dict)
    kind: str = ""


def _store(rng: random.Random, customers: int = 5, orders_per_customer: int = 3) -> Store:
    s = Store()
    for i, name in enumerate(_PRODUCTS):
        s.products[f"SKU-{100 + i}"] = {"name": name, "price": rng.randint(5, 200)}
    order_ids = rng.sample(range(10000, 99999), customers * orders_per_customer)
    for c in range(customers):
        first, last = rng.choice(_FIRST), rng.choice(_LAST)
        cid = f"C{c + 1:03d}"
        s.customers[cid] = {"name": f"{first} {last}", "email": f"{first}.{last}{c}@example.com".lower(), "tier": rng.choice(["standard", "gold"])}
        for _ in range(orders_per_customer):
            skus = rng.sample(sorted(s.products), rng.randint(1, 3))
            items = [{"sku": k, "price": s.products[k]["price"], "refunded": False} for k in skus]
            s.orders[f"O{order_ids.pop()}"] = {"customer_id": cid, "items": items, "status": rng.choice(["processing", "shipped", "delivered"]),
                                              "days": rng.randint(1, 90), "address": f"{rng.randint(1, 200)} {rng.choice(_STREETS)}"}
    return s


def make_task(rng: random.Random, kinds: tuple[str, ...] = KINDS, customers: int = 5, orders_per_customer: int = 3) -> ServiceTask:
    """One request of a kind drawn from `kinds` (taken in KINDS order, so the defaults draw as they always did)."""
    store = _store(rng, customers, orders_per_customer)
    kind = rng.choice([k for k in KINDS if k in kinds])
    cid = rng.choice(sorted(store.customers))
    customer = store.customers[cid]
    oid = rng.choice(sorted(o for o, v in store.orders.items() if v["customer_id"] == cid))
    order = store.orders[oid]
    hello = f"Hi, this is {customer['name']} ({customer['email']})."
    find = ("find_customer", {"email": customer["email"]})
    limit = REFUND_DAYS[customer["tier"]]
    if kind in ("cancel", "address"):
        order["status"] = "processing"
    elif kind in ("refund", "refund_denied"):
        order["status"] = "delivered"
        order["days"] = rng.randint(1, limit) if kind == "refund" else limit + rng.randint(1, 20)
    expected = copy.deepcopy(store.orders)
    if kind == "cancel":
        reason = rng.choice(CANCEL_REASONS)
        expected[oid].update(status="cancelled", cancel_reason=reason)
        for item in expected[oid]["items"]:
            item["refunded"] = True
        calls = [find, ("get_order", {"order_id": oid}), ("cancel_order", {"order_id": oid, "reason": reason})]
        return ServiceTask(store, f"{hello} Please cancel order {oid}, because {_REASON_TEXT[reason]}.", calls, f"Order {oid} is cancelled and refunded.", [], expected, kind)
    if kind == "address":
        address = f"{rng.randint(1, 200)} {rng.choice(_STREETS)}, Apt {rng.randint(1, 40)}"
        expected[oid]["address"] = address
        calls = [find, ("get_order", {"order_id": oid}), ("update_address", {"order_id": oid, "address": address})]
        return ServiceTask(store, f"{hello} Please ship order {oid} to {address} instead.", calls, f"Order {oid} will ship to {address}.", [], expected, kind)
    item = rng.choice(order["items"])
    product = store.products[item["sku"]]["name"]
    if kind == "refund":
        next(i for i in expected[oid]["items"] if i["sku"] == item["sku"])["refunded"] = True
        calls = [find, ("get_order", {"order_id": oid}), ("refund_items", {"order_id": oid, "skus": [item["sku"]]})]
        return ServiceTask(store, f"{hello} I'd like a refund for the {product} from order {oid}.", calls, f"The {product} of order {oid} is refunded.", [], expected, kind)
    if kind == "refund_denied":
        calls = [find, ("get_order", {"order_id": oid}), ("get_policy", {"topic": "refund"})]
        code = POLICY_CODES["refund"]
        answer = f"I'm sorry, the {product} of order {oid} is past the refund window under {code}, so it cannot be refunded."
        return ServiceTask(store, f"{hello} I'd like a refund for the {product} from order {oid}.", calls, answer, [code], expected, kind)
    for other, v in store.orders.items():  # make the chosen order the unique most recent one
        if v["customer_id"] == cid and other != oid:
            v["days"] = max(v["days"], 2)
    order["days"] = 1
    expected = copy.deepcopy(store.orders)
    calls = [find, ("list_orders", {"customer_id": cid})]
    answer = f"Your most recent order {oid} is {order['status']}."
    return ServiceTask(store, f"{hello} What is the status of my most recent order?", calls, answer, [oid, order["status"]], expected, kind)
