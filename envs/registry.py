"""The environment registry: `@register_env("name")` in code, the `kpop.envs` entry-point group
for third-party packages.

An entry point's value is `module:Class` (or a module that registers on import; its registrations
are credited to its distribution). Built-in environments register when `kpop.envs.families` is
imported. Names are unique: registering a second class under a taken name is an error, and an entry
point whose name is taken is ignored, so a plugin cannot silently replace a built-in. A plugin that
fails to load is recorded in `plugin_errors()` instead of breaking the registry. `rescan()` reads
the entry points again (after a plugin is installed into a running process).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib import import_module, metadata
from typing import Any

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
_PLUGIN_ERRORS: dict[str, str] = {}
_loaded = False
_current_source = "builtin"  # the distribution being loaded, for modules that register on import


def register_env(name: str, source: str | None = None) -> Callable[[type[AgentEnv]], type[AgentEnv]]:
    def decorate(cls: type[AgentEnv]) -> type[AgentEnv]:
        existing = _REGISTRY.get(name)
        if existing is not None and existing.cls is not cls:
            raise ValueError(f"environment name {name!r} is already registered by {existing.cls.__module__}.{existing.cls.__qualname__}")
        _REGISTRY[name] = EnvRecord(name, cls, source or _current_source)
        return cls

    return decorate


def _load_entry_point(ep: metadata.EntryPoint) -> None:
    global _current_source
    dist = ep.dist.name if ep.dist is not None else "entry point"
    _current_source = dist
    try:
        target = ep.load()
        if isinstance(target, type) and issubclass(target, AgentEnv) and ep.name not in _REGISTRY:
            register_env(ep.name, source=dist)(target)
        elif not isinstance(target, type) and ep.name not in _REGISTRY:
            raise TypeError(f"{ep.value} is a module that registered no environment named {ep.name!r}")
    except Exception as exc:  # noqa: BLE001 - one broken plugin must not hide the others (or the built-ins)
        _PLUGIN_ERRORS[f"{ep.name} ({dist})"] = f"{type(exc).__name__}: {exc}"
    finally:
        _current_source = "builtin"


def _load_all() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    import_module("kpop.envs.families")
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        _load_entry_point(ep)


def rescan() -> None:
    """Read the entry points again, e.g. after a plugin was installed into this process's path.

    Registrations already made stay (a module that registered on import cannot register twice);
    new entry points are added and failures are re-evaluated."""
    global _loaded
    import importlib

    importlib.invalidate_caches()
    _PLUGIN_ERRORS.clear()
    _loaded = False
    _load_all()


def plugin_errors() -> dict[str, str]:
    """Entry points that failed to load: "name (distribution)" -> the error."""
    _load_all()
    return dict(_PLUGIN_ERRORS)


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
