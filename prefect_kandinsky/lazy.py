"""Lazy public names (PEP 562) for ``prefect_kandinsky`` and ``prefect_kandinsky.emulator``.

It imports nothing but :mod:`importlib`, so the packages that use it stay cheap to import.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(
    namespace: dict[str, Any], origins: Mapping[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The ``__getattr__`` and ``__dir__`` of a package whose public names load on first use.

    ``namespace`` is the package's ``globals()``; ``origins`` maps each public name to the
    module it is imported from.
    """
    package = namespace["__name__"]

    def __getattr__(name: str) -> Any:
        """Import a public name from its module on first access (PEP 562), then keep it."""
        module = origins.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        """The module's attributes and every public name, loaded or not."""
        return sorted({*namespace, *origins})

    return __getattr__, __dir__


def moved_module(
    namespace: dict[str, Any], modules: tuple[str, ...]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The ``__getattr__`` and ``__dir__`` of an old module path whose names moved to ``modules``.

    A name is looked up in each module in turn (imported on first access), so
    ``from prefect_kandinsky.webhooks import serve`` keeps working after ``serve`` moved.
    """
    package = namespace["__name__"]

    def __getattr__(name: str) -> Any:
        """The name from the first of ``modules`` that defines it."""
        for module in modules:
            found = importlib.import_module(module)
            if hasattr(found, name):
                value = getattr(found, name)
                namespace[name] = value
                return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        """Every public name of the modules the old path stands for."""
        names = {*namespace}
        for module in modules:
            names.update(n for n in dir(importlib.import_module(module)) if not n.startswith("_"))
        return sorted(names)

    return __getattr__, __dir__
