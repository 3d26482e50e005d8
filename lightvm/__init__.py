"""lightvm: micro-VMs on QEMU as light and fast to start as containers (docs/architecture.md).

The Python API (docs/api.md)::

    import lightvm

    with lightvm.connect() as lv:            # through lightvmd when one runs, else in this process
        (vm,) = lv.create("noop", memory="8M")
        lv.pause(vm["name"])
        lv.destroy(vm["name"])

``connect``, ``Connection`` and ``LightVMError`` are loaded on first use (module
``__getattr__``): ``import lightvm`` imports nothing else, since the CLI's every start pays
for what this package's ``__init__`` imports (docs/cli-startup.md).
"""

from __future__ import annotations

# The release, as [project] version in pyproject.toml (tests/unit/test_version.py checks they
# agree). What runs reports the installed package's metadata first: version().
__version__ = "0.1.0"


def version() -> str:
    """The installed distribution's version (importlib.metadata), else :data:`__version__`.

    Imports importlib.metadata only when called: ``import lightvm`` stays cheap for the CLI.
    """
    from importlib import metadata

    try:
        return metadata.version("lightvm")
    except metadata.PackageNotFoundError:
        return __version__


# name -> module of the API's names, imported on first access (PEP 562)
_LAZY = {"connect": "lightvm.client", "Connection": "lightvm.client", "LightVMError": "lightvm.errors"}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'lightvm' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # once: later accesses are plain lookups
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


__all__ = ["Connection", "LightVMError", "__version__", "connect", "version"]
