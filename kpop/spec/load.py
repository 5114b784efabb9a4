"""Load a RunSpec from YAML plus `--set dotted.key=value` overrides, or fail with readable errors.

Contract: `load_spec` either returns a valid RunSpec or raises SpecError whose `.problems` name the
YAML path of every bad field, what is allowed there, and (for misspelt keys) the closest valid key.
It never lets a pydantic or YAML traceback reach the user.
"""

from __future__ import annotations

import copy
import difflib
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

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
    default: Any = RunSpec().model_dump(mode="json")
    for i, part in enumerate(parts[:-1]):
        default = _child(default, part)
        if isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        elif isinstance(node, dict) and part not in node and default is not None:
            # Overriding inside a section the file leaves at its defaults: start from those.
            node[part] = copy.deepcopy(default)
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


def _child(node: Any, part: str) -> Any:
    if isinstance(node, dict):
        return node.get(part)
    if isinstance(node, list) and part.isdigit() and int(part) < len(node):
        return node[int(part)]
    return None


def _explain(err: dict[str, Any], data: dict[str, Any]) -> Problem:
    loc = _user_path(err["loc"], data)
    path = ".".join(str(p) for p in loc)
    if err["type"] == "extra_forbidden":
        allowed = _allowed_keys(loc[:-1], data)
        hint = difflib.get_close_matches(str(loc[-1]), allowed, n=1, cutoff=0.4)
        msg = f"unknown key {loc[-1]!r}"
        if hint:
            msg += f"; did you mean {hint[0]!r}?"
        return Problem(path, f"{msg} (allowed here: {', '.join(allowed)})")
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
            for m in _models_in(f.annotation):
                t = m.model_fields.get("type")
                if t is not None and isinstance(t.default, str):
                    tags.add(t.default)
                visit(m, seen)

    visit(RunSpec, set())
    return tags


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]


def _model_at(loc: list[Any], data: Any) -> type[BaseModel] | None:
    model: type[BaseModel] | None = RunSpec
    node = data
    for part in loc:
        if model is None or not isinstance(part, str) or part not in model.model_fields:
            if isinstance(part, int):
                node = node[part] if isinstance(node, list) and part < len(node) else None
                continue
            return None
        candidates = _models_in(model.model_fields[part].annotation)
        node = node.get(part) if isinstance(node, dict) else None
        tag = node.get("type") if isinstance(node, dict) else None
        chosen = [m for m in candidates if "type" in m.model_fields and m.model_fields["type"].default == tag]
        model = (chosen or candidates or [None])[0]
    return model


def _allowed_keys(loc: list[Any], data: Any) -> list[str]:
    model = _model_at(loc, data)
    return sorted(model.model_fields) if model is not None else []


def _field_at(loc: list[Any], data: Any):
    if not loc or not isinstance(loc[-1], str):
        return None
    model = _model_at(loc[:-1], data)
    return model.model_fields.get(loc[-1]) if model is not None else None


_DEFAULT_TAGS = _collect_default_tags()
