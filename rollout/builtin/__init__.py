"""The built-in generation engine's parts: sampling, per-model batch caches, weights, the scheduler.

`kpop.rollout.builtin_engine.BuiltinEngine` assembles them behind the `Engine` protocol.
"""
