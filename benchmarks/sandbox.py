"""Sandbox overhead: per-execution cost of each backend against a bare `python3 -c pass`.

Prints one table: p50/p95 wall time of bare python3, bubblewrap and (if an engine answers)
Docker, the overhead over bare (ms) and the ratio, then executions/s of the default pool on
2 concurrent slots (the 2-core target machine). Usage: python benchmarks/sandbox.py [-n 40].
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import time

from kpop.envs.sandbox.api import SandboxLimits, SandboxRequest
from kpop.envs.sandbox.bwrap import BwrapSandbox
from kpop.envs.sandbox.factory import make_pool
from kpop.spec.sandbox import SandboxSpec

CLEAN_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1"}
PYTHON = "/usr/bin/python3"  # the same interpreter the sandbox runs, so only the wrapping differs
REQUEST = SandboxRequest(command=[PYTHON, "-c", "pass"], limits=SandboxLimits())


def _pcts(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]


def bare_once() -> float:
    # Same interpreter, same cleared environment as inside the sandbox: only the wrapping differs.
    start = time.perf_counter()
    subprocess.run([PYTHON, "-c", "pass"], check=True, env=CLEAN_ENV)
    return 1000 * (time.perf_counter() - start)


async def timed(box) -> float:
    start = time.perf_counter()
    result = await box.run(REQUEST)
    assert result.ok, result
    return 1000 * (time.perf_counter() - start)


async def interleaved(n: int, n_docker: int) -> dict[str, list[float]]:
    """Alternates the variants within each round, so load from other users hits all alike."""
    boxes = {"bwrap": BwrapSandbox()}
    dbox, why = docker_box()
    if dbox is not None:
        boxes["docker"] = dbox
    samples: dict[str, list[float]] = {"bare python3 -c": [], **{k: [] for k in boxes}}
    for box in boxes.values():
        await box.run(REQUEST)  # warm-up: slot creation, page cache, image layers
    for i in range(n):
        samples["bare python3 -c"].append(bare_once())
        samples["bwrap"].append(await timed(boxes["bwrap"]))
        if dbox is not None and i < n_docker:
            samples["docker"].append(await timed(dbox))
    for box in boxes.values():
        await box.close()
    if dbox is None:
        samples["docker"] = why
    return samples


def docker_box():
    try:
        import docker

        client = docker.from_env(timeout=5)
        client.ping()
        client.images.get("kpop-sandbox:bookworm")
        client.close()
    except Exception as exc:  # noqa: BLE001 (any failure means: no usable engine)
        return None, f"skipped: {type(exc).__name__}"
    from kpop.envs.sandbox.docker_backend import DockerSandbox

    return DockerSandbox(), ""


async def pool_rate(n: int, size: int = 2) -> float:
    pool = make_pool(SandboxSpec.model_validate({"pool_size": size}))
    await asyncio.gather(*(pool.run(REQUEST) for _ in range(size)))
    start = time.perf_counter()
    results = await asyncio.gather(*(pool.run(REQUEST) for _ in range(n)))
    rate = n / (time.perf_counter() - start)
    await pool.close()
    assert all(r.ok for r in results)
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", type=int, default=40, help="executions per measurement")
    args = parser.parse_args()
    samples = asyncio.run(interleaved(args.n, max(5, args.n // 4)))
    why = samples.pop("docker") if isinstance(samples.get("docker"), str) else ""
    rows = list(samples.items())
    base50, base95 = _pcts(rows[0][1])
    print(f"{'backend':<18}{'p50 ms':>9}{'p95 ms':>9}{'overhead p50':>14}{'overhead p95':>14}{'ratio p50':>11}")
    for name, samples in rows:
        p50, p95 = _pcts(samples)
        print(f"{name:<18}{p50:9.1f}{p95:9.1f}{p50 - base50:14.1f}{p95 - base95:14.1f}{p50 / base50:11.2f}")
    if why:
        print(f"{'docker':<18}{why}")
    rate = asyncio.run(pool_rate(args.n * 2))
    bare_rate = 2000 / base50
    print(f"\npool (bwrap, 2 slots): {rate:.1f} executions/s   (bare python3 on 2 cores ≈ {bare_rate:.1f}/s, ratio {rate / bare_rate:.2f})")


if __name__ == "__main__":
    main()
