"""Built-in environment families; importing this package registers them."""

from kpop.envs.families import calculator  # noqa: F401
