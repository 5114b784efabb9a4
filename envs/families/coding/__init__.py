"""The coding family: HumanEval and generated write/fix problems, verified in the sandbox."""

from kpop.envs.families.coding.env import CodingEnv

__all__ = ["CodingEnv"]
