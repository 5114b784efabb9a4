"""Training rounds between RL steps: shortest-correct distillation and preference (DPO) rounds.

schedule.py says when they happen (a pure function of the spec), candidates.py picks distillation
targets, measures.py holds the figures they are judged by, checks.py the spec checks that need the
environment registry, rounds.py runs a round through a loop's RunContext (synchronous loop).
"""
