"""lightvm: micro-VMs on QEMU as light and fast to start as containers (docs/architecture.md)."""

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
