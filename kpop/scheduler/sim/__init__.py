"""A discrete-event simulation of the KPop scheduler at cluster scale (benchmarks/scale_sim.py).

The simulation drives the real policy modules of kpop.scheduler (StalenessManager, StepBudget,
GroupBuffer and Group, DrawHorizon, choose_migrations, DynamicPassRating through the real
TaskSampler); only time is simulated: engines, environments and the learner. One idea per module:
    clock.py      the event heap (simulated seconds; nothing waits in real time)
    decode.py     an engine's decode step time as a function of its batch size, fitted to measurements
    engine.py     one engine: continuous batching as processor sharing, per-token policy versions
    cluster.py    the engines, least-loaded placement (the router's rule), tail migration, episodes' turns
    workload.py   tasks: turns, tokens per turn, environment step latencies (heavy tails included)
    sync_loop.py  the synchronous loop (draw B groups, wait for all, train, publish)
    kpop_loop.py  the KPop loop: the collector's admission, due rule and step selection
    run.py        a run's setup and what it reports: wall-clock, engine idle, token staleness, the ledger
"""
