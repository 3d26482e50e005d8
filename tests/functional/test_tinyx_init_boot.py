"""lvinit (tinyx/init), the Tinyx init, as PID 1 of the platform kernel under lightvm's QEMU.

Each test packs an initramfs with tinyx/cpio.py: /init is lvinit, /bin/busybox is Debian's
busybox-static (from its .deb, cached under tinyx/build/init/) with applet links, and
/etc/tinyx/app.conf names the app. It boots with tests/guestlib.py's Guest, i.e. the product's
QEMU command line (lightvm.machine.build_argv) with what a Linux guest gets: microvm with
``rtc=on``, 128 MiB, ``console=ttyS0 quiet tsc_early_khz=<host kHz>``, TCG, SeaBIOS. The tests
read the NoXS boot record as the host does. Network tests: QEMU opens a tap while paused in
the root namespace, the test moves it into its own namespace (nettools.Netns.adopt_tap) and
talks to the app from there. QEMU, region, namespace and files go in ``finally``.

The kernel is tinyx/kernel/build.py's cached build (building it takes ~6 min if the cache is
empty, hence the module's timeout).
"""

from __future__ import annotations

import os
import socket
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest
from nettools import Netns, require_netns

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from guestlib import EXIT_FATAL, EXIT_POWEROFF, QEMU, Guest, vif0_counter

from lightvm import hostfacts
from lightvm.machine import MICROVM
from lightvm.noxs import BootState, GuestErrorCode, PageConfig, Sysctl, TscSource, VifConfig, XenbusState
from tinyx import cpio
from tinyx.init import build_init
from tinyx.kernel.build import BUILD, build
from tinyx.probe_boot import static_busybox

pytestmark = [pytest.mark.functional, pytest.mark.timeout(900)]

GUEST_IP = "10.213.0.2"
HOST_IP = "10.213.0.1"
GUEST_MAC = "52:54:00:13:00:02"
MTU = 1400
MACHINE = MICROVM.replace("rtc=off", "rtc=on")  # what a Linux guest gets (docs/tinyx.md)
MEMORY = "128M"
APPLETS = ("sh", "cat", "echo", "false", "sleep", "hostname", "httpd", "nc")
BOOT_TIMEOUT = 60.0  # TCG on a shared 2-core host: ~1-2 s to /init, more under load
INDEX = b"served by busybox httpd under lvinit\n"
CGI_INFO = b"""#!/bin/sh
echo "Content-Type: text/plain"
echo
echo "hostname=$(hostname)"
echo "mtu=$(cat /sys/class/net/eth0/mtu)"
echo "greeting=$GREETING"
echo "home=$HOME"
cat /proc/net/route
"""

HTTPD_CONF = """# busybox httpd in the foreground, as a real app would run
name=httpd
port=8080
arg=/bin/busybox
arg=httpd
arg=-f
arg=-p
arg=8080
arg=-h
arg=/www
env=GREETING=hello from app.conf
cwd=/www
stop_timeout_ms=2000
"""


@pytest.fixture(scope="module")
def kernel() -> Path:
    if not Path(QEMU).is_file():
        pytest.fail(f"QEMU {QEMU} is missing (qemu/build.sh or Debian's qemu-system-x86)")
    return build()


@pytest.fixture(scope="module")
def parts() -> tuple[bytes, bytes]:
    """(lvinit, busybox-static) as bytes."""
    return build_init().read_bytes(), static_busybox(BUILD / "init").read_bytes()


def pack(path: Path, parts: tuple[bytes, bytes], app_conf: str) -> Path:
    init, busybox = parts
    entries = [cpio.directory(d) for d in ("bin", "dev", "etc", "etc/tinyx", "proc", "sys", "tmp", "run")]
    entries += [cpio.directory("www"), cpio.directory("www/cgi-bin")]
    entries.append(cpio.chardev("dev/console", 5, 1))
    entries.append(cpio.regular("bin/busybox", busybox, 0o755))
    entries += [cpio.symlink(f"bin/{a}", "busybox") for a in APPLETS]
    entries.append(cpio.regular("init", init, 0o755))
    entries.append(cpio.regular("etc/tinyx/app.conf", app_conf.encode()))
    entries.append(cpio.regular("www/index.html", INDEX))
    entries.append(cpio.regular("www/cgi-bin/info", CGI_INFO, 0o755))
    with path.open("wb") as f:
        cpio.write(entries, f)
    return path


def cmdline() -> str:
    return f"console=ttyS0 quiet tsc_early_khz={hostfacts.tsc_hz() // 1000}"


def vif(mac: str = GUEST_MAC) -> VifConfig:
    return VifConfig(mac=bytes.fromhex(mac.replace(":", "")), ip=GUEST_IP, prefix=24, gateway=HOST_IP, mtu=MTU)


@contextmanager
def guest(
    kernel: Path,
    parts: tuple[bytes, bytes],
    tmp_path: Path,
    app_conf: str,
    *,
    page: PageConfig | None = None,
    nic: Sequence[str] = (),
    ns: Netns | None = None,
    console_bell: bool = False,
    debug_exit: bool = True,
) -> Iterator[Guest]:
    """A Linux guest booted with ``app_conf`` (not yet waited on): paused first when ``ns``
    gets its tap, else started at once."""
    initrd = pack(tmp_path / "initramfs.cpio", parts, app_conf)
    page = page or PageConfig(name="tinyx-test", tsc_hz=hostfacts.tsc_hz())
    extra = ["-initrd", str(initrd), "-append", cmdline(), *nic]
    devices = 1 + len(page.vifs)
    with Guest(
        kernel,
        device_count=devices,
        memory=MEMORY,
        machine=MACHINE,
        firmware=None,
        extra_args=extra,
        qmp=True,
        console_bell=console_bell,
        debug_exit=debug_exit,
    ) as g:
        g.write_config(page)
        g.launch(paused=True)
        if ns is not None:
            ns.adopt_tap()
        g.cont()
        yield g


def tap_nic(ns: Netns) -> list[str]:
    return [
        "-netdev",
        f"tap,id=n0,ifname={ns.tap},script=no,downscript=no",
        "-device",
        f"virtio-net-device,netdev=n0,mac={GUEST_MAC}",
    ]


def init_timing(console: str) -> str:
    """The init's own READY line (kernel ms, /init to READY ms), for the test output."""
    return next((ln.strip() for ln in console.splitlines() if "lvinit: READY" in ln), "no READY line")


def http_get(ns: Netns, path: str) -> str:
    """The body of GET ``path`` from the guest's httpd, fetched inside the namespace."""
    script = f"import urllib.request,sys;sys.stdout.write(urllib.request.urlopen('http://{GUEST_IP}:8080{path}',timeout=10).read().decode())"
    return ns.exec([sys.executable, "-c", script], timeout=30).stdout


def vif_counter(g: Guest, name: str) -> int:
    assert g.region is not None
    return vif0_counter(g.region.raw(), name)


@pytest.mark.root
def test_http_app_ready_on_its_vif_then_poweroff(kernel: Path, parts: tuple[bytes, bytes], tmp_path: Path) -> None:
    require_netns()
    hz = hostfacts.tsc_hz()
    page = PageConfig(name="web-1", tsc_hz=hz, vifs=[vif()])
    with (
        Netns(HOST_IP, create_tap=False) as ns,
        guest(kernel, parts, tmp_path, HTTPD_CONF, page=page, nic=tap_nic(ns), ns=ns) as g,
    ):
        rec = g.wait_boot_state(BootState.READY, timeout=BOOT_TIMEOUT)
        assert g.region is not None and g.resumed_at is not None and g.ready_at is not None
        assert rec.app == "httpd" and rec.error == GuestErrorCode.NONE
        assert rec.tsc_hz == hz and rec.tsc_source == TscSource.PAGE
        assert 0 < rec.tsc_entry < rec.tsc_devices_up <= rec.tsc_ready
        # The kernel's clock start -> READY fits in the host's cont -> READY.
        kernel_to_ready = rec.tsc_delta_ms(rec.tsc_entry, rec.tsc_ready)
        assert kernel_to_ready is not None and kernel_to_ready <= (g.ready_at - g.resumed_at) * 1000 + 50
        page_gen = int.from_bytes(g.region.raw()[24:32], "little")
        assert rec.generation_seen == page_gen & 0xFFFFFFFF
        assert g.region.frontend_state(0) == XenbusState.CONNECTED  # sysctl
        assert g.region.frontend_state(1) == XenbusState.CONNECTED  # the vif
        console = g.wait_console("lvinit: READY httpd", timeout=10)
        assert f"lvinit: vif 0: eth0 {GUEST_MAC} {GUEST_IP}/24 gw {HOST_IP} mtu {MTU}" in console
        print(f"\nboot record: kernel clock start -> READY {kernel_to_ready:.0f} ms; {init_timing(console)}")

        assert http_get(ns, "/").encode() == INDEX
        info = dict(ln.split("=", 1) for ln in http_get(ns, "/cgi-bin/info").splitlines() if "=" in ln)
        assert info["hostname"] == "web-1"  # the VM name, via sethostname
        assert info["mtu"] == str(MTU)
        assert info["greeting"] == "hello from app.conf"  # env= reaches the app (and its CGI)
        route = http_get(ns, "/cgi-bin/info").split("Iface", 1)[1]
        # /proc/net/route: the default route (destination 0) via 10.213.0.1 (hex, little-endian)
        assert any(f.split()[1:3] == ["00000000", "0100D50A"] for f in route.splitlines()[1:]), route
        time.sleep(1.5)  # the init copies the NIC's counters about once a second
        assert vif_counter(g, "rx_packets") > 0 and vif_counter(g, "tx_packets") > 0

        g.power_off_cleanly(devices=2)
        assert "lvinit: poweroff (app killed by signal 15)" in g.console()


@pytest.mark.root
def test_echo_app_over_the_vif(kernel: Path, parts: tuple[bytes, bytes], tmp_path: Path) -> None:
    """busybox nc as a persistent echo server (-ll: one cat per client; a plain -l would
    serve only the init's readiness probe)."""
    require_netns()
    conf = "name=echo\nport=7777\narg=/bin/busybox\narg=nc\narg=-ll\narg=-p\narg=7777\narg=-e\narg=/bin/cat\n"
    page = PageConfig(name="echo-1", tsc_hz=hostfacts.tsc_hz(), vifs=[vif()])
    with (
        Netns(HOST_IP, create_tap=False) as ns,
        guest(kernel, parts, tmp_path, conf, page=page, nic=tap_nic(ns), ns=ns) as g,
    ):
        g.wait_boot_state(BootState.READY, timeout=BOOT_TIMEOUT)
        script = (
            "import socket;"
            f"s=socket.create_connection(('{GUEST_IP}',7777),timeout=10);"
            "s.sendall(b'ping over the vif\\n');"
            "print(s.recv(100).decode(),end='')"
        )
        assert ns.exec([sys.executable, "-c", script], timeout=30).stdout == "ping over the vif\n"
        assert g.region is not None
        g.region.request(Sysctl.POWEROFF)
        assert g.wait_exit(timeout=30) == EXIT_POWEROFF
        assert g.boot_record().state == BootState.HALTED


def test_app_that_exits_at_once_is_an_app_error(kernel: Path, parts: tuple[bytes, bytes], tmp_path: Path) -> None:
    with guest(kernel, parts, tmp_path, "name=false\nport=8080\narg=/bin/false\n") as g:
        assert g.wait_exit(timeout=BOOT_TIMEOUT) == EXIT_FATAL
        rec = g.boot_record()
        assert rec.state == BootState.ERROR and rec.error == GuestErrorCode.APP
        assert rec.message == "app exited with status 1 before READY"
        assert rec.app == "false" and rec.tsc_devices_up > 0 and rec.tsc_ready == 0
        assert "lvinit: app exited with status 1 before READY" in g.console()


def test_port_zero_is_ready_at_exec_and_a_later_exit_is_fatal(
    kernel: Path, parts: tuple[bytes, bytes], tmp_path: Path
) -> None:
    with guest(kernel, parts, tmp_path, "name=sleeper\nport=0\narg=/bin/sleep\narg=2\n") as g:
        rec = g.wait_boot_state(BootState.READY, timeout=BOOT_TIMEOUT)
        assert rec.app == "sleeper" and rec.tsc_ready >= rec.tsc_devices_up
        assert g.wait_exit(timeout=30) == EXIT_FATAL
        rec = g.boot_record()
        assert rec.state == BootState.ERROR and rec.error == GuestErrorCode.APP
        assert rec.message == "app exited with status 0"


def test_app_ignoring_sigterm_is_killed_after_stop_timeout(
    kernel: Path, parts: tuple[bytes, bytes], tmp_path: Path
) -> None:
    script = "trap '' TERM; echo stubborn-armed; while :; do sleep 1; done"
    conf = f"name=stubborn\nport=0\narg=/bin/sh\narg=-c\narg={script}\nstop_timeout_ms=300\n"
    with guest(kernel, parts, tmp_path, conf) as g:
        g.wait_boot_state(BootState.READY, timeout=BOOT_TIMEOUT)
        g.wait_console("stubborn-armed", timeout=20)  # port=0: READY comes at the exec, before the trap
        assert g.region is not None
        g.region.request(Sysctl.POWEROFF)
        assert g.wait_exit(timeout=30) == EXIT_POWEROFF
        assert g.boot_record().state == BootState.HALTED
        console = g.console()
        assert "lvinit: app did not stop within 300 ms: SIGKILL" in console
        assert "lvinit: poweroff (app killed by signal 9)" in console


def cpu_share(g: Guest, window: float = 2.0) -> float:
    """QEMU's CPU seconds per second over ``window`` (a spinning vCPU: ~1.0)."""
    assert g.proc is not None
    stat = Path(f"/proc/{g.proc.pid}/stat")

    def cpu() -> float:
        fields = stat.read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    before, t0 = cpu(), time.monotonic()
    time.sleep(window)
    return (cpu() - before) / (time.monotonic() - t0)


def test_idle_guest_sleeps(kernel: Path, parts: tuple[bytes, bytes], tmp_path: Path) -> None:
    """READY and idle, the init sleeps between its sysctl polls (15 ms): measured ~5 % of a
    host core, nearly all of it the kernel's 250 Hz tick under TCG."""
    with guest(kernel, parts, tmp_path, "name=sleeper\nport=0\narg=/bin/sleep\narg=600\n") as g:
        g.wait_boot_state(BootState.READY, timeout=BOOT_TIMEOUT)
        time.sleep(0.5)
        share = cpu_share(g)
        print(f"\nidle READY guest: {share:.1%} of a host core")
        assert share < 0.25
        assert g.boot_record().heartbeat > 0  # the main loop's passes


def test_crash_request_is_fatal(kernel: Path, parts: tuple[bytes, bytes], tmp_path: Path) -> None:
    with guest(kernel, parts, tmp_path, "name=sleeper\nport=0\narg=/bin/sleep\narg=600\n") as g:
        g.wait_boot_state(BootState.READY, timeout=BOOT_TIMEOUT)
        assert g.region is not None
        g.region.request(Sysctl.CRASH)
        assert g.wait_exit(timeout=30) == EXIT_FATAL
        rec = g.boot_record()
        assert rec.state == BootState.ERROR and rec.message == "sysctl: crash requested by the host"


def test_without_isa_debug_exit_the_kernel_powers_off(kernel: Path, parts: tuple[bytes, bytes], tmp_path: Path) -> None:
    """The fallback: reboot(RB_POWER_OFF), i.e. microvm's ACPI power-off (QEMU exits 0)."""
    with guest(kernel, parts, tmp_path, "name=sleeper\nport=0\narg=/bin/sleep\narg=600\n", debug_exit=False) as g:
        g.wait_boot_state(BootState.READY, timeout=BOOT_TIMEOUT)
        assert g.region is not None
        g.region.request(Sysctl.POWEROFF)
        assert g.wait_exit(timeout=30) == 0
        assert g.boot_record().state == BootState.HALTED
        assert "lvinit: no isa-debug-exit device at 0xf4: powering off through the kernel" in g.console()


def test_malformed_app_conf_names_its_line(kernel: Path, parts: tuple[bytes, bytes], tmp_path: Path) -> None:
    with guest(kernel, parts, tmp_path, "name=web\n# the port:\nport=http\narg=/bin/false\n") as g:
        assert g.wait_exit(timeout=BOOT_TIMEOUT) == EXIT_FATAL
        rec = g.boot_record()
        assert rec.state == BootState.ERROR and rec.error == GuestErrorCode.APP
        assert rec.message == "app.conf line 3: port 'http' is not a number 0..65535"


def test_vif_without_its_nic_is_no_device(kernel: Path, parts: tuple[bytes, bytes], tmp_path: Path) -> None:
    """A NIC with another MAC (on an empty QEMU hub): the init waits its 5 s for the vif's
    interface, then fails as the unikernels do."""
    decoy = ["-netdev", "hubport,id=decoy,hubid=7", "-device", "virtio-net-device,netdev=decoy,mac=52:54:00:99:99:99"]
    page = PageConfig(name="nonic", tsc_hz=hostfacts.tsc_hz(), vifs=[vif()])
    with guest(kernel, parts, tmp_path, HTTPD_CONF, page=page, nic=decoy) as g:
        assert g.wait_exit(timeout=BOOT_TIMEOUT) == EXIT_FATAL
        rec = g.boot_record()
        assert rec.state == BootState.ERROR and rec.error == GuestErrorCode.NO_DEVICE
        assert rec.message == f"vif 0: no network interface with MAC {GUEST_MAC}"
        assert g.region is not None and g.region.frontend_state(1) == XenbusState.CLOSED


@pytest.mark.parametrize("bell", [True, False], ids=["console-bell", "polling"])
def test_wait_point_until_the_real_page(kernel: Path, parts: tuple[bytes, bytes], tmp_path: Path, bell: bool) -> None:
    """A pool shell (lightvm/daemon/pool.py): a placeholder page with NOXS_FEAT_WAIT_CONFIG;
    the init waits there (asleep on the console with the bell), the host rewrites the page
    (and rings), the init boots on the real page."""
    hz = hostfacts.tsc_hz()
    placeholder = PageConfig(name="pool-x", tsc_hz=hz, wait_config=True, console_bell=bell)
    conf = "name=sleeper\nport=0\narg=/bin/sleep\narg=600\n"
    with guest(kernel, parts, tmp_path, conf, page=placeholder, console_bell=bell) as g:
        waiting = BootState.WAITING_BELL if bell else BootState.WAITING
        g.wait_boot_state(waiting, timeout=BOOT_TIMEOUT)
        assert g.region is not None
        if bell:
            assert cpu_share(g) < 0.25  # asleep in read() on the console, no polling
            # ... with the UART interrupting at the first byte (bell_rings_at_once said nothing)
            assert "rx_trig_bytes" not in g.console(), g.console()
            beat = g.boot_record().heartbeat
            g.ring()  # the pool's rehearsal: wakes it, nothing new, back to sleep
            deadline = time.monotonic() + 10
            while g.boot_record().heartbeat == beat and time.monotonic() < deadline:
                time.sleep(0.01)
            assert g.boot_record().heartbeat > beat
            assert g.region.boot_state() == BootState.WAITING_BELL
        g.region.write_config(PageConfig(name="real-1", tsc_hz=hz, nmi_doorbell=True))
        if bell:
            g.ring()
        rec = g.wait_boot_state(BootState.READY, timeout=30)
        page_gen = int.from_bytes(g.region.raw()[24:32], "little")
        assert rec.app == "sleeper" and rec.generation_seen == page_gen & 0xFFFFFFFF
        g.region.request(Sysctl.POWEROFF)
        assert g.wait_exit(timeout=30) == EXIT_POWEROFF


@pytest.mark.parametrize("same_mac", [True, False], ids=["kept", "new-mac"])
def test_user_nic_configured_at_the_wait_point(
    kernel: Path, parts: tuple[bytes, bytes], tmp_path: Path, same_mac: bool
) -> None:
    """A user-networking pool shell (lightvm/daemon/pool_nics.py, placeholder_vifs): the
    placeholder vif carries every such VM's address, which the init sets up at the wait
    point; a VM whose vif says the same (the device's MAC) skips the `ip` step ("ip-kept"
    in the init's steps line), one with another MAC gets it; both answer through slirp."""
    from netclient import free_port

    shell_mac, vm_mac = "5a:00:00:00:00:01", "52:54:00:13:00:09"
    port = free_port()
    nic = [
        "-netdev",
        f"user,id=n0,net=10.0.2.0/24,hostfwd=tcp:127.0.0.1:{port}-:7777",
        "-device",
        f"virtio-net-device,netdev=n0,mac={shell_mac}",
    ]

    def user_vif(mac: str, dev_mac: str) -> VifConfig:
        return VifConfig(
            mac=bytes.fromhex(mac.replace(":", "")), dev_mac=bytes.fromhex(dev_mac.replace(":", "")),
            ip="10.0.2.15", prefix=24, gateway="10.0.2.2", mtu=1500,
        )  # fmt: skip

    hz = hostfacts.tsc_hz()
    conf = (
        "name=echo\nport=7777\nprestart=1\narg=/bin/busybox\narg=nc\narg=-ll\narg=-p\narg=7777\narg=-e\narg=/bin/cat\n"
    )
    placeholder = PageConfig(
        name="pool-u", tsc_hz=hz, wait_config=True, console_bell=True, vifs=[user_vif(shell_mac, shell_mac)]
    )
    with guest(kernel, parts, tmp_path, conf, page=placeholder, nic=nic, console_bell=True) as g:
        g.wait_boot_state(BootState.WAITING_BELL, timeout=BOOT_TIMEOUT)
        assert g.region is not None
        real = user_vif(shell_mac if same_mac else vm_mac, shell_mac)
        g.region.write_config(PageConfig(name="user-1", tsc_hz=hz, nmi_doorbell=True, vifs=[real]))
        g.ring()
        g.wait_boot_state(BootState.READY, timeout=30)
        steps = g.wait_console("lvinit: steps", timeout=10).split("lvinit: steps", 1)[1].splitlines()[0]
        assert (" ip-kept " in steps) == same_mac, steps
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"through slirp\n")
            assert s.recv(100) == b"through slirp\n"
        g.region.request(Sysctl.POWEROFF)
        assert g.wait_exit(timeout=30) == EXIT_POWEROFF
