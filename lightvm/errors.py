"""The lightvm error tree: every error the package raises derives from one root.

LightVMError                 root; str(err) is one line saying what to do
 +-- SpecError               a VM config file is invalid (names file and key)
 +-- NoxsError               the NoXS region cannot be built or read
 +-- StateError              an operation needs another VM/machine state
 +-- MachineError            a QEMU process failed (carries argv, exit code, log)
 |    +-- LaunchError        QEMU did not start or QMP did not answer
 |    +-- QMPError           a QMP command failed or timed out
 +-- GuestError              the guest reported an error or never became READY
 +-- NetworkError            bridge/tap/address setup failed
 |    +-- SubnetConflictError    a subnet overlaps another network or a host address
 |    +-- AddressExhaustedError  a network has no free IP address left
 |    +-- ForeignLinkError       an interface of that name exists and is not lightvm's
 |    +-- CapabilityError        the operation needs CAP_NET_ADMIN (or a tool) we lack
 +-- NotFoundError           no such VM (or network)
 +-- ExistsError             a VM (or network) with that name exists
 +-- AccelError              the requested accelerator cannot be used
 +-- TinyxError              a Tinyx image cannot be built (recipe, apt, ELF closure, ...)
"""

from __future__ import annotations


class LightVMError(Exception):
    """Root of every error lightvm raises on purpose."""


class SpecError(LightVMError):
    """A VM specification is invalid."""


class NoxsError(LightVMError):
    """The NoXS shared page cannot be created, written or read."""


class StateError(LightVMError):
    """An operation was asked of a VM or machine in the wrong state."""


class MachineError(LightVMError):
    """A QEMU process failed."""


class LaunchError(MachineError):
    """QEMU did not start, or its QMP socket did not answer in time."""


class QMPError(MachineError):
    """A QMP command failed or timed out."""


class GuestError(LightVMError):
    """The guest reported an error, or never became READY."""


class NetworkError(LightVMError):
    """A bridge, tap or address could not be set up."""


class SubnetConflictError(NetworkError):
    """A subnet overlaps another lightvm network or an address on the host."""


class AddressExhaustedError(NetworkError):
    """A network has no free IP address (or MAC) left to lease."""


class ForeignLinkError(NetworkError):
    """An interface by that name exists and was not created by lightvm."""


class CapabilityError(NetworkError):
    """The operation needs a capability (CAP_NET_ADMIN) or a host tool that is missing."""


class NotFoundError(LightVMError):
    """No VM (or network) by that name."""


class ExistsError(LightVMError):
    """A VM (or network) by that name already exists."""


class AccelError(LightVMError):
    """The requested accelerator is unusable on this host."""


class TinyxError(LightVMError):
    """A Tinyx image cannot be built: a bad recipe, an unknown package, a failed
    debootstrap or apt-get, a library missing from the ELF closure."""


class SetupError(LightVMError):
    """``lightvm setup`` could not build what it was asked for (the message says what to run)."""
