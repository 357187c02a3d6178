"""A package's public names, loaded when first asked for (PEP 562).

Each package's ``__init__.py`` lists which module defines which public name, so ``from harness.train import
Trainer`` works as the README documents, while importing one module of a package does not import its
siblings (the report's matplotlib and scipy stay unloaded until a report is written). Inside the harness,
modules import from the module that defines a name, never from a package's ``__init__``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_exports(package: str, modules: dict[str, tuple[str, ...]]) -> tuple[Callable[[str], Any], list[str]]:
    """``(__getattr__, __all__)`` for ``package``, whose submodule ``modules[m]`` defines each listed name."""
    where = {name: module for module, names in modules.items() for name in names}

    def __getattr__(name: str) -> Any:
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{where[name]}"), name)

    return __getattr__, sorted(where)
