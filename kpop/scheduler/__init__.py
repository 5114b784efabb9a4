"""The KPop scheduler: asynchronous rollout collection decoupled from optimisation steps.

One idea per module:
    staleness.py   admission capacity (AReaL's formula) and the version bound eta
    budget.py      when a step fires (token budget Phi or a group count) and which groups it takes
    horizon.py     how many fresh groups the run may still draw (none past its last step)
    buffer.py      the cross-version rollout buffer of groups (a group of G samples is the unit)
    dpr.py         Dynamic Pass Rating curriculum over tasks
    state.py       the serialisable scheduler state a checkpoint holds (exact resume)
    router.py      the engine router actor: least-loaded placement, failover, tail migration
    tail.py        which requests to migrate (pure policy used by the router)
    dispatcher.py  overlap dispatch of episodes to environment workers with failover
    monitor.py     engine utilisation sampling
    stats.py       per-step metrics (staleness histogram, latency percentiles)
The loop that ties them together is kpop/loop/kpop_loop.py.
"""
