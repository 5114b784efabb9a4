"""Maps the repository's top-level folders into the single `kpop` import namespace.

envs/ installs as kpop.envs, rollout/ as kpop.rollout, and so on, so that nothing named
`models` or `envs` lands at the top level of a user's environment.
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
for name, folder in ROOTS.items():
    packages.append(name)
    packages.extend(f"{name}.{sub}" for sub in find_packages(folder))

setup(packages=packages, package_dir=ROOTS, include_package_data=True)
