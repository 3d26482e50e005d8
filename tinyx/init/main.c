/*
 * main.c - lvinit as PID 1: the boot sequence, the wait point of a pool shell,
 * the main loop (reaping, sysctl requests, page rewrites), stop and power off.
 * What it writes where, and why in this order: docs/tinyx.md, "The init".
 * Not PID 1: the command-line modes of cli.c.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/io.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include "lvinit.h"

#include <linux/random.h>

#define PCI "/sys/bus/pci/devices"
#define SETTLE_MS      1000u   /* an odd/moving page generation, before BAD_PAGE */
#define NIC_WAIT_MS    5000u   /* a vif's interface to appear (virtio-net probing) */
#define PROBE_EVERY_MS 5u      /* readiness connect retries */
#define PROBE_WAIT_MS  20u     /* one connect's wait for the handshake */
#define PROBE_REHEARSE_MS 2000u  /* a prestarted app's first request, for its answer */
#define POLL_MS        15u     /* sysctl poll when idle (HZ=250: a 16 ms sleep) */
#define COUNTER_PASSES 64u     /* main-loop passes between vif counter updates (~1 s) */
#define KILL_WAIT_MS   1000u   /* after SIGKILL, for the app's exit status */

static struct lv_noxs noxs;
static struct lv_app app;
static pid_t app_pid = -1;
static int app_status;          /* its wait status once it is gone */
static int app_ready, stopping;
static sigset_t chld;
static uint64_t tsc_start, mono_start_ns, tsc_hz;
static char ifnames[NOXS_MAX_DEVICES][16];
static uint8_t warm_macs[NOXS_MAX_DEVICES][6];   /* NICs up since the wait point, by device MAC */
static struct lv_vif warm_vifs[NOXS_MAX_DEVICES]; /* what the wait point configured on them (ip 0: none) */
static int lo_up;

/* When the init's steps ended (CLOCK_MONOTONIC), printed after READY, off the boot path:
 * the guest's half of a cold boot or of a pooled create, broken down (docs/tinyx-bench.md). */
#define MAX_STEPS 16u
static struct { const char *what; uint64_t ns; } steps[MAX_STEPS];
static unsigned n_steps;

static void step(const char *what)
{
	if (n_steps < MAX_STEPS)
		steps[n_steps++] = (typeof(steps[0])){ what, lv_now_ns() };
}

/* ---- the end ---- */

static __attribute__((noreturn)) void power_off(unsigned code)
{
	sync();
	/* isa-debug-exit: QEMU exits with (code << 1) | 1 (images/base/platform.c) */
	if (ioperm(LV_DEBUG_EXIT_PORT, 4, 1) == 0)
		outl(code, LV_DEBUG_EXIT_PORT);
	else
		lv_say("ioperm(0x%x): %s", LV_DEBUG_EXIT_PORT, strerror(errno));
	lv_say("no isa-debug-exit device at 0x%x: powering off through the kernel", LV_DEBUG_EXIT_PORT);
	reboot(RB_POWER_OFF);
	for (;;)
		pause();
}

static void say_now(void);

static __attribute__((noreturn, format(printf, 2, 3))) void fatal(uint32_t code, const char *fmt, ...)
{
	static int in_fatal;
	char msg[256];
	va_list ap;
	if (in_fatal++)
		power_off(LV_EXIT_FATAL);   /* failing while failing: just stop */
	say_now();   /* what READY had to say, before why it ends */
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	lv_say("%s", msg);
	lv_rec_error(&noxs, code, msg);
	power_off(LV_EXIT_FATAL);
}

/* ---- file systems and console ---- */

static void mount_one(const char *src, const char *dir, const char *type, unsigned long flags,
                      const char *data)
{
	if (mkdir(dir, 0755) != 0 && errno != EEXIST)
		fatal(NOXS_ERR_DEVICE, "mkdir %s: %s", dir, strerror(errno));
	if (mount(src, dir, type, flags, data) != 0 && errno != EBUSY)
		fatal(NOXS_ERR_DEVICE, "mount %s on %s: %s", type, dir, strerror(errno));
}

static void file_systems(void)
{
	const unsigned long nodev = MS_NOSUID | MS_NODEV | MS_NOEXEC;
	mount_one("proc", "/proc", "proc", nodev, NULL);
	mount_one("sysfs", "/sys", "sysfs", nodev, NULL);
	mount_one("devtmpfs", "/dev", "devtmpfs", MS_NOSUID, "mode=0755");
	mount_one("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777");
	mount_one("tmpfs", "/run", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755");
}

/* stdin, stdout, stderr on /dev/console (the kernel's own may be missing if the
 * initramfs had no /dev/console node). Without a console, /dev/null: fds 0-2
 * must never be free, or the next open (a sysfs file) would get our messages. */
static void console(void)
{
	int fd = open("/dev/console", O_RDWR | O_NOCTTY);
	if (fd < 0)
		fd = open("/dev/null", O_RDWR);
	if (fd < 0)
		return;
	for (int i = 0; i < 3; i++)
		if (fd != i)
			dup2(fd, i);
	if (fd > 2)
		close(fd);
}

/* ---- the NoXS device ---- */

static int pci_id(const char *dev, const char *file, unsigned long *out)
{
	char path[300], text[32];
	snprintf(path, sizeof(path), PCI "/%s/%s", dev, file);
	if (lv_read_file(path, text, sizeof(text) - 1) <= 0)
		return -1;
	*out = strtoul(text, NULL, 16);
	return 0;
}

static void map_region(const char *dev)
{
	char path[300];
	snprintf(path, sizeof(path), PCI "/%s/enable", dev);
	step("pci");
	int fd = open(path, O_WRONLY | O_CLOEXEC);
	/* No driver binds ivshmem and no firmware enabled memory decoding. */
	if (fd < 0 || write(fd, "1", 1) != 1)
		fatal(NOXS_ERR_NO_DEVICE, "noxs: cannot enable %s: %s", dev, strerror(errno));
	close(fd);
	step("enable");
	snprintf(path, sizeof(path), PCI "/%s/resource%u", dev, NOXS_PCI_BAR);
	fd = open(path, O_RDWR | O_CLOEXEC);
	struct stat st;
	if (fd < 0 || fstat(fd, &st) != 0)
		fatal(NOXS_ERR_NO_DEVICE, "noxs: cannot open %s: %s", path, strerror(errno));
	uint64_t size = (uint64_t)st.st_size;
	if (size < NOXS_REGION_MIN)
		fatal(NOXS_ERR_BAD_PAGE, "noxs: BAR%u is %llu bytes (want >= %u)", NOXS_PCI_BAR,
		      (unsigned long long)size, NOXS_REGION_MIN);
	if (size > NOXS_REGION_MAX)
		size = NOXS_REGION_MAX;   /* nothing valid lies beyond */
	void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (p == MAP_FAILED)
		fatal(NOXS_ERR_NO_DEVICE, "noxs: mmap %s: %s", path, strerror(errno));
	close(fd);
	step("mmap");
	noxs.region = p;
	noxs.bytes = size;
}

static void find_noxs(void)
{
	DIR *d = opendir(PCI);
	struct dirent *e;
	if (!d)
		fatal(NOXS_ERR_NO_DEVICE, "noxs: no " PCI ": %s", strerror(errno));
	while ((e = readdir(d)) != NULL) {
		unsigned long vendor, device;
		if (e->d_name[0] == '.' || pci_id(e->d_name, "vendor", &vendor) != 0 ||
		    pci_id(e->d_name, "device", &device) != 0)
			continue;
		if (vendor == NOXS_PCI_VENDOR && device == NOXS_PCI_DEVICE) {
			map_region(e->d_name);
			closedir(d);
			return;
		}
	}
	closedir(d);
	fatal(NOXS_ERR_NO_DEVICE, "noxs: no NoXS device (ivshmem-plain %04x:%04x) on the PCI bus",
	      NOXS_PCI_VENDOR, NOXS_PCI_DEVICE);
}

static void read_page(void)
{
	char err[160];
	if (lv_page_read(noxs.region, noxs.bytes, &noxs.page, SETTLE_MS, err, sizeof(err)) != 0)
		fatal(NOXS_ERR_BAD_PAGE, "%s", err);
	lv_rec_attach(&noxs);
}

/* The TSC rate for the record and the stamps: the page's hint (what the host
 * measured), else the tsc_early_khz= lightvm puts on the kernel command line. */
static uint32_t find_tsc_hz(void)
{
	char text[4096];
	tsc_hz = lv_page_tsc_hz(&noxs.page);
	if (tsc_hz)
		return NOXS_TSC_PAGE;
	if (lv_read_file("/proc/cmdline", text, sizeof(text) - 1) > 0) {
		const char *k = strstr(text, "tsc_early_khz=");
		if (k && (k == text || k[-1] == ' '))
			tsc_hz = strtoull(k + 14, NULL, 10) * 1000u;
	}
	return NOXS_TSC_UNKNOWN;
}

/* The TSC when Linux's clock started (early in setup_arch, where the TSC
 * becomes sched_clock with tsc_early_khz=): CLOCK_MONOTONIC counts from there.
 * The nearest Linux has to the unikernels' "first guest instruction". */
static uint64_t kernel_entry_tsc(void)
{
	if (!tsc_hz)
		return 0;
	unsigned __int128 cycles = (unsigned __int128)mono_start_ns * tsc_hz / 1000000000u;
	return cycles < tsc_start ? tsc_start - (uint64_t)cycles : 0;
}

/* The host's wall clock, host_ns at TSC tsc_then (a page read just now). */
static void set_wall_clock(uint64_t host_ns, uint64_t tsc_then)
{
	if (host_ns < 1577836800ull * 1000000000ull)   /* before 2020: not a clock */
		return;
	uint64_t now = host_ns;
	if (tsc_hz)
		now += (uint64_t)((unsigned __int128)(lv_rdtsc() - tsc_then) * 1000000000u / tsc_hz);
	struct timespec ts = { (time_t)(now / 1000000000u), (long)(now % 1000000000u) };
	if (clock_settime(CLOCK_REALTIME, &ts) != 0)
		lv_say("cannot set the clock: %s", strerror(errno));
}

/* ---- a pool shell's wait point (NOXS_FEAT_WAIT_CONFIG) ---- */

/* The placeholder page's vifs name the shell's NICs (dev_mac): each goes up now, so that
 * a create only gives it the VM's MAC, address and route (measured: ~10 ms of the execute
 * under TCG were the driver's first open; docs/tinyx-bench.md). A placeholder vif with an
 * address (user networking, where every VM's is the same) is configured with it now too:
 * a VM whose vif says the same (the host gives it the device's MAC) then needs no `ip`
 * step at all. A NIC that does not appear is the shell's failure: ERROR before the wait
 * point. */
static void prewarm_nics(void)
{
	char err[200];
	static const uint8_t none[6];
	for (unsigned i = 0; i < noxs.page.layout.n_vif; i++) {
		const struct lv_vif *v = &noxs.page.vif[i];
		const uint8_t *mac = memcmp(v->dev_mac, none, 6) != 0 ? v->dev_mac : v->mac;
		if (lv_net_prewarm(mac, ifnames[i], NIC_WAIT_MS, err, sizeof(err)) != 0)
			fatal(NOXS_ERR_NO_DEVICE, "vif %u at the wait point: %s", v->id, err);
		memcpy(warm_macs[i], mac, 6);
		if (memcmp(v->ip, none, 4) == 0)
			continue;
		if (lv_net_configure(ifnames[i], v, 1, err, sizeof(err)) != 0)
			fatal(NOXS_ERR_DEVICE, "vif %u at the wait point: %s", v->id, err);
		warm_vifs[i] = *v;
	}
}

/* Whether the wait point already gave NIC i what vif v asks for. */
static int configured_at_wait_point(unsigned i, const struct lv_vif *v)
{
	static const uint8_t none[4];
	const struct lv_vif *w = &warm_vifs[i];
	return memcmp(w->ip, none, 4) != 0 && memcmp(w->mac, v->mac, 6) == 0 && memcmp(w->ip, v->ip, 4) == 0 &&
	       w->prefix == v->prefix && memcmp(w->gateway, v->gateway, 4) == 0 && w->mtu == v->mtu;
}

/* The bell is one byte, and the 8250 driver runs the 16550A's receive FIFO with an
 * 8-byte trigger level: below it QEMU raises the interrupt only at the FIFO's timeout,
 * 4 character times, 4.2 ms at the console's 9600 baud (hw/char/serial.c), every pooled
 * create's wake-up under TCG or KVM alike. A trigger level of 1 byte interrupts at once
 * (docs/tinyx.md, "The wait point"). Best effort: without it the bell is 4 ms late. */
static void bell_rings_at_once(void)
{
	static const char path[] = "/sys/class/tty/ttyS0/rx_trig_bytes";
	int fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd < 0 || lv_write_all(fd, "1", 1) != 0)
		lv_say("%s: %s (the bell wakes us 4 ms late)", path, strerror(errno));
	if (fd >= 0)
		close(fd);
}

/* /dev/urandom, opened once before any rewrite can come (before an image's snapshot is
 * taken): after a restore every kernel path runs for the first time under TCG, and the
 * open's path walk took 2.4-3.6 ms of the identity take (5 VMs from a snapshot). */
static int urandom_fd = -1;

static void open_urandom(void)
{
	if (urandom_fd < 0)
		urandom_fd = open("/dev/urandom", O_WRONLY | O_CLOEXEC);
}

/* The console as the host's bell, for the VM's whole life: raw input (no line editing, no
 * echo into the log, no signals from control bytes; the app's stdin is /dev/null, so the
 * console's input is ours alone) and the receive interrupt at the first byte. A pool
 * shell's wait point sleeps in read() on it; the serving loop (wait_host) wakes on it, so
 * that a page rewrite after a restore (a VM started from a snapshot, a template's clone, a
 * migration) is taken at once instead of at the next 15 ms poll. Set before an image's
 * snapshot is taken, so every VM from the snapshot has it. */
static int console_bell_on;

static int console_bell_setup(void)
{
	struct termios raw;
	if (console_bell_on)
		return 1;
	if (tcgetattr(0, &raw) != 0)
		return 0;
	raw.c_lflag &= ~(tcflag_t)(ICANON | ECHO | ISIG | IEXTEN);
	raw.c_iflag &= ~(tcflag_t)(IXON | ICRNL);
	raw.c_cc[VMIN] = 1;
	raw.c_cc[VTIME] = 0;
	if (tcsetattr(0, TCSANOW, &raw) != 0)
		return 0;
	tcflush(0, TCIFLUSH);
	bell_rings_at_once();
	console_bell_on = 1;
	return 1;
}

/* What a create makes us do right after the bell, done once before it with the values we
 * have: the placeholder page's name as hostname (the VM's replaces it), the wall clock set
 * to what it reads (a no-op). Under TCG each system call's kernel path is translated on its
 * first run: clock_settime (clock_was_set and the hrtimer retrigger behind it) and
 * sethostname cost 0.5-1 ms each after the bell when they had never run (the init's steps
 * line: page -> booting, booting -> nic; docs/tinyx-bench.md), and far less the second time. */
static void rehearse_identity(void)
{
	char host[NOXS_NAME_LEN + 1];
	struct timespec now;
	if (lv_page_hostname(&noxs.page, host) == 0)
		(void)sethostname(host, strlen(host));
	if (clock_gettime(CLOCK_REALTIME, &now) == 0)
		(void)clock_settime(CLOCK_REALTIME, &now);
}

static void wait_point(void)
{
	const struct noxs_device_page *pg = &noxs.page.snap;
	if (!(pg->features & NOXS_FEAT_WAIT_CONFIG))
		return;
	prewarm_nics();
	rehearse_identity();
	open_urandom();
	uint64_t g = pg->generation;
	/* The bell: the host writes one byte to the console's receiver after the
	 * rewrite. We sleep in read() on the console: no timer, no polling. */
	int bell = (pg->features & NOXS_FEAT_CONSOLE_BELL) && console_bell_setup();
	lv_rec_state(&noxs, bell ? NOXS_BOOT_WAITING_BELL : NOXS_BOOT_WAITING);
	while (lv_page_generation(noxs.region) == g) {
		if (!bell) {
			lv_sleep_ms(1);   /* the host stops our vCPU meanwhile */
			continue;
		}
		char buf[64];
		ssize_t n = read(0, buf, sizeof(buf));
		lv_rec_heartbeat(&noxs);   /* the host's rehearsal ring waits for this */
		if (n == 0 || (n < 0 && errno != EINTR)) {
			lv_say("console bell: read: %s; polling the page instead", n ? strerror(errno) : "end of input");
			console_bell_on = 0;
			bell = 0;
		}
	}
	step("bell");
	if (bell)
		tcflush(0, TCIFLUSH);
	read_page();
	step("page");
	set_wall_clock(noxs.page.snap.host_time_ns, noxs.page.tsc_at_read);
}

/* ---- devices ---- */

static void devices(void)
{
	char err[200], host[NOXS_NAME_LEN + 1];
	if (lv_page_hostname(&noxs.page, host) == 0 && sethostname(host, strlen(host)) != 0)
		lv_say("sethostname %s: %s", host, strerror(errno));
	if (!lo_up && lv_net_loopback(err, sizeof(err)) != 0)
		fatal(NOXS_ERR_DEVICE, "lo: %s", err);
	for (unsigned i = 0; i < noxs.page.layout.n_vif; i++) {
		const struct lv_vif *v = &noxs.page.vif[i];
		volatile struct noxs_vif_ctrl *ctrl = lv_rec_vif(&noxs, i);
		static const uint8_t none[6];
		/* A pooled shell's NIC has a MAC of its own (dev_mac): find it by that. */
		const uint8_t *nic_mac = memcmp(v->dev_mac, none, 6) != 0 ? v->dev_mac : v->mac;
		char mac[18];
		lv_format_mac(nic_mac, mac);
		int warm = ifnames[i][0] && memcmp(warm_macs[i], nic_mac, 6) == 0;
		if (!warm && lv_net_find(nic_mac, ifnames[i], NIC_WAIT_MS) != 0) {
			lv_rec_fe(&ctrl->hdr, NOXS_STATE_CLOSED);
			fatal(NOXS_ERR_NO_DEVICE, "vif %u: no network interface with MAC %s", v->id, mac);
		}
		step("nic");
		int kept = warm && configured_at_wait_point(i, v);
		if (!kept && lv_net_configure(ifnames[i], v, warm, err, sizeof(err)) != 0) {
			lv_rec_fe(&ctrl->hdr, NOXS_STATE_CLOSED);
			fatal(NOXS_ERR_DEVICE, "vif %u: %s", v->id, err);
		}
		lv_rec_fe(&ctrl->hdr, NOXS_STATE_CONNECTED);
		step(kept ? "ip-kept" : "ip");
	}
}

static void counters(void)
{
	for (unsigned i = 0; i < noxs.page.layout.n_vif; i++) {
		volatile struct noxs_vif_ctrl *ctrl = lv_rec_vif(&noxs, i);
		if (!ctrl || !ifnames[i][0])
			continue;
		ctrl->rx_packets = lv_net_stat(ifnames[i], "rx_packets");
		ctrl->tx_packets = lv_net_stat(ifnames[i], "tx_packets");
	}
}

/* ---- PID 1 duties ---- */

/* Sleep until a child changes state or ms pass. */
static void wait_events(unsigned ms)
{
	struct timespec ts = { ms / 1000u, (long)(ms % 1000u) * 1000000L };
	(void)sigtimedwait(&chld, NULL, &ts);
}

/* The serving loop's sleep: as wait_events, and the host's console bell ends it too
 * (console_bell_setup). Whether a bell byte came: the page is to be looked at now. */
static int wait_host(unsigned ms)
{
	if (!console_bell_on) {
		wait_events(ms);
		return 0;
	}
	struct timespec ts = { ms / 1000u, (long)(ms % 1000u) * 1000000L };
	struct pollfd con = { .fd = 0, .events = POLLIN, .revents = 0 };
	sigset_t mask;
	sigprocmask(SIG_SETMASK, NULL, &mask);
	sigdelset(&mask, SIGCHLD);   /* a child's end interrupts the sleep (on_chld), reap() follows */
	if (ppoll(&con, 1, &ts, &mask) <= 0)
		return 0;
	char buf[64];
	ssize_t n = (con.revents & POLLIN) ? read(0, buf, sizeof(buf)) : -1;
	if (n > 0)
		return 1;
	/* A console that hangs up or errs would wake us in a loop: back to the timed poll. */
	lv_say("console bell: %s; the page is polled every %u ms", n == 0 ? "end of input" : "console error", POLL_MS);
	console_bell_on = 0;
	return 0;
}

/* Reap every child; the app's end is fatal unless we are stopping it. */
static void reap(void)
{
	int status;
	pid_t pid;
	while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
		if (pid != app_pid)
			continue;   /* an orphan the kernel gave us */
		app_pid = -1;
		app_status = status;
		if (stopping)
			continue;
		char how[64];
		lv_app_describe(status, how, sizeof(how));
		fatal(NOXS_ERR_APP, "app %s%s", how, app_ready ? "" : " before READY");
	}
}

static __attribute__((noreturn)) void stop(void)
{
	char how[64] = "was not running";
	say_now();
	stopping = 1;
	lv_rec_state(&noxs, NOXS_BOOT_STOPPING);
	if (app_pid > 0) {
		pid_t pid = app_pid;
		kill(-pid, SIGTERM);   /* its session's group: children too */
		kill(pid, SIGTERM);
		uint64_t end = lv_now_ms() + app.stop_timeout_ms;
		for (uint64_t now; app_pid > 0 && (now = lv_now_ms()) < end;) {
			wait_events(end - now < POLL_MS ? (unsigned)(end - now) : POLL_MS);
			reap();
		}
		if (app_pid > 0) {
			lv_say("app did not stop within %u ms: SIGKILL", app.stop_timeout_ms);
			kill(-pid, SIGKILL);
			kill(pid, SIGKILL);
			for (uint64_t e2 = lv_now_ms() + KILL_WAIT_MS; app_pid > 0 && lv_now_ms() < e2;) {
				wait_events(POLL_MS);
				reap();
			}
		}
		if (app_pid < 0)
			lv_app_describe(app_status, how, sizeof(how));
	}
	kill(-1, SIGKILL);   /* whatever else runs: everyone but us */
	sync();
	lv_rec_fe_devices(&noxs, NOXS_STATE_CLOSED);
	if (noxs.sys)
		lv_rec_fe(&noxs.sys->hdr, NOXS_STATE_CLOSED);
	lv_rec_state(&noxs, NOXS_BOOT_HALTED);
	lv_say("poweroff (app %s)", how);
	power_off(LV_EXIT_CLEAN);
}

/* Every VM started from one snapshot (an image's snapshot, a template's clones) wakes
 * with the same kernel random state: the CRNG would hand each the same bytes (TCP
 * sequence numbers, getrandom()) until its next reseed, up to a minute later. The page's
 * uuid is new per VM (uuid4, from the host's getrandom), so mixing it in with the times
 * and reseeding at once makes their streams part. Not credited as entropy: the host
 * knows it. Best effort: a failure is said on the console. */
static void reseed_random(const struct noxs_device_page *pg, uint64_t host_ns, uint64_t tsc)
{
	uint8_t mix[sizeof(pg->uuid) + 2 * sizeof(uint64_t)];
	memcpy(mix, (const void *)pg->uuid, sizeof(pg->uuid));
	memcpy(mix + sizeof(pg->uuid), &host_ns, sizeof(host_ns));
	memcpy(mix + sizeof(pg->uuid) + sizeof(host_ns), &tsc, sizeof(tsc));
	open_urandom();   /* opened at the wait point or at READY already: a no-op then */
	if (urandom_fd < 0 || lv_write_all(urandom_fd, mix, sizeof(mix)) != 0 || ioctl(urandom_fd, RNDRESEEDCRNG) != 0)
		lv_say("page rewrite: reseeding the kernel's random state: %s", strerror(errno));
}

/* Whether a vif's page asks for another NIC configuration than the one it has. */
static int vif_changed(const struct lv_vif *a, const struct lv_vif *b)
{
	return memcmp(a->mac, b->mac, 6) != 0 || memcmp(a->ip, b->ip, 4) != 0 || a->prefix != b->prefix ||
	       memcmp(a->gateway, b->gateway, 4) != 0 || a->mtu != b->mtu;
}

static void say_vifs(void)
{
	for (unsigned i = 0; i < noxs.page.layout.n_vif; i++) {
		const struct lv_vif *v = &noxs.page.vif[i];
		char mac[18], ip[16], gw[16];
		lv_format_mac(v->mac, mac);
		lv_format_ip(v->ip, ip);
		lv_format_ip(v->gateway, gw);
		lv_say("vif %u: %s %s %s/%u gw %s mtu %u", v->id, ifnames[i], mac, ip, v->prefix, gw, v->mtu);
	}
}

/* What the init says after READY and after a page rewrite waits for the serving loop's
 * first quiet pass (a sleep that ended without a bell, ~15 ms later): every console byte
 * is an I/O exit, and a client's first request comes right after READY, on the same
 * single vCPU (docs/tinyx.md, "The init"). */
#define SAY_READY    1u
#define SAY_IDENTITY 2u
static unsigned say_pending;
static uint64_t ready_ns;   /* CLOCK_MONOTONIC at READY: the READY line says it later */
static struct {
	uint64_t generation, us;
	int rung;
} taken;

/* After a page rewrite is acknowledged (a VM started from a snapshot, a restore, a
 * migration): the console of such a VM starts here, so say who it now is. */
static void say_identity(void)
{
	char host[NOXS_NAME_LEN + 1];
	if (gethostname(host, sizeof(host)) != 0)
		snprintf(host, sizeof(host), "?");
	host[sizeof(host) - 1] = 0;
	lv_say("page generation %llu taken (%s): hostname %s, app %s, in %llu.%llu ms",
	       (unsigned long long)taken.generation, taken.rung ? "woken by the console bell" : "seen at a poll", host,
	       app.name, (unsigned long long)(taken.us / 1000u), (unsigned long long)(taken.us % 1000u / 100u));
	say_vifs();
}

/* A rewritten page (restore, migration, a VM started from a snapshot) may carry another
 * identity: the hostname follows the page's name, the random state is reseeded, and a NIC
 * whose vif page changed takes its new address, gateway, MTU and MAC (a snapshot's VMs
 * each have their own). Read into a copy: the layout the record hangs on stays the one
 * read at boot, and a page that does not validate keeps the old identity (said, not
 * fatal: the VM serves on). Runs before the new generation is acknowledged, so the host's
 * READY means the VM has it all. */
static void take_identity(uint64_t host_ns, uint64_t tsc)
{
	static struct lv_page fresh;
	char err[160], host[NOXS_NAME_LEN + 1];
	if (lv_page_read(noxs.region, noxs.bytes, &fresh, SETTLE_MS, err, sizeof(err)) != 0) {
		lv_say("page rewrite: %s (identity kept)", err);
		return;
	}
	if (lv_page_hostname(&fresh, host) == 0 && sethostname(host, strlen(host)) != 0)
		lv_say("sethostname %s: %s", host, strerror(errno));
	reseed_random(&fresh.snap, host_ns, tsc);
	unsigned n = fresh.layout.n_vif < noxs.page.layout.n_vif ? fresh.layout.n_vif : noxs.page.layout.n_vif;
	for (unsigned i = 0; i < n; i++) {
		struct lv_vif *was = &noxs.page.vif[i];
		if (!ifnames[i][0] || !vif_changed(was, &fresh.vif[i]))
			continue;
		if (lv_net_reconfigure(ifnames[i], was, &fresh.vif[i], err, sizeof(err)) != 0) {
			lv_say("page rewrite: vif %u: %s", fresh.vif[i].id, err);
			continue;
		}
		uint32_t id = was->id, offset = was->offset;
		*was = fresh.vif[i];
		was->id = id;
		was->offset = offset;   /* the control page stays the one the record uses */
	}
}

/* The host's sysctl requests and page rewrites, as images/base/noxs.c's
 * noxs_service: POWEROFF, CRASH; a new generation re-bases the wall clock and takes
 * the page's identity (take_identity). */
static void service(int rung)
{
	uint32_t req = lv_rec_requests(&noxs);
	if (req & NOXS_SYSCTL_POWEROFF) {
		lv_rec_ack(&noxs, NOXS_SYSCTL_POWEROFF);
		stop();
	}
	if (req & NOXS_SYSCTL_CRASH) {
		lv_rec_ack(&noxs, NOXS_SYSCTL_CRASH);
		fatal(NOXS_ERR_APP, "sysctl: crash requested by the host");
	}
	uint64_t g1 = lv_page_generation(noxs.region);
	if ((g1 & 1) || (uint32_t)g1 == lv_rec_generation_seen(&noxs))
		return;
	lv_barrier();
	uint64_t host_ns = *(const volatile uint64_t *)(noxs.region +
	                                                offsetof(struct noxs_device_page, host_time_ns));
	uint64_t now = lv_rdtsc();
	lv_barrier();
	if (lv_page_generation(noxs.region) != g1)
		return;   /* mid-rewrite: the next pass */
	uint64_t started_ns = lv_now_ns();
	set_wall_clock(host_ns, now);
	take_identity(host_ns, now);
	lv_rec_generation(&noxs, g1);
	taken.generation = g1;
	taken.us = (lv_now_ns() - started_ns) / 1000u;
	taken.rung = rung;
	say_pending |= SAY_IDENTITY;
}

/* Start the app and wait until its port accepts on 127.0.0.1 (at once with port=0),
 * reaping (its early exit is fatal) and, once the VM has its page, obeying the host. */
static void launch_app(int obey_host)
{
	char err[300];
	app_pid = lv_app_start(&app, err, sizeof(err));
	if (app_pid < 0)
		fatal(NOXS_ERR_APP, "%s", err);
	step("exec");
	while (app.port && !lv_app_accepts(app.port, PROBE_WAIT_MS)) {
		wait_events(PROBE_EVERY_MS);
		reap();
		if (obey_host)
			service(0);
	}
}

static void start_app(void)
{
	launch_app(1);
	lv_rec_ready(&noxs, app.name, lv_rdtsc());
	app_ready = 1;
}

/* A pool shell (the page asks for the wait point) of an app that may start before the
 * VM's identity comes (prestart=1: it listens on every address): start it now and wait
 * until it accepts on 127.0.0.1, so that a create has only the NICs left to do. Its
 * failure here is the shell's: ERROR before the wait point, and the host discards it.
 * The host's requests wait for the wait point (a placeholder page asks for nothing). */
static void prestart_app(void)
{
	char err[300];
	if (lv_net_loopback(err, sizeof(err)) != 0)
		fatal(NOXS_ERR_DEVICE, "lo: %s", err);
	lo_up = 1;
	launch_app(0);
	/* The app's first request costs it (and QEMU translating its code) ~10 ms more than
	 * the next under TCG (docs/tinyx-bench.md): the recipe's probe, once, before any client. */
	if (app.probe_send && !lv_app_rehearse(app.port, app.probe_send, app.probe_expect, PROBE_REHEARSE_MS))
		lv_say("probe rehearsal: no expected answer from port %u (not fatal)", app.port);
}

static void say_ready(void)
{
	say_vifs();
	lv_say("READY %s (kernel %llu ms, /init to READY %llu ms)", app.name,
	       (unsigned long long)(mono_start_ns / 1000000u),
	       (unsigned long long)((ready_ns - mono_start_ns) / 1000000u));
	/* ms since /init started, in tenths: "steps: fs 2.1 noxs 14.0 ..." */
	char line[400];
	size_t at = 0;
	for (unsigned i = 0; i < n_steps && at < sizeof(line); i++) {
		uint64_t t = (steps[i].ns - mono_start_ns) / 100000u;
		at += (size_t)snprintf(line + at, sizeof(line) - at, " %s %llu.%llu", steps[i].what,
		                       (unsigned long long)(t / 10u), (unsigned long long)(t % 10u));
	}
	lv_say("steps (ms since /init):%s", line);
}

static void say_now(void)
{
	unsigned what = say_pending;
	say_pending = 0;
	if (what & SAY_READY)
		say_ready();
	if (what & SAY_IDENTITY)
		say_identity();
}

static void on_chld(int sig)
{
	/* Nothing to do: SIGCHLD stays blocked but inside wait_host's ppoll, which it ends
	 * (reap() follows there); elsewhere sigtimedwait takes it. */
	(void)sig;
}

static __attribute__((noreturn)) void pid1(void)
{
	char conf_err[200];
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_chld;
	sigaction(SIGCHLD, &sa, NULL);
	sigemptyset(&chld);
	sigaddset(&chld, SIGCHLD);
	sigprocmask(SIG_BLOCK, &chld, NULL);

	file_systems();
	console();
	step("fs");
	/* app.conf now (a pool shell reads it before its wait point); its error is
	 * reported once the boot record can carry it. */
	int conf = lv_conf_load(&app, LV_CONF_PATH, conf_err, sizeof(conf_err));
	find_noxs();
	read_page();
	step("noxs");
	if (conf == 0 && app.prestart && (noxs.page.snap.features & NOXS_FEAT_WAIT_CONFIG)) {
		prestart_app();
		step("prestart");
	}
	wait_point();
	if (conf != 0)
		fatal(NOXS_ERR_APP, "%s", conf_err);
	uint32_t source = find_tsc_hz();
	lv_rec_booting(&noxs, app.name, kernel_entry_tsc(), tsc_hz, source);
	lv_rec_fe(&noxs.sys->hdr, NOXS_STATE_INITIALISED);
	lv_rec_fe_devices(&noxs, NOXS_STATE_INITIALISED);
	step("booting");
	devices();
	lv_rec_devices_up(&noxs, lv_rdtsc());
	step("devices");
	if (app_pid > 0) {   /* prestarted, serving on every address: READY with the NICs up */
		lv_rec_ready(&noxs, app.name, lv_rdtsc());
		app_ready = 1;
	} else {
		start_app();
	}
	step("ready");
	ready_ns = lv_now_ns();
	say_pending |= SAY_READY;
	console_bell_setup();
	open_urandom();
	for (unsigned pass = 1;; pass++) {
		int rung = wait_host(POLL_MS);
		reap();
		service(rung);
		if (!rung)
			say_now();
		lv_rec_heartbeat(&noxs);
		if (pass % COUNTER_PASSES == 0)
			counters();
	}
}

int main(int argc, char **argv)
{
	tsc_start = lv_rdtsc();
	mono_start_ns = lv_now_ns();
	/* As PID 1 the arguments are the kernel's leftovers: never a mode. */
	if (getpid() == 1)
		pid1();
	return lv_cli(argc, argv);
}
