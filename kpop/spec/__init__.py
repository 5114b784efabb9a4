"""The RunSpec: YAML schema (pydantic) of a KPop run, its loader and its error reporting."""

from kpop.spec.load import Problem, SpecError, load_spec, validate_spec
from kpop.spec.schema import RunSpec

__all__ = ["Problem", "RunSpec", "SpecError", "load_spec", "validate_spec"]
