"""The workflow family: multi-step jobs across files, an SQLite database and a calendar."""

from kpop.envs.families.workflow.env import WorkflowEnv

__all__ = ["WorkflowEnv"]
