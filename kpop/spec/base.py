"""Base class for every RunSpec section, and the `type`-tagged variant helper.

Unknown keys are errors and defaults are validated too. A variant field (`tagged_union`) picks
its model by the `type` key and falls back to the first variant when `type` is left out, so a user
can tune the default variant without naming it. Naming another `type` gives that variant's own
defaults: kpop/spec/load.py never writes one variant's defaults into the data it validates.
"""

import typing
from typing import Annotated, Any, Union

from pydantic import BaseModel, ConfigDict, Discriminator, Tag


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True, frozen=True)


def tagged_union(*variants: type[BaseModel]) -> Any:
    tags = [v.model_fields["type"].default for v in variants]
    default = tags[0]

    def pick(value: Any) -> str | None:
        if isinstance(value, dict):
            return value.get("type", default)
        return getattr(value, "type", None)

    members = tuple(Annotated[v, Tag(t)] for v, t in zip(variants, tags))
    return Annotated[Union[members], Discriminator(pick)]  # noqa: UP007 (runtime tuple of members)


def models_in(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models a field annotation can hold (a model, the variants of a union, list items)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in models_in(arg)]


def variant_tag(model: type[BaseModel] | None) -> str | None:
    """The `type` tag of a variant model; None for a model that is not a variant."""
    field = model.model_fields.get("type") if model is not None else None
    return field.default if field is not None and isinstance(field.default, str) else None
