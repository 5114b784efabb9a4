"""Container files, the Ray cluster configuration and the cluster guide: checked without building
or starting anything (no registry access here)."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import jsonschema
import pytest
import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
REPO = DEPLOY.parent
INSTRUCTIONS = {"FROM", "RUN", "CMD", "LABEL", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT", "VOLUME", "USER",
                "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL"}


def parse_dockerfile(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined; raises on unknown instructions."""
    out, pending = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        word, _, args = line.partition(" ")
        if word.upper() not in INSTRUCTIONS or word != word.upper():
            raise ValueError(f"unknown or lower-case instruction {word!r}")
        out.append((word, args.strip()))
    if pending:
        raise ValueError("dangling line continuation at end of file")
    return out


@pytest.mark.parametrize("name", ["Dockerfile.cpu", "Dockerfile.gpu"])
def test_dockerfiles_parse_and_build_kpop_with_the_setup_script(name):
    steps = parse_dockerfile((DEPLOY / "docker" / name).read_text())
    words = [w for w, _ in steps]
    assert words[0] in ("ARG", "FROM") and words[words.index("FROM") - 1:words.index("FROM")] in ([], ["ARG"])
    assert all(w in ("ARG",) for w in words[: words.index("FROM")])
    runs = " ".join(a for w, a in steps if w == "RUN")
    assert "bash deploy/setup.sh" in runs and (REPO / "deploy" / "setup.sh").is_file()
    extras = re.search(r"KPOP_EXTRAS=(\S+)", runs).group(1).split(",")
    declared = re.search(r"\[project\.optional-dependencies\](.*?)\n\[", (REPO / "pyproject.toml").read_text(), re.DOTALL).group(1)
    assert all(re.search(rf"^{e} = ", declared, re.MULTILINE) for e in extras), extras
    cmd = json.loads(dict(steps)["CMD"])
    assert cmd[0] == "kpop"
    assert "/health" in dict(steps)["HEALTHCHECK"] and "8000" in dict(steps)["EXPOSE"].split()
    ignore = (DEPLOY / "docker" / f"{name}.dockerignore").read_text().split()
    assert ".venv" in ignore and "runs" in ignore


def test_dockerfile_parser_rejects_broken_files():
    with pytest.raises(ValueError):
        parse_dockerfile("FROM x\nRUNN echo\n")
    with pytest.raises(ValueError):
        parse_dockerfile("FROM x\nRUN echo \\\n")


def test_ray_cluster_config_validates_against_rays_schema():
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load((DEPLOY / "cluster" / "ray-cluster.yaml").read_text())
    assert raw["provider"]["type"] == "local" and raw["docker"]["image"] == "kpop:gpu"
    prepared = prepare_config(copy.deepcopy(raw))
    validate_config(prepared)
    assert prepared["max_workers"] == len(raw["provider"]["worker_ips"])
    assert any("--head" in c for c in raw["head_start_ray_commands"])
    broken = copy.deepcopy(prepared)
    broken["provider"] = "local"
    with pytest.raises(jsonschema.ValidationError):
        validate_config(broken)


def test_cluster_guide_names_spec_fields_that_exist():
    from kpop.spec import load_spec

    guide = (DEPLOY / "cluster" / "README.md").read_text()
    fields = set(re.findall(r"`((?:cluster|learner|rollout)\.[a-z_.]+)`", guide))
    assert {"cluster.address", "learner.num_ranks", "learner.num_gpus", "rollout.engine.num_engines",
            "rollout.engine.num_gpus"} <= fields
    spec = load_spec(None, [])
    for dotted in fields:
        node = spec
        for part in dotted.split("."):
            assert hasattr(node, part), f"the guide names {dotted}, which RunSpec does not have"
            node = getattr(node, part)
    overrides = re.findall(r"--set (\S+)=", guide)
    load_spec(None, [f"{k}=1" if k.endswith(("num_ranks", "num_gpus", "num_cpus", "num_engines", "num_env_workers"))
                     else f"{k}=auto" if k == "cluster.address" else f"{k}=/tmp/x" for k in overrides])
