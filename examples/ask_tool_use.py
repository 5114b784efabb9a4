"""Serve a checkpoint with `kpop serve` and ask it held-out tool_use tasks through the `openai` client.

    .venv/bin/python examples/ask_tool_use.py runs/flagship/checkpoints/last [--tasks 8]

Each task is an order-status request at the flagship's tool_use level, sent with its tools as
OpenAI function schemas (greedy, 96 tokens). Prints each reply's tool calls, then how many replies
called a tool and how many passed the customer's own e-mail address (which the request states) to
`find_customer`, the first call the task needs.
"""

from __future__ import annotations

import argparse
import json
import re

TOOL_USE_LEVEL = {"kinds": ["status"], "all_tools": False, "orders_per_customer": 1, "sequence_weight": 0.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--tasks", type=int, default=8)
    parser.add_argument("--first-seed", type=int, default=10_000, help="task seeds (held out from training's)")
    args = parser.parse_args()

    import openai

    from kpop.deploy.server_process import ServerProcess
    from kpop.envs.registry import make_env

    env = make_env("tool_use", TOOL_USE_LEVEL)
    called = right_email = 0
    with ServerProcess(args.checkpoint) as server:
        client = openai.OpenAI(base_url=server.base_url + "/v1", api_key="unused", max_retries=0, timeout=120)
        [model] = client.models.list().data
        for seed in range(args.first_seed, args.first_seed + args.tasks):
            task = env.reset_task(seed=seed)
            messages = [{"role": m.role, "content": m.content} for m in task.messages]
            email = re.search(r"[\w.]+@[\w.]+", messages[-1]["content"]).group(0)
            reply = client.chat.completions.create(model=model.id, messages=messages, tools=task.tools,
                                                   temperature=0, max_tokens=96)
            calls = reply.choices[0].message.tool_calls or []
            called += bool(calls)
            right_email += any(c.function.name == "find_customer"
                               and json.loads(c.function.arguments).get("email") == email for c in calls)
            print(seed, email, [(c.function.name, c.function.arguments) for c in calls])
    print(f"{called} of {args.tasks} replies called a tool; {right_email} passed the request's e-mail to find_customer")


if __name__ == "__main__":
    main()
