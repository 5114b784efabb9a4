"""Load a RunSpec from YAML plus `--set dotted.key=value` overrides, or fail with readable errors.

Contract: `load_spec` either returns a valid RunSpec or raises SpecError whose `.problems` name the
YAML path of every bad field, what is allowed there, and (for misspelt keys) the closest valid key.
It never lets a pydantic or YAML traceback reach the user.

The data validated holds only what the user wrote (YAML or `--set`), never a materialised default
of a `type`-tagged variant: so `type: NAME` (in the file or by `--set PATH.type=NAME`) gets NAME's
own defaults for every field the user left out, and a field the user set that NAME lacks is a
problem naming its path, the chosen type and what that type accepts.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import to_jsonable_python

from kpop.spec.base import models_in, variant_tag
from kpop.spec.schema import RunSpec


@dataclass(frozen=True)
class Problem:
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path or '<top level>'}: {self.message}"


class SpecError(Exception):
    def __init__(self, source: str, problems: list[Problem]) -> None:
        self.source, self.problems = source, problems
        noun = "problem" if len(problems) == 1 else "problems"
        lines = [f"{source}: {len(problems)} {noun}"] + [f"  - {p}" for p in problems]
        super().__init__("\n".join(lines))


def load_spec(path: str | Path | None, overrides: list[str] = ()) -> RunSpec:
    source = str(path) if path is not None else "<embedded defaults>"
    data = _read_yaml(Path(path)) if path is not None else {}
    for item in overrides:
        _apply_override(data, item, source)
    return validate_spec(data, source)


def validate_spec(data: dict[str, Any], source: str = "<spec>") -> RunSpec:
    try:
        return RunSpec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(source, [_explain(err, data) for err in exc.errors()]) from None


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise SpecError(str(path), [Problem("", f"spec file not found: {path} (give the path of a YAML file, e.g. examples/quickstart.yaml)")])
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise SpecError(str(path), [Problem("", f"not valid YAML: {exc}")]) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SpecError(str(path), [Problem("", f"the top level must be a mapping of sections, got {type(data).__name__}")])
    return data


def _apply_override(data: dict[str, Any], item: str, source: str) -> None:
    key, sep, raw = item.partition("=")
    parts = key.strip().split(".") if key.strip() else []
    if not sep or not parts or any(not p for p in parts):
        raise SpecError(source, [Problem(key, f"bad --set {item!r}: expected dotted.key=value, e.g. learner.lr=1e-4")])
    try:
        value = yaml.safe_load(raw) if raw.strip() else raw
    except yaml.YAMLError:
        value = raw
    if isinstance(value, bool) and raw.strip().lower() not in ("true", "false"):
        # YAML 1.1 reads on/off/yes/no as booleans; on the command line they are meant as words.
        value = raw.strip()
    node: Any = data
    for i, part in enumerate(parts[:-1]):
        if isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        elif isinstance(node, dict) and part not in node and (default := _default_data(_loc(parts[: i + 1]), data)) is not None:
            # Overriding inside a field the file leaves at its default (e.g. an entry of the default
            # envs list, one key of a default mapping): start from that default.
            node[part] = default
            node = node[part]
        elif isinstance(node, dict) and parts[i + 1].isdigit() and not isinstance(node.get(part), list):
            raise SpecError(source, [Problem(".".join(parts[: i + 1]), f"bad --set {item!r}: no list entry {parts[i + 1]} to change here (set list entries in the YAML file)")])
        elif isinstance(node, dict):
            node = node.setdefault(part, {})
        else:
            raise SpecError(source, [Problem(".".join(parts[: i + 1]), f"bad --set {item!r}: {'.'.join(parts[:i]) or 'the spec'} is not a mapping here")])
    last = parts[-1]
    if isinstance(node, list) and last.isdigit() and int(last) < len(node):
        node[int(last)] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise SpecError(source, [Problem(key, f"bad --set {item!r}: the parent is not a mapping")])


def _loc(parts: list[str]) -> list[str | int]:
    return [int(p) if p.isdigit() else p for p in parts]


def _default_data(loc: list[Any], data: Any) -> Any:
    """The default of the field at `loc`, in the variant `data` picks there, as data (see
    `_least_data`); None where the schema gives no default."""
    *parent, name = loc
    model = _model_at(parent, data)
    field = model.model_fields.get(name) if model is not None and isinstance(name, str) else None
    if field is None or field.is_required():
        return None
    return _least_data(field.get_default(call_default_factory=True))


def _least_data(value: Any) -> Any:
    """`value` as the least YAML-like data that validates back to it: a model keeps its `type` tag,
    its required fields and the fields that differ from their defaults. A full dump would write the
    default variant's fields into the data, where they would outlive a later switch of `type`."""
    if isinstance(value, BaseModel):
        return {name: _least_data(getattr(value, name)) for name, field in type(value).model_fields.items()
                if name == "type" or field.is_required() or getattr(value, name) != field.get_default(call_default_factory=True)}
    if isinstance(value, (list, tuple)):
        return [_least_data(v) for v in value]
    if isinstance(value, dict):
        return {k: _least_data(v) for k, v in value.items()}
    return to_jsonable_python(value)


def _explain(err: dict[str, Any], data: dict[str, Any]) -> Problem:
    loc = _user_path(err["loc"], data)
    path = ".".join(str(p) for p in loc)
    if err["type"] == "extra_forbidden":
        return Problem(path, _unknown_key(loc, data))
    if err["type"] == "union_tag_invalid":
        return Problem(path, f"unknown type {err['ctx']['tag']!r}; allowed types: {err['ctx']['expected_tags']}")
    field = _field_at(loc, data)
    got = f" (got {err['input']!r})" if err["type"] != "missing" and not isinstance(err.get("input"), dict) else ""
    desc = f" [{field.description}]" if field is not None and field.description else ""
    message = err["msg"].removeprefix("Value error, ")
    return Problem(path, f"{message}{got}{desc}")


def _user_path(loc: tuple, data: Any) -> list[Any]:
    """Drop the union-tag entries pydantic inserts (e.g. 'vllm' in rollout.engine.vllm.kv_cache_gib)."""
    out, node = [], data
    for part in loc:
        if isinstance(node, dict) and part not in node and node.get("type", None) == part:
            continue
        if isinstance(node, dict) and part not in node and "type" not in node and _is_tag_default(part):
            continue
        out.append(part)
        node = node.get(part) if isinstance(node, dict) else (node[part] if isinstance(node, list) and isinstance(part, int) and part < len(node) else None)
    return out


def _is_tag_default(part: Any) -> bool:
    return isinstance(part, str) and part in _DEFAULT_TAGS


def _collect_default_tags() -> set[str]:
    tags: set[str] = set()

    def visit(model: type[BaseModel], seen: set) -> None:
        if model in seen:
            return
        seen.add(model)
        for f in model.model_fields.values():
            for m in models_in(f.annotation):
                t = m.model_fields.get("type")
                if t is not None and isinstance(t.default, str):
                    tags.add(t.default)
                visit(m, seen)

    visit(RunSpec, set())
    return tags


def _unknown_key(loc: list[Any], data: Any) -> str:
    key, parent = str(loc[-1]), ".".join(str(p) for p in loc[:-1])
    variants, model = _variants_at(loc[:-1], data)
    allowed = sorted(model.model_fields) if model is not None else []
    tag = variant_tag(model)
    owners = [variant_tag(m) for m in variants if m is not model and key in m.model_fields]
    if tag is not None and owners:
        # The key belongs to another variant: the user switched `type` and kept that variant's field.
        return (f"{key!r} is a field of type {' / '.join(repr(o) for o in owners)}, not of type {tag!r} chosen here: "
                f"remove it, or set {parent}.type to {owners[0]!r} (type {tag!r} accepts: {', '.join(allowed)})")
    hint = difflib.get_close_matches(key, allowed, n=1, cutoff=0.4)
    where = f"allowed for type {tag!r}" if tag is not None and len(variants) > 1 else "allowed here"
    return f"unknown key {key!r}" + (f"; did you mean {hint[0]!r}?" if hint else "") + f" ({where}: {', '.join(allowed)})"


def _variants_at(loc: list[Any], data: Any) -> tuple[list[type[BaseModel]], type[BaseModel] | None]:
    """The models the schema allows at `loc` (a tagged union's variants, or one model) and the one
    the data's `type` tags pick (the first variant where `type` is left out, as `tagged_union` does)."""
    variants: list[type[BaseModel]] = [RunSpec]
    model: type[BaseModel] | None = RunSpec
    node = data
    for part in loc:
        if isinstance(part, int):
            # A list entry: its own `type` picks its variant.
            node = node[part] if isinstance(node, list) and part < len(node) else None
        elif model is not None and part in model.model_fields:
            variants = models_in(model.model_fields[part].annotation)
            node = node.get(part) if isinstance(node, dict) else None
        else:
            return [], None
        tag = node.get("type") if isinstance(node, dict) else None
        chosen = [m for m in variants if tag is not None and variant_tag(m) == tag]
        model = (chosen or variants or [None])[0]
    return variants, model


def _model_at(loc: list[Any], data: Any) -> type[BaseModel] | None:
    return _variants_at(loc, data)[1]


def _field_at(loc: list[Any], data: Any):
    if not loc or not isinstance(loc[-1], str):
        return None
    model = _model_at(loc[:-1], data)
    return model.model_fields.get(loc[-1]) if model is not None else None


_DEFAULT_TAGS = _collect_default_tags()
