"""Moving VMs in time and space: the checkpoint format (:mod:`.format`), save
(:mod:`.save`), restore (:mod:`.restore`), QEMU's migration stream both ways
(:mod:`.stream`), and live migration: the source side (:mod:`.migrate`) and the
receiving side (:mod:`.receive`).

The migration defaults live here, not in :mod:`lightvm.mobility.migrate`: the CLI shows them
in ``--help``, and parsing any lightvm command must not import paramiko and the migration code.
"""

DEFAULT_BANDWIDTH_MIB = 4096  # QEMU's default (128 MiB/s) never converges for a guest writing memory
DEFAULT_DOWNTIME_MS = 10
