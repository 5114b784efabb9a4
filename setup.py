"""Maps the repository's top-level folders into the single `kpop` import namespace.

envs/ installs as kpop.envs, rollout/ as kpop.rollout, and so on, so that nothing named
`models` or `envs` lands at the top level of a user's environment. kpop/ also holds a symlink to
each of those folders (kpop/envs -> ../envs, ...), so that static tools and editors, which do not
run setuptools' editable import hook, resolve `kpop.envs...` from the source tree itself; the
package list below skips those links (each folder is listed once, under its ROOTS entry).
"""

from setuptools import find_packages, setup

ROOTS = {
    "kpop": "kpop",
    "kpop.envs": "envs",
    "kpop.rollout": "rollout",
    "kpop.learner": "learner",
    "kpop.models": "models",
    "kpop.quant": "quant",
    "kpop.deploy": "deploy",
}

packages = []
linked = [name.split(".", 1)[1] for name in ROOTS if name != "kpop"]
for name, folder in ROOTS.items():
    packages.append(name)
    skip = [f"{link}{suffix}" for link in linked for suffix in ("", ".*")] if name == "kpop" else []
    packages.extend(f"{name}.{sub}" for sub in find_packages(folder, exclude=skip))

# native_kernels.c (with the header it includes) is compiled at first use (kpop.rollout.builtin.native): it ships as package data.
setup(packages=packages, package_dir=ROOTS, include_package_data=True,
      package_data={"kpop.rollout": ["builtin/native_kernels.c", "builtin/native_kernels_typed.h"]})
