"""The environment registry: `@register_env("name")` in code, the `kpop.envs` entry-point group
for third-party packages.

An entry point's value is `module:Class` (or a module that registers on import). Built-in
environments register when `kpop.envs.families` is imported. Names are unique: registering a
second class under a taken name is an error, so a plugin cannot silently replace a built-in.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import import_module, metadata
from typing import Any, Callable

from pydantic import BaseModel, ConfigDict, ValidationError

from kpop.envs.contract import AgentEnv

ENTRY_POINT_GROUP = "kpop.envs"


class NoOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class EnvRecord:
    name: str
    cls: type[AgentEnv]
    source: str  # "builtin" or the distribution that provides the entry point

    @property
    def options_model(self) -> type[BaseModel]:
        return getattr(self.cls, "Options", NoOptions)


_REGISTRY: dict[str, EnvRecord] = {}
_loaded = False


def register_env(name: str, source: str = "builtin") -> Callable[[type[AgentEnv]], type[AgentEnv]]:
    def decorate(cls: type[AgentEnv]) -> type[AgentEnv]:
        existing = _REGISTRY.get(name)
        if existing is not None and existing.cls is not cls:
            raise ValueError(f"environment name {name!r} is already registered by {existing.cls.__module__}.{existing.cls.__qualname__}")
        _REGISTRY[name] = EnvRecord(name, cls, source)
        return cls

    return decorate


def _load_all() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    import_module("kpop.envs.families")
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        target = ep.load()
        if isinstance(target, type) and issubclass(target, AgentEnv) and ep.name not in _REGISTRY:
            dist = ep.dist.name if ep.dist is not None else "entry point"
            register_env(ep.name, source=dist)(target)


def list_envs() -> list[EnvRecord]:
    _load_all()
    return sorted(_REGISTRY.values(), key=lambda r: r.name)


def get_env(name: str) -> EnvRecord:
    _load_all()
    if name not in _REGISTRY:
        import difflib

        close = difflib.get_close_matches(name, list(_REGISTRY), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise KeyError(f"no environment named {name!r}{hint} (registered: {', '.join(sorted(_REGISTRY))})")
    return _REGISTRY[name]


def make_env(name: str, options: dict[str, Any] | None = None) -> AgentEnv:
    record = get_env(name)
    opts = validate_options(name, options or {})
    return record.cls(**opts.model_dump()) if record.options_model is not NoOptions else record.cls()


def validate_options(name: str, options: dict[str, Any]) -> BaseModel:
    """Options checked against the environment's own `Options` model (ValueError names the field)."""
    record = get_env(name)
    try:
        return record.options_model.model_validate(options)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ValueError(f"options of environment {name!r}: {problems}") from None
