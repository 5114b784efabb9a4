"""RL loops: how rollouts and optimisation steps interleave."""
