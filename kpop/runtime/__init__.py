"""A RunSpec turned into what each process of a run is built from (the runtime configuration).

`runtime_config(spec, model_dir)` (kpop.runtime.build) is the one conversion: `kpop run`, `kpop eval`
and `kpop serve` build engines, environment workers and their sandboxes from its objects, and the
loops take their sampling parameters and reward terms from it. `kpop.runtime.actors` starts the Ray
actors of a run from these objects; `kpop.runtime.recorded` recovers the spec a checkpoint was
trained with. tests/kpop/test_runtime_coverage.py shows that every RunSpec field either changes
these objects or is consumed elsewhere by name.
"""

from kpop.runtime.build import runtime_config
from kpop.runtime.config import EngineLaunch, MetricsConfig, RayStart, RunRuntime

__all__ = ["EngineLaunch", "MetricsConfig", "RayStart", "RunRuntime", "runtime_config"]
