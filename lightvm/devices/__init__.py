"""Device modules: one per device type, each with the same small interface.

A device module turns one entry of a VM spec into host resources and QEMU
arguments, in four steps the toolstack calls in order:

1. ``validate(spec_entry) -> Spec``: pure; a :class:`~lightvm.errors.SpecError`
   before anything exists on the host.
2. ``prepare(spec, vm_name, index, ctx, undo) -> Prepared``: create the host
   resources (tap, lease, file, ...) and push the inverse of each onto ``undo``
   (a :class:`~lightvm.undo.UndoStack`), so a failure later in VM creation
   unwinds them. ``Prepared`` is a plain dataclass with ``to_dict()`` /
   ``from_dict()`` so the toolstack can keep it in the VM's state folder.
3. ``qemu_args(prepared, ...) -> list[str]``: the QEMU command-line fragment.
4. ``release(prepared, vm_name, ctx)``: undo ``prepare`` at destroy time;
   idempotent, works from a ``Prepared`` read back from disk after a restart.

Modules with a NoXS entry (vif, vbd) also offer ``noxs_config(prepared)``
returning the :mod:`lightvm.noxs` config the host writes into the guest's page.
:class:`DeviceModule` states the shared part as a Protocol for type checking.
"""

from __future__ import annotations

from typing import Any, Protocol


class DeviceModule(Protocol):
    """The functions every device module provides (see the module docstring)."""

    def validate(self, spec_entry: Any, where: str = ...) -> Any: ...
    def prepare(self, spec: Any, vm_name: str, index: int, ctx: Any, undo: Any) -> Any: ...
    def qemu_args(self, prepared: Any, machine: str = ...) -> list[str]: ...
    def release(self, prepared: Any, vm_name: str, ctx: Any) -> None: ...
