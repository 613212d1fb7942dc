"""Setuptools entry point; metadata and dependencies live in setup.cfg.

`export/` sits at the top of the repository but installs as `tf_mistral.export`,
so that no top-level package named `export` lands in users' environments.
"""
from setuptools import find_packages, setup

setup(
    # tf_mistral/data holds no Python: listed by hand so that setuptools ships it (package_data).
    packages=find_packages(include=["tf_mistral", "tf_mistral.*"]) + ["tf_mistral.data", "tf_mistral.export"],
    package_dir={"tf_mistral.export": "export"},
)
