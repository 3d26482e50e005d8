"""The image store: one folder per built image, and ``lightvm image list|rm``.

Kept free of the builder's imports (no subprocess, no tinyx.image.build) so that
``lightvm image list`` starts as fast as the rest of the CLI.

Where: ``$LIGHTVM_IMAGE_DIR``, else /var/lib/lightvm/images for root, else
``${XDG_DATA_HOME:-~/.local/share}/lightvm/images``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from lightvm.errors import NotFoundError, TinyxError

ENV = "LIGHTVM_IMAGE_DIR"
ROOT_DIR = Path("/var/lib/lightvm/images")
REPORT = "report.json"


def default_dir() -> Path:
    env = os.environ.get(ENV)
    if env:
        return Path(env)
    if os.geteuid() == 0:
        return ROOT_DIR
    data = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data) / "lightvm" / "images"


def folder_bytes(path: Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(path):
        for f in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, f)).st_size
    return total


def list_images(store: Path) -> list[dict[str, Any]]:
    """Every image folder of ``store`` (those with a report), by name."""
    out: list[dict[str, Any]] = []
    if not store.is_dir():
        return out
    for folder in sorted(store.iterdir()):
        if not folder.is_dir() or folder.name.endswith(".tmp") or ".old-" in folder.name:
            continue
        try:
            report = json.loads((folder / REPORT).read_text())
        except (OSError, ValueError):
            continue
        app = report.get("app", {})
        version = app.get("version") or ""
        out.append(
            {
                "name": folder.name,
                "path": str(folder),
                "bytes": folder_bytes(folder),
                "app": f"{app.get('package') or app.get('command', ['?'])[0]} {version}".strip(),
                "built_at": report.get("built_at", "?"),
                "initramfs_bytes": report.get("initramfs", {}).get("bytes"),
            }
        )
    return out


def remove(store: Path, name: str) -> Path:
    """Remove the image ``name``; NotFoundError if the store has no such image."""
    if not name or "/" in name or name in (".", ".."):
        raise TinyxError(f"{name!r} is not an image name (lightvm image list shows them)")
    folder = store / name
    if not (folder / REPORT).is_file():
        raise NotFoundError(f"no image {name!r} in {store} (lightvm image list shows the images there)")
    shutil.rmtree(folder)
    return folder
