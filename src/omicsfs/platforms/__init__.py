"""Platform modules. The config's `kind` names a module here, which exports its class as `PLATFORM`.

Found by name, so that adding a platform adds a module and touches nothing else.
"""

from __future__ import annotations

import importlib
import pkgutil

from omicsfs.platform import Platform


def kinds() -> list[str]:
    return sorted(module.name for module in pkgutil.iter_modules(__path__) if not module.name.startswith("_"))


def platform_class(kind: str) -> type[Platform]:
    if kind not in kinds():
        raise LookupError(f"unknown platform kind {kind!r} (known: {', '.join(kinds())})")
    return importlib.import_module(f"{__name__}.{kind}").PLATFORM
