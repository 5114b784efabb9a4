"""The instruction-following family: a request plus itemised, verifiable rules, answered in one turn."""

from kpop.envs.families.instructions.env import InstructionsEnv

__all__ = ["InstructionsEnv"]
