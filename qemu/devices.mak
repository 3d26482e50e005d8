# lightvm's slim qemu-system-x86_64: the devices we pass, nothing else.
# Copied by qemu/build.sh to configs/devices/x86_64-softmmu/lightvm.mak and used with
# --without-default-devices --with-devices-x86_64=lightvm, after Debian's microvm flavour
# (debian/microvm-devices.mak, debian/rules target configure-microvm).
# What lightvm passes: lightvm/machine.py build_argv, tests/guestlib.py qemu_argv,
# lightvm/devices/{net,blk}.py.

# No PCI device is built unless named below (Debian's microvm flavour does the same).
CONFIG_PCI_DEVICES=n

# Boards. microvm is ours; it selects VIRTIO_MMIO, SERIAL_ISA, the APIC/IOAPIC/8259/8254/RTC,
# ACPI_HW_REDUCED and PCI_EXPRESS_GENERIC_BRIDGE (GPEX, for -M microvm,pcie=on).
# Debian keeps Q35 because QEMU 7.2 does not link with microvm as the only x86 board
# (see debian/microvm-devices.mak); lightvm runs pc/q35 guests on Debian's full binary
# (lightvm/qemubin.py), since those need SeaBIOS, option ROMs and more devices.
CONFIG_MICROVM=y
CONFIG_Q35=y

# The NoXS page: ivshmem-plain on microvm's PCIe (master=on for migration).
CONFIG_IVSHMEM_DEVICE=y
# The guests' poweroff: isa-debug-exit,iobase=0xf4,iosize=4.
CONFIG_ISA_DEBUG=y

# NICs and disks: virtio-net-device / virtio-blk-device on virtio-mmio (microvm's
# transports) and virtio-net-pci / virtio-blk-pci on microvm's PCIe.
CONFIG_VIRTIO_MMIO=y
CONFIG_VIRTIO_PCI=y
CONFIG_VIRTIO_NET=y
CONFIG_VIRTIO_BLK=y
