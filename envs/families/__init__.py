"""Built-in environment families; importing this package registers them."""

from kpop.envs.families import (  # noqa: F401
    calculator,  # noqa: F401
    coding,
    instructions,
    search,
    tool_use,
    workflow,
)
