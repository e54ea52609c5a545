"""Package list for the `fognode.*` namespace.

The top-level folders (node/, protocols/, ledger/, tools/) install as fognode.node,
fognode.protocols, ... (see pyproject.toml `package-dir`). setuptools cannot discover
sub-packages through a renamed directory on its own, so they are listed here from the tree.
"""
from setuptools import find_packages, setup

ROOTS = ("node", "protocols", "ledger", "tools")
packages = [f"fognode.{p}" for p in find_packages(include=[f"{r}*" for r in ROOTS] + list(ROOTS))]
setup(packages=packages)
