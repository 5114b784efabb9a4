"""Sandbox overhead: per-execution cost of each backend against a bare `python3 -c pass`.

Prints one table: p50/p95/min wall time of bare python3, bubblewrap with fresh namespaces per
execution ("bwrap", `sandbox.backend.warm: false`) and warm ("bwrap warm", the default: one
running sandbox per slot, reset after each execution), and (if an engine answers) Docker, a fresh
container per execution and warm (`sandbox.backend.warm`: one running container, reset after each
execution), the overhead over bare (ms; the minimum approximates an unloaded machine on a shared
one) and the ratio, then executions/s of the default pool (its backend and mode named in the row)
on 2 concurrent slots (the 2-core target machine) next to bare python3 run 2 at a time the same
way (alternating rounds), then the burst row: `--burst` executions (default
1,000) submitted at once to the default pool (`SandboxSpec()`), each printing its own index:
how many completed with the right output, executions/s, and what was left behind, counted before
and after (processes under this one, processes of its sandbox uids, its slot cgroups, work
directories; other pools running on the machine meanwhile are not counted).
`--cpu N` prints instead the CPU time per execution of `python3 -c pass` (N rounds alternating bare
python3, bwrap and bwrap warm, so that load from other users hits all alike): this process's own
time plus what the processes that reap an execution gained meanwhile (bare: this process's
children; bwrap: the slot's zygote, which reaps bwrap and everything under it; warm: the zygote,
bwrap and the launcher, which reaps the code); slot start-up is left out. On a 2-core machine with
2 slots busy, bare CPU / sandbox CPU bounds the pool's ratio to bare python3.
Usage: python benchmarks/sandbox.py [-n 40] [--burst 1000] [--cpu N].
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import statistics
import subprocess
import time
from pathlib import Path

from kpop.envs.sandbox.api import SandboxLimits, SandboxRequest
from kpop.envs.sandbox.bwrap import BwrapSandbox
from kpop.envs.sandbox.bwrap_warm import WarmBwrapSandbox
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
    boxes = {"bwrap": BwrapSandbox(), "bwrap warm": WarmBwrapSandbox(slot=1)}
    dbox, why = docker_box()
    if dbox is not None:
        boxes["docker"] = dbox
        boxes["docker warm"] = docker_box(warm=True)[0]
    samples: dict[str, list[float]] = {"bare python3 -c": [], **{k: [] for k in boxes}}
    for box in boxes.values():
        await box.run(REQUEST)  # warm-up: slot creation, page cache, image layers
    for i in range(n):
        samples["bare python3 -c"].append(bare_once())
        samples["bwrap"].append(await timed(boxes["bwrap"]))
        samples["bwrap warm"].append(await timed(boxes["bwrap warm"]))
        if dbox is not None:
            samples["docker warm"].append(await timed(boxes["docker warm"]))
        if dbox is not None and i < n_docker:
            samples["docker"].append(await timed(dbox))
    for box in boxes.values():
        await box.close()
    if dbox is None:
        samples["docker"] = why
    return samples


def docker_box(warm: bool = False):
    try:
        import docker

        client = docker.from_env(timeout=5)
        client.ping()
        client.images.get("kpop-sandbox:bookworm")
        client.close()
    except Exception as exc:  # noqa: BLE001 (any failure means: no usable engine)
        return None, f"skipped: {type(exc).__name__}"
    from kpop.envs.sandbox.docker_backend import DockerSandbox
    from kpop.envs.sandbox.docker_warm import WarmDockerSandbox

    return (WarmDockerSandbox() if warm else DockerSandbox()), ""


async def bare_batch(n: int, size: int) -> float:
    """Seconds for `n` bare `python3 -c pass` processes, `size` at a time (asyncio, as the pool is driven)."""
    gate = asyncio.Semaphore(size)

    async def one() -> None:
        async with gate:
            proc = await asyncio.create_subprocess_exec(PYTHON, "-c", "pass", env=CLEAN_ENV)
            assert await proc.wait() == 0

    start = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(n)))
    return time.perf_counter() - start


async def pool_rates(n: int, size: int = 2, rounds: int = 4) -> tuple[float, float]:
    """(pool executions/s, bare executions/s), each `size` at a time, measured in alternating
    rounds of n / rounds executions so that load from other users hits both alike."""
    pool = make_pool(SandboxSpec.model_validate({"pool_size": size}))
    await asyncio.gather(*(pool.run(REQUEST) for _ in range(size)))
    pool_s = bare_s = 0.0
    chunk = max(1, n // rounds)
    for _ in range(rounds):
        bare_s += await bare_batch(chunk, size)
        start = time.perf_counter()
        results = await asyncio.gather(*(pool.run(REQUEST) for _ in range(chunk)))
        pool_s += time.perf_counter() - start
        assert all(r.ok for r in results)
    await pool.close()
    return rounds * chunk / pool_s, rounds * chunk / bare_s


def mode(spec: SandboxSpec) -> str:
    """The backend and mode a spec's pool runs, as the rows name it."""
    return f"{spec.backend.type}{' warm' if getattr(spec.backend, 'warm', False) else ''}"


def leak_census() -> dict[str, int]:
    """What this process's sandbox executions could leave on the host, counted now: other users'
    pools on the machine are told apart by the pid in their slot uids (uid_base + 256·pid + slot),
    cgroups (`<pid>-<slot>`) and warm slot directories (`warm-<pid>-…`); fresh executions' work
    directories carry no pid and are all counted."""
    import psutil

    from kpop.envs.sandbox import cgroups, workdir
    from kpop.envs.sandbox.bwrap import BwrapConfig

    me = os.getpid()
    first_uid = BwrapConfig().uid_base + 256 * me
    sandbox_uid = 0
    for proc in psutil.process_iter(["uids"]):
        try:
            sandbox_uid += proc.info["uids"] is not None and first_uid <= proc.info["uids"].real < first_uid + 256
        except psutil.Error:
            pass
    groups = 0
    for parent in (cgroups._parents() or {}).values() if os.geteuid() == 0 else ():
        groups += sum(1 for p in parent.glob(f"{me}-*") if p.is_dir()) if parent.is_dir() else 0
    entries = [p.name for p in workdir.default_base().iterdir()]
    return {"child processes": len(psutil.Process().children(recursive=True)),
            "sandbox-uid processes": sandbox_uid, "slot cgroups": groups,
            "work dirs": sum(1 for n in entries if n.startswith(f"warm-{me}-") or not n.startswith("warm-"))}


async def burst(n: int) -> tuple[int, float]:
    """`n` executions submitted at once to the default pool; (right results, executions/s)."""
    pool = make_pool(SandboxSpec())
    requests = [SandboxRequest(command=[PYTHON, "-c", f"print({i})"]) for i in range(n)]
    start = time.perf_counter()
    results = await asyncio.gather(*(pool.run(r) for r in requests))
    rate = n / (time.perf_counter() - start)
    await pool.close()
    return sum(r.ok and r.stdout.strip() == str(i) for i, r in enumerate(results)), rate


def burst_row(n: int) -> None:
    before = leak_census()
    right, rate = asyncio.run(burst(n))
    after = leak_census()
    leaks = {k: after[k] - before[k] for k in before}
    print(f"\nburst ({n} at once, default pool: {mode(SandboxSpec())}, {SandboxSpec().pool_size} slots): {right}/{n} right, "
          f"{rate:.1f} executions/s, leaks {sum(max(v, 0) for v in leaks.values())}")
    print("  " + ", ".join(f"{k}: {before[k]} -> {after[k]}" for k in before))


def _stat_cpu(pid: int) -> float:
    """Seconds of CPU of `pid` and of the children it reaped (utime, stime, cutime, cstime)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def _sandbox_pids(box) -> list[int]:
    """The long-lived processes that reap what a slot's executions start: its zygote, and for a
    warm slot bwrap and the launcher (whose children are the executions)."""
    from kpop.envs.sandbox.bwrap_warm import _children

    pids = [box._zygote.pid]
    if getattr(box, "_bwrap_pid", None):
        pids += [box._bwrap_pid, *_children(box._bwrap_pid)]
    return pids


async def cpu_per_execution(n: int) -> dict[str, float]:
    """CPU ms per execution in alternating rounds (see the docstring): this process's own time plus
    what the reaping processes gained (bare: this process's reaped children)."""
    def own() -> float:
        me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime

    boxes = {"bwrap": BwrapSandbox(), "bwrap warm": WarmBwrapSandbox(slot=1)}
    for box in boxes.values():
        await box.run(REQUEST)  # start-up (zygote, sandbox) outside the measurement
    totals = dict.fromkeys(["bare python3 -c", *boxes], 0.0)
    for _ in range(n):
        start = own()
        bare_once()
        totals["bare python3 -c"] += own() - start
        for name, box in boxes.items():
            pids = _sandbox_pids(box)
            start = own() + sum(_stat_cpu(p) for p in pids)
            assert (await box.run(REQUEST)).ok
            totals[name] += own() + sum(_stat_cpu(p) for p in pids) - start
    for box in boxes.values():
        await box.close()
    return {name: 1000 * total / n for name, total in totals.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", type=int, default=40, help="executions per measurement")
    parser.add_argument("--burst", type=int, default=1000, help="executions submitted at once (0: skip)")
    parser.add_argument("--burst-only", action="store_true", help="print only the burst row")
    parser.add_argument("--cpu", type=int, default=0, metavar="N", help="print only CPU ms per execution over N executions")
    args = parser.parse_args()
    if args.cpu:
        cpu = asyncio.run(cpu_per_execution(args.cpu))
        base = cpu["bare python3 -c"]
        print(f"{'backend':<18}{'CPU ms/execution':>18}{'overhead ms':>13}{'bare / this':>13}")
        for name, ms in cpu.items():
            print(f"{name:<18}{ms:18.2f}{ms - base:13.2f}{base / ms:13.2f}")
        return
    if args.burst_only:
        burst_row(args.burst)
        return
    samples = asyncio.run(interleaved(args.n, max(5, args.n // 4)))
    why = samples.pop("docker") if isinstance(samples.get("docker"), str) else ""
    rows = list(samples.items())
    base50, base95 = _pcts(rows[0][1])
    base_min = min(rows[0][1])
    print(f"{'backend':<18}{'p50 ms':>9}{'p95 ms':>9}{'min ms':>9}{'overhead p50':>14}{'overhead p95':>14}"
          f"{'overhead min':>14}{'ratio p50':>11}")
    for name, samples in rows:
        p50, p95 = _pcts(samples)
        print(f"{name:<18}{p50:9.1f}{p95:9.1f}{min(samples):9.1f}{p50 - base50:14.1f}{p95 - base95:14.1f}"
              f"{min(samples) - base_min:14.1f}{p50 / base50:11.2f}")
    if why:
        print(f"{'docker':<18}{why}")
    rate, bare_rate = asyncio.run(pool_rates(args.n * 4))
    print(f"\npool (default: {mode(SandboxSpec())}, 2 slots): {rate:.1f} executions/s   bare python3, 2 at a time: {bare_rate:.1f}/s   "
          f"ratio {rate / bare_rate:.2f}")
    if args.burst:
        burst_row(args.burst)


if __name__ == "__main__":
    main()
