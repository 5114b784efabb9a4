"""Built-in environment families; importing this package registers them."""

from kpop.envs.families import calculator  # noqa: F401
from kpop.envs.families import coding, instructions, search, tool_use, workflow  # noqa: F401
