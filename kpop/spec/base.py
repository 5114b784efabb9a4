"""Base class for every RunSpec section, and the `type`-tagged variant helper.

Unknown keys are errors and defaults are validated too. A variant field (`tagged_union`) picks
its model by the `type` key and falls back to the first variant when `type` is left out, so a user
can tune the default variant without naming it. Naming another `type` gives that variant's own
defaults: kpop/spec/load.py never writes one variant's defaults into the data it validates.
"""

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
