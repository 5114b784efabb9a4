"""Joining a cluster and placing a run's actors, each bounded by `cluster.start_timeout_s`.

Ray on its own waits: `ray.init` retries an address where nothing answers for minutes, and an
actor that asks for more than any node has stays pending forever. Before a run creates anything:

- `check_reachable(address, timeout_s)`: something accepts a TCP connection at the address's
  host:port within the timeout, else `ClusterStartError` naming the address ("auto" and a local
  instance are left to Ray, which fails at once when no cluster is running);
- `check_fits(demands, nodes, placement, where)`: every actor fits on one alive node, the run's
  total of each resource fits the cluster's, and every label a role names is on some node; else
  `ClusterStartError` listing what is missing and which spec fields ask for it;
- `wait_placed(waits, timeout_s)`: actors the cluster could hold but has no room for now (other
  jobs, fragmentation), or whose processes start slowly (a loaded node), fail after the timeout,
  naming the roles still waiting, what is free and which of the two it looks like (`why_late`);
  the refs are cheap calls that return once an actor's process has started and constructed it (an
  engine's `load`, which never waits for its build; a worker's `ping`).

Invariant: the checks only read the cluster (ray.nodes, ray.available_resources); nothing here
reserves or kills anything.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

# Resources Ray gives every node that no spec asks for.
_IMPLICIT = ("memory", "object_store_memory")


class ClusterStartError(RuntimeError):
    """The run cannot start on this cluster; the message names the address, node or resources."""


@dataclass(frozen=True)
class Demand:
    """`count` actors of one role, each asking for `resources` (the spec fields in `fields`)."""

    role: str
    count: int
    resources: dict[str, float]
    fields: str


@dataclass(frozen=True)
class NodeInfo:
    node_id: str
    address: str
    resources: dict[str, float]
    labels: dict[str, str] = field(default_factory=dict)


def alive_nodes() -> list[NodeInfo]:
    import ray

    return [NodeInfo(n["NodeID"], n.get("NodeManagerAddress", "?"), dict(n.get("Resources", {})), dict(n.get("Labels") or {}))
            for n in ray.nodes() if n.get("Alive")]


def host_port(address: str) -> tuple[str, int] | None:
    """The host and port a Ray address names, or None for "auto"/"local" (Ray resolves those)."""
    rest = address.split("://", 1)[1] if "://" in address else address
    if rest in ("auto", "local", ""):
        return None
    host, sep, port = rest.rpartition(":")
    if not sep or not port.isdigit():
        raise ClusterStartError(f"cluster.address {address!r} is not host:port, ray://host:port or auto")
    return host.strip("[]"), int(port)


def check_reachable(address: str, timeout_s: float) -> None:
    target = host_port(address)
    if target is None:
        return
    try:
        socket.create_connection(target, timeout=min(timeout_s, 10.0)).close()
    except OSError as exc:
        raise ClusterStartError(
            f"cluster.address {address!r}: nothing answers at {target[0]}:{target[1]} ({exc}). Start the cluster's "
            f"head there (`ray start --head --port {target[1]}`), or correct cluster.address") from exc


def _fmt(resources: Mapping[str, float]) -> str:
    shown = {k: v for k, v in resources.items() if k not in _IMPLICIT and not k.startswith("node:")}
    return ", ".join(f"{k} {v:g}" for k, v in sorted(shown.items())) or "no resources"


def _fits(ask: Mapping[str, float], have: Mapping[str, float]) -> bool:
    return all(have.get(k, 0.0) >= v for k, v in ask.items() if v > 0)


def problems(demands: Sequence[Demand], nodes: Sequence[NodeInfo], placement: Mapping[str, Mapping[str, str]]) -> list[str]:
    """What keeps this cluster from ever holding the run (empty: it can, as far as totals tell)."""
    out = []
    for d in demands:
        if d.count and not any(_fits(d.resources, n.resources) for n in nodes):
            out.append(f"each {d.role} needs {_fmt(d.resources)} ({d.fields}); no node has that much")
    for key in sorted({k for d in demands for k, v in d.resources.items() if v > 0}):
        need = sum(d.count * d.resources.get(key, 0.0) for d in demands)
        have = sum(n.resources.get(key, 0.0) for n in nodes)
        if need > have + 1e-9:
            parts = " + ".join(f"{d.role} {d.count} x {d.resources[key]:g}" for d in demands if d.count and d.resources.get(key))
            out.append(f"{key}: the run asks for {need:g} ({parts}), the cluster has {have:g}")
    for role, labels in placement.items():
        for key, value in labels.items():
            if not any(n.labels.get(key) == value for n in nodes):
                out.append(f"cluster.placement.{role} names label {key}={value}; no node has it")
    return out


def check_fits(demands: Sequence[Demand], nodes: Sequence[NodeInfo], placement: Mapping[str, Mapping[str, str]],
               where: str) -> None:
    found = problems(demands, nodes, placement)
    if found:
        listing = "; ".join(f"{n.address}: {_fmt(n.resources)}{_labels(n)}" for n in nodes) or "none alive"
        raise ClusterStartError(f"{where} cannot run this spec:\n  - " + "\n  - ".join(found) +
                                f"\n  nodes: {listing}\n  ask for less in the fields named, or add nodes that have it")


def _labels(node: NodeInfo) -> str:
    own = {k: v for k, v in node.labels.items() if not k.startswith("ray.io/")}
    return f" [{', '.join(f'{k}={v}' for k, v in sorted(own.items()))}]" if own else ""


def wait_placed(waits: Mapping[str, tuple[Demand, list[Any]]], timeout_s: float) -> None:
    """Wait until every ref has returned (each role's actors run), at most `timeout_s` in all."""
    import ray

    refs = [r for _, rs in waits.values() for r in rs]
    done, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
    done_ids = set(done)
    waiting = {role: (d, sum(r not in done_ids for r in rs)) for role, (d, rs) in waits.items()}
    late = [f"{n} of {len(waits[role][1])} {role}(s) (each {_fmt(d.resources)}, {d.fields})"
            for role, (d, n) in waiting.items() if n]
    if late:
        free = ray.available_resources()
        raise ClusterStartError(f"not placed within cluster.start_timeout_s = {timeout_s:g} s: {'; '.join(late)}; "
                                f"free now: {_fmt(free)}. {why_late([d for d, n in waiting.values() if n], free)}")
    ray.get(refs)  # an actor whose start raised reports it here


def why_late(late: Sequence[Demand], free: Mapping[str, float]) -> str:
    """The likely cause of a placement wait that timed out, from what is free once it has. An actor
    waiting for resources holds none, so room for each waiting role now means the actors were placed
    and their processes are still starting; no room means other jobs hold the resources (or
    fragment them), or the waiting actors are starting and hold it themselves."""
    slow = "Starting a process (Python, torch, vLLM imports) can take a minute on a loaded node: raise cluster.start_timeout_s"
    if all(_fits(d.resources, free) for d in late):
        return f"The cluster has room for them: their processes are still starting. {slow}"
    return f"Other jobs may hold the resources, or no single node has all of them free. {slow} if the nodes are loaded"


def run_demands(spec: Any) -> list[Demand]:
    """The run's actors by role, each with what it asks Ray for (kpop.runtime.build, LearnerGroup)."""
    lr, r = spec.learner, spec.rollout
    return [
        Demand("learner rank", lr.num_ranks, {"CPU": lr.num_cpus, "GPU": lr.num_gpus},
               "learner.num_ranks, learner.num_cpus, learner.num_gpus"),
        Demand("engine", r.engine.num_engines, {"CPU": r.engine.num_cpus, "GPU": r.engine.num_gpus},
               "rollout.engine.num_engines, rollout.engine.num_cpus, rollout.engine.num_gpus"),
        Demand("environment worker", r.num_env_workers, {}, "rollout.num_env_workers"),
    ]
