"""Static tools and editors resolve `kpop.*` from the source tree, without setuptools' editable
import hook: kpop/ links each mapped folder (kpop/envs -> ../envs, ...), so walking kpop/ finds
exactly the packages that setup.py installs, and a fresh interpreter with only the repository on
its path (no site-packages, so no import hook) finds modules of every mapped folder."""

from __future__ import annotations

import os
import runpy
import subprocess
import sys
from pathlib import Path

import setuptools

REPO = Path(__file__).resolve().parents[2]


def installed_packages(monkeypatch) -> set[str]:
    captured: dict = {}
    monkeypatch.setattr(setuptools, "setup", lambda **kw: captured.update(kw))
    monkeypatch.chdir(REPO)
    runpy.run_path(str(REPO / "setup.py"))
    return set(captured["packages"])


def source_tree_packages() -> set[str]:
    found = set()
    for folder, _, files in os.walk(REPO / "kpop", followlinks=True):
        if "__init__.py" in files:
            found.add(".".join(Path(folder).relative_to(REPO).parts))
    return found


def test_walking_kpop_finds_exactly_the_installed_packages(monkeypatch):
    packages = installed_packages(monkeypatch)
    assert {"kpop.envs.families", "kpop.rollout.builtin", "kpop.models.hybrid", "kpop.deploy"} <= packages
    assert source_tree_packages() == packages


def test_a_bare_interpreter_on_the_repository_resolves_every_mapped_folder():
    names = ["kpop.envs.contract", "kpop.rollout.routing", "kpop.learner.plan", "kpop.models.tokenizer",
             "kpop.quant.grids", "kpop.deploy.server_process"]
    code = ("import importlib.machinery as m, sys; sys.path[:] = [sys.argv[1]]; "
            "print(all(m.PathFinder.find_spec(n.rsplit('.', 1)[1], [sys.argv[1] + '/' + n.rsplit('.', 1)[0].replace('.', '/')]) "
            "for n in sys.argv[2:]))")
    out = subprocess.run([sys.executable, "-S", "-c", code, str(REPO), *names], capture_output=True, text=True,
                         check=True, timeout=60)
    assert out.stdout.strip() == "True"
