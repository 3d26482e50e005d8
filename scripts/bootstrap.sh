#!/usr/bin/env bash
# Idempotent set-up for a fresh Debian 12 machine: system packages, the Python
# venv (.venv) and the guest images. Both README commands start with it, so a
# new machine needs nothing else. Safe to re-run: it only does what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
    qemu-system-x86      # the hypervisor we drive (qemu-system-x86_64, microvm)
    gcc make binutils    # guest unikernels, the noxs-read tool and the `lightvm` launcher (bin/launcher.c)
    libc6-dev            # noxs-read and the launcher are static Linux programs
    python3 python3-venv # the toolstack
    iproute2 nftables    # namespaces in tests; NAT for --nat networks
    iputils-ping netcat-openbsd busybox  # real clients for the guests in tests
    openssh-server       # each test "host" (a netns) runs its own sshd for migration
    crun                 # the container baseline of `lightvm bench`
    libvirt-daemon libvirt-daemon-driver-qemu  # the libvirt baseline (a private libvirtd)
    libvirt-dev pkg-config python3-dev         # to build libvirt-python in the venv
    xen-utils-4.17       # its real C xenstored: the XenStore baseline of `lightvm bench` (lightvm/bench/xenstore/store.py)
    linux-source-6.1 xz-utils flex bison bc libelf-dev libssl-dev  # the Tinyx kernel (tinyx/kernel/build.py)
    debootstrap lz4      # Tinyx images: the base tree the app's packages go over; lz4 initramfs
    cpio                 # tests/unit/test_tinyx_cpio.py: GNU cpio reads back the archives tinyx/cpio.py writes
    redis-tools          # the real redis-cli that talks to a Tinyx redis-server VM in tests
    strace               # tests/root/test_wheel_install.py: proves an installed wheel opens nothing in the checkout
    zsh                  # tests/functional/test_cli_live.py: the zsh completion script, typed into a real zsh
)

need=()
for pkg in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
done
if ((${#need[@]})); then
    if [[ $(id -u) -ne 0 ]]; then
        echo "bootstrap: missing packages: ${need[*]}; run as root or: sudo apt-get install ${need[*]}" >&2
        exit 1
    fi
    echo "bootstrap: installing ${need[*]}"
    timeout 900 apt-get update -q
    DEBIAN_FRONTEND=noninteractive timeout 1800 apt-get install -y -q --no-install-recommends "${need[@]}"
fi

PY=${PYTHON:-python3}
if [[ ! -x .venv/bin/python ]] || ! .venv/bin/python -c 'import sys; assert sys.version_info >= (3, 11)' 2>/dev/null; then
    echo "bootstrap: creating .venv"
    rm -rf .venv
    "$PY" -m venv .venv
fi
stamp=.venv/.lightvm-deps
# Again when what the install builds changed: the metadata, or the compiled `lightvm` launcher
# (setup.py compiles bin/launcher.c into .venv/bin/lightvm; lightvm-py is the Python command).
if [[ ! -f $stamp || pyproject.toml -nt $stamp || setup.py -nt $stamp || bin/launcher.c -nt $stamp ]]; then
    echo "bootstrap: installing Python dependencies"
    timeout 900 .venv/bin/pip install -q --disable-pip-version-check -e '.[dev,bench,libvirt]'
    touch "$stamp"
fi

echo "bootstrap: building guest images"
timeout 600 make -s -C images
timeout 300 make -s -C noxs-virtio

# The slim QEMU lightvm runs for microvm guests (qemu/build.sh; lightvm/qemubin.py picks it
# up, Debian's full binary stays for pc/q35 and libvirt). A no-op when this build exists.
echo "bootstrap: building the slim QEMU (qemu/build.sh; ~10 min on a fresh 2-core machine)"
if ! timeout 3600 qemu/build.sh; then
    echo "bootstrap: error: building the slim QEMU failed: see qemu/build.sh's message above (logs in qemu/build/obj-*/)" >&2
    exit 1
fi
