"""The package list, which pyproject.toml cannot state: found packages plus the mapped configs/."""

from setuptools import find_packages, setup

# configs/ stays at the top of the repository (the README and DESIGN point there) and ships
# inside the wheel as the package data cli/configs/*.yaml: one copy of each file.
setup(
    packages=[*find_packages(include=["engine*", "cli*"]), "cli.configs"],
    package_dir={"cli.configs": "configs"},
)
