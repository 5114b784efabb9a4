"""The tool-use family: a customer-service simulator with typed tools and policies."""

from kpop.envs.families.tool_use.env import ToolUseEnv

__all__ = ["ToolUseEnv"]
