#!/bin/bash
# Build lightvm's slim qemu-system-x86_64 from Debian's own qemu source package.
#
# Why: Debian's qemu-system-x86_64 spends ~17 ms starting (51 shared libraries bound at
# load time, every device type registered) before it does anything, and that bounds our
# cold boot. Debian's qemu-system-x86_64-microvm starts in ~3.5 ms but has no TCG and no
# ivshmem. This is that microvm flavour (debian/rules, configure-microvm) with TCG, KVM,
# and the devices in qemu/devices.mak, built from the same source with Debian's patches.
#
# Patches: qemu/patches/*.patch (-p1, in name order) go over Debian's source; each says why
# at its top (idle-memory.patch: ~3 MiB less per idle microvm QEMU; tb-htable.patch: ~0.45 MiB
# less; docs/memory.md).
#
# Result: qemu/build/<hash>/qemu-system-x86_64, and qemu/build/current -> <hash>. The hash
# covers the Debian source version, this script (so its configure flags), devices.mak and
# the patches; when that build exists already the script only checks it and exits.
# lightvm/qemubin.py picks the binary up.
#
# Usage: qemu/build.sh            (as root, or a user who may apt-get; Debian 12)
# Env:   JOBS (ninja -j; default nproc)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
OUT=$HERE/build
SRC_CACHE=$OUT/src
DEVICES=$HERE/devices.mak
shopt -s nullglob
PATCHES=("$HERE"/patches/*.patch)
shopt -u nullglob
SOURCES_FILE=/etc/apt/sources.list.d/lightvm-deb-src.sources
JOBS=${JOBS:-$(nproc)}
# Debian's python3 and meson, not a pyenv or venv one that happens to be first on PATH.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin:$PATH
T0=$SECONDS

# Debian 12 package names; what configure and the build below really use.
BUILD_DEPS=(
    dpkg-dev xz-utils patch  # apt-get source, dpkg-source -x (applies Debian's patches); ours: patch
    gcc libc6-dev make pkg-config  # libc6-dev: only a Recommends of gcc
    python3 meson ninja-build
    libglib2.0-dev         # QEMU's main loop, also what libslirp links
    libpixman-1-dev        # required by QEMU's softmmu core even without a display
    zlib1g-dev             # migration, -kernel loaders
    libfdt-dev             # x86_64 target needs FDT (microvm builds a device tree)
    libslirp-dev           # -netdev user
    libseccomp-dev         # -sandbox: the jail's syscall filter (lightvm/jail.py)
)

# After Debian's configure-microvm (debian/rules), with TCG on and no display, audio,
# TLS or UI library. Everything not enabled here is off (--without-default-features).
CONFIGURE_FLAGS=(
    --prefix=/usr
    --sysconfdir=/etc
    --localstatedir=/var
    --firmwarepath=/usr/share/qemu:/usr/share/seabios:/usr/lib/ipxe/qemu
    --with-git-submodules=ignore
    --disable-install-blobs
    --disable-docs
    --disable-debug-info
    --without-default-features
    --without-default-devices
    --with-devices-x86_64=lightvm
    --disable-user
    --target-list=x86_64-softmmu
    --enable-tcg
    --enable-kvm
    --enable-slirp
    --enable-seccomp
    --enable-fdt=system
    --enable-malloc-trim
    --audio-drv-list=
    --extra-cflags="-O2"
    --extra-ldflags="-Wl,--as-needed"
)

step() { printf '[qemu/build.sh +%3ds] %s\n' "$((SECONDS - T0))" "$*"; }
die() {
    printf 'qemu/build.sh: error: %s\n' "$*" >&2
    exit 1
}
# run SECONDS WHAT CMD...: CMD under a timeout; on failure say what failed and stop.
run() {
    local secs=$1 what=$2
    shift 2
    timeout --kill-after=10 "$secs" "$@" || die "$what failed (exit $?): $*"
}

as_root=()
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || die "not root and no sudo: run as root (it installs build dependencies with apt-get)"
    as_root=(sudo -n)
fi

# -- 1. Debian's qemu source: which version ------------------------------------------------
sources=$(
    cat <<'EOF'
# Written by lightvm's qemu/build.sh: source packages, to build a slim QEMU.
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb-src
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
)
need_update=no
if [ ! -f "$SOURCES_FILE" ] || [ "$(cat "$SOURCES_FILE")" != "$sources" ]; then
    step "writing $SOURCES_FILE (deb-src for bookworm, bookworm-updates, bookworm-security)"
    printf '%s\n' "$sources" | run 30 "writing $SOURCES_FILE" "${as_root[@]}" tee "$SOURCES_FILE" >/dev/null
    need_update=yes
fi

# The newest qemu source version apt knows of (what `apt-get source qemu` would fetch).
source_version() {
    local best="" v
    while read -r v; do
        if [ -z "$best" ] || dpkg --compare-versions "$v" gt "$best"; then best=$v; fi
    done < <(timeout 60 apt-cache showsrc --only-source qemu 2>/dev/null | sed -n 's/^Version: //p')
    printf '%s' "$best"
}
version=""
[ "$need_update" = yes ] || version=$(source_version)
if [ -z "$version" ]; then
    step "apt-get update"
    run 300 "apt-get update" "${as_root[@]}" apt-get update -q
    version=$(source_version)
    [ -n "$version" ] || die "apt knows no qemu source package after apt-get update: check $SOURCES_FILE and the network"
fi

hash=$(
    {
        printf 'debian-source qemu %s\n' "$version"
        cat "$HERE/build.sh" "$DEVICES" ${PATCHES[@]+"${PATCHES[@]}"}
    } | sha256sum | cut -c1-16
)
patched=$(cat ${PATCHES[@]+"${PATCHES[@]}"} </dev/null | sha256sum | cut -c1-12)
dest=$OUT/$hash
binary=$dest/qemu-system-x86_64

# -- 2. Already built? ---------------------------------------------------------------------
if [ -x "$binary" ] && timeout 10 "$binary" -version >/dev/null 2>&1; then
    if [ "$(readlink "$OUT/current" 2>/dev/null)" != "$hash" ]; then
        ln -sfn "$hash" "$OUT/.current-$hash"
        mv -T "$OUT/.current-$hash" "$OUT/current"
    fi
    step "up to date: $binary (Debian qemu $version); qemu/build/current -> $hash"
    exit 0
fi
step "building slim QEMU from Debian qemu $version -> qemu/build/$hash (jobs: $JOBS)"
# -version then says "QEMU emulator version 7.2.x (lightvm slim, Debian 1:7.2+dfsg-...)".
CONFIGURE_FLAGS+=(--with-pkgversion="lightvm slim, Debian $version")

# -- 3. Build dependencies -----------------------------------------------------------------
missing=()
for pkg in "${BUILD_DEPS[@]}"; do
    [ "$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null)" = installed ] || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    step "apt-get install ${missing[*]}"
    run 900 "apt-get install" "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# -- 4. Fetch and unpack the source (Debian's patches applied by dpkg-source -x) --------------
upstream=${version#*:}
# One unpacked tree per patch set: a tree is never patched twice or half-patched and reused.
srcdir=$SRC_CACHE/qemu-$upstream-p$patched
if [ ! -f "$srcdir/.lightvm-unpacked" ]; then
    mkdir -p "$SRC_CACHE"
    rm -rf "$srcdir"
    if [ ! -f "$SRC_CACHE/qemu_$upstream.dsc" ]; then
        step "apt-get source qemu=$version (~24 MB) into qemu/build/src"
        (cd "$SRC_CACHE" && run 600 "apt-get source" apt-get source -q --download-only \
            -o APT::Sandbox::User=root "qemu=$version")
    fi
    step "dpkg-source -x (unpack, apply Debian's patches)"
    run 300 "dpkg-source -x" dpkg-source -q -x "$SRC_CACHE/qemu_$upstream.dsc" "$srcdir" >/dev/null
    for p in ${PATCHES[@]+"${PATCHES[@]}"}; do
        step "patch -p1 < qemu/patches/$(basename "$p")"
        run 60 "patch $(basename "$p")" patch -p1 --batch --forward --quiet -d "$srcdir" -i "$p"
    done
    touch "$srcdir/.lightvm-unpacked"
    # Trees of other patch sets (hundreds of MB each) are not needed any more.
    for old in "$SRC_CACHE"/qemu-"$upstream" "$SRC_CACHE"/qemu-"$upstream"-p*; do
        [ "$old" = "$srcdir" ] || rm -rf "$old"
    done
fi
cp "$DEVICES" "$srcdir/configs/devices/x86_64-softmmu/lightvm.mak"

# -- 5. Configure and build ----------------------------------------------------------------
obj=$OUT/obj-$hash
rm -rf "$obj"
mkdir -p "$obj"
# Link pixman, libfdt and zlib statically: three fewer libraries to map and relocate at
# every start (-version: ~0.4 ms of ~3.4 ms CPU, measured with qemu/measure_start.py).
# glib stays shared: libslirp.so links it, and two glibs in one process would not share
# state (Debian has no static libslirp). BIND_NOW stays too: -z lazy saved ~0.3 ms on
# -version but leaves the GOT writable in a process that faces hostile guests.
static=$obj/static-libs
mkdir -p "$static/pkgconfig"
libdir=$(pkg-config --variable=libdir pixman-1)
for pair in pixman-1:pixman-1 zlib:z; do
    pc=${pair%%:*} lib=${pair##*:}
    [ -f "$libdir/lib$lib.a" ] || die "$libdir/lib$lib.a missing (from the -dev package of $pc)"
    sed -E "s|^Libs:.*|Libs: $libdir/lib$lib.a|" "$(pkg-config --variable=pcfiledir "$pc")/$pc.pc" >"$static/pkgconfig/$pc.pc"
done
[ -f "$libdir/libfdt.a" ] || die "$libdir/libfdt.a missing (libfdt-dev)"
ln -s "$libdir/libfdt.a" "$static/libfdt.a" # found first through -L, so -lfdt links it
export PKG_CONFIG_PATH=$static/pkgconfig
CONFIGURE_FLAGS+=(--extra-ldflags="-L$static")

step "configure (log: qemu/build/obj-$hash/configure.log)"
if ! (cd "$obj" && timeout --kill-after=10 600 "$srcdir/configure" "${CONFIGURE_FLAGS[@]}" >configure.log 2>&1); then
    tail -n 40 "$obj/configure.log" >&2
    die "configure failed; full log: $obj/configure.log"
fi

step "ninja -j$JOBS qemu-system-x86_64 (log: qemu/build/obj-$hash/ninja.log; progress every 100 steps)"
# Print ninja's [n/total] every 100 steps and the last one, keep the whole log.
if ! timeout --kill-after=10 2400 ninja -C "$obj" -j "$JOBS" qemu-system-x86_64 2>&1 |
    tee "$obj/ninja.log" |
    awk -v t0="$T0" -v now="$SECONDS" '
        match($0, /^\[[0-9]+\/[0-9]+\]/) {
            split(substr($0, 2, RLENGTH - 2), p, "/")
            if (p[1] % 100 == 0 || p[1] == p[2]) { printf "[qemu/build.sh] ninja %s/%s\n", p[1], p[2]; fflush() }
        }'; then
    grep -B2 -A20 -m1 'FAILED\|error:' "$obj/ninja.log" >&2 || tail -n 40 "$obj/ninja.log" >&2
    die "ninja failed (or timed out); full log: $obj/ninja.log"
fi

# -- 6. Install: atomically, then point current at it ----------------------------------------
built=$obj/qemu-system-x86_64
if ldd "$built" | grep -E 'lib(pixman-1|fdt|z)\.so' >&2; then die "$built links the libraries above dynamically; expected them static"; fi
timeout 10 "$built" -version >/dev/null || die "the built $built does not run"
tmp=$OUT/.tmp-$hash
rm -rf "$tmp"
mkdir -p "$tmp"
install -m 0755 -s "$built" "$tmp/qemu-system-x86_64"
# QEMU 7.2 finds its data (bios-microvm.bin for -M microvm without -bios, SeaBIOS, option
# ROMs) relative to its own directory: <dir>/../share/qemu for a binary installed in
# /usr/bin. A <dir>/qemu-bundle directory overrides that (util/cutils.c get_relocated_path:
# <dir>/qemu-bundle + /usr/share/qemu), so qemu-bundle/usr -> /usr makes this binary use the
# same firmware as Debian's, from the packages already installed. (Only usr: a link to /
# inside the repo would be one `find -L` away from trouble.)
mkdir "$tmp/qemu-bundle"
ln -s /usr "$tmp/qemu-bundle/usr"
# patches= tells lightvm which of our QEMU options this build has (lightvm/qemubin.py).
patch_names=()
for p in ${PATCHES[@]+"${PATCHES[@]}"}; do patch_names+=("$(basename "$p")"); done
printf 'debian_source_version=%s\nconfigure=%s\npatches=%s\n' "$version" "${CONFIGURE_FLAGS[*]}" \
    "${patch_names[*]-}" >"$tmp/BUILDINFO"
rm -rf "$dest"
mv "$tmp" "$dest"
# Replace the link atomically: a resolver never sees qemu/build/current missing.
ln -sfn "$hash" "$OUT/.current-$hash"
mv -T "$OUT/.current-$hash" "$OUT/current"
# Older object trees are dead weight (hundreds of MB); keep this one for quick rebuilds.
for old in "$OUT"/obj-*; do
    [ "$old" = "$obj" ] || rm -rf "$old"
done
step "done: $binary ($(du -h "$binary" | cut -f1), $("$binary" -version | head -n1)); qemu/build/current -> $hash"
