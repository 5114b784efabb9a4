"""Environments: the agent-task contract, the registry of plugins, and the built-in families."""
