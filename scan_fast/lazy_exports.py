"""Names a package imports on first use (a module-level __getattr__, PEP 562), so that importing the package
stays cheap: `import scan_fast` needs no torch, Triton or GPU, `scan_fast.data` no ffcv."""
import sys
from importlib import import_module


def lazy_exports(package: str, exports: dict, names):
    """(__getattr__, __dir__) of `package`: `exports` maps a public name to the module that defines it,
    relative to the package (".beton"); a name is imported on first use and then kept in the package."""

    def __getattr__(name):
        if name in exports:
            value = getattr(import_module(exports[name], package), name)
            setattr(sys.modules[package], name, value)
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__():
        return sorted(names)

    return __getattr__, __dir__
