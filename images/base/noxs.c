/*
 * noxs.c - the NoXS front-end: find the ivshmem device, validate the page
 * (noxs_validate.c, shared with the Linux tool), keep private snapshots of
 * the configuration, and keep the boot record and the Xenbus frontend
 * states up to date. The page is hostile input: decisions are only ever
 * taken on snapshots, and we only dereference validated offsets.
 */
#include "base.h"
#include "noxs_validate.h"

#define SEQ_SPINS 2000000u

static volatile uint8_t *region;
static uint64_t region_bytes;
static struct noxs_device_page snap;       /* validated copy of the device page */
static struct noxs_layout layout;
static volatile struct noxs_sysctl_ctrl *sys;
static struct noxs_vif_info vifs[NOXS_MAX_DEVICES];
static volatile struct noxs_ctrl_hdr *vbd_hdr[NOXS_MAX_DEVICES];
static uint64_t tsc_at_read;
static bool bell_armed;     /* the console bell's interrupt is still on (a pool shell) */
static bool devices_said;   /* noxs_devices_up() ran: noxs_ready() says so */
static bool doorbell;   /* NOXS_FEAT_NMI_DOORBELL of the page we follow */
static uint64_t gen_seen;   /* the page generation our wall clock is based on */
static struct noxs_sysctl_ctrl rehearsal;   /* what rehearse() writes instead of the page */

static void record_ready(const char *app);

static volatile uint64_t *generation_ptr(void)
{
	return (volatile uint64_t *)(region + offsetof(struct noxs_device_page, generation));
}

static void copy_in(void *dst, uint32_t off, size_t n)
{
	/* off and n are validated against region_bytes by the callers */
	memcpy(dst, (const void *)(uintptr_t)(region + off), n);
}

static void bad_page(const char *msg)
{
	guest_fatal(NOXS_ERR_BAD_PAGE, "%s", msg);
}

/* One consistent read of everything host-written we use, through the
 * generation seqlock. Returns 0, or -1 with err if the page is invalid
 * and the host was not in the middle of rewriting it. */
static int read_config(char *err, size_t errlen)
{
	for (unsigned spin = 0;; spin++) {
		if (spin > SEQ_SPINS) {
			snprintf(err, errlen, "noxs: page generation never settles (odd, or rewritten on every read)");
			return -1;
		}
		uint64_t g1 = *generation_ptr();
		if (g1 & 1) {
			cpu_pause();
			continue;
		}
		barrier();
		copy_in(&snap, 0, sizeof(snap));
		tsc_at_read = tsc_read();
		int rc = noxs_validate_page(&snap, region_bytes, &layout, err, errlen);
		for (uint32_t i = 0; rc == 0 && i < layout.n_vif; i++) {
			struct noxs_vif_ctrl c;
			copy_in(&c, layout.vif_offset[i], NOXS_VIF_HOST_BYTES);
			rc = noxs_validate_vif(&c, layout.vif_id[i], err, errlen);
			struct noxs_vif_info *v = &vifs[i];
			v->id = layout.vif_id[i];
			memcpy(v->mac, c.mac, 6);
			/* A NIC pre-created in a prepared shell has its own MAC (SPEC.md, vif) */
			static const uint8_t no_mac[6];
			memcpy(v->dev_mac, memcmp(c.dev_mac, no_mac, 6) ? c.dev_mac : c.mac, 6);
			v->mtu = c.mtu;
			memcpy(v->ip, c.ip, 4);
			memcpy(v->gateway, c.gateway, 4);
			v->prefix = c.prefix;
			v->ctrl = (volatile struct noxs_vif_ctrl *)(region + layout.vif_offset[i]);
		}
		for (uint32_t i = 0; rc == 0 && i < layout.n_vbd; i++) {
			struct noxs_vbd_ctrl c;
			copy_in(&c, layout.vbd_offset[i], NOXS_VBD_HOST_BYTES);
			rc = noxs_validate_vbd(&c, layout.vbd_id[i], err, errlen);
			vbd_hdr[i] = (volatile struct noxs_ctrl_hdr *)(region + layout.vbd_offset[i]);
		}
		barrier();
		if (*generation_ptr() != g1)
			continue;   /* torn read: the host rewrote the page meanwhile */
		return rc;
	}
}

/* After the page was read: the boot record and the frontend states say we run
 * (dry: only the boot record, a scratch one in a rehearsal). */
static void announce(bool dry)
{
	volatile struct noxs_boot_record *b = &sys->boot;
	doorbell = (snap.features & NOXS_FEAT_NMI_DOORBELL) != 0;
	b->tsc_entry = boot_tsc_entry;
	gen_seen = snap.generation;
	b->generation_seen = (uint32_t)snap.generation;
	for (unsigned i = 0; i < NOXS_APP_LEN; i++)
		b->app[i] = 0;
	size_t n = strnlen(guest_app_name, NOXS_APP_LEN);
	for (size_t i = 0; i < n; i++)
		b->app[i] = guest_app_name[i];
	barrier();
	b->state = NOXS_BOOT_BOOTING;

	noxs_set_fe_state(&sys->hdr, NOXS_STATE_INITIALISED);
	for (uint32_t i = 0; !dry && i < layout.n_vif; i++)
		noxs_set_fe_state(&vifs[i].ctrl->hdr, NOXS_STATE_INITIALISED);
	for (uint32_t i = 0; !dry && i < layout.n_vbd; i++)
		noxs_set_fe_state(vbd_hdr[i], NOXS_STATE_INITIALISED);
}

/* A shell's guest, woken at its wait point (dry: the rehearsal before it): the
 * real page, and the boot record says so. */
static void take_identity(bool dry)
{
	char err[128];
	if (read_config(err, sizeof(err)) != 0)
		bad_page(err);
	sys = (volatile struct noxs_sysctl_ctrl *)(region + layout.sysctl_offset);
	if (dry)
		sys = &rehearsal;
	announce(dry);
}

/* Under TCG the first run of any code costs its translation (~5-10 us per block on
 * these hosts): what a woken shell runs on its way to READY (the page read, the
 * boot record, devices up and READY; the clock ran just before) runs once here,
 * at prepare time, on the placeholder page and a scratch boot record
 * (docs/execute-path.md). The NIC set-up and the app's own start are left. */
static void rehearse(void)
{
	volatile struct noxs_sysctl_ctrl *real = sys;
	take_identity(true);
	(void)xs_wanted();
	noxs_devices_up();
	record_ready(guest_app_name);
	devices_said = false;
	sys = real;
}

void noxs_init(void)
{
	struct pci_dev dev;
	if (pci_find(NOXS_PCI_VENDOR, NOXS_PCI_DEVICE, 0, &dev) != 0)
		guest_fatal(NOXS_ERR_NO_DEVICE,
		            "noxs: no NoXS device (ivshmem-plain %04x:%04x) on the PCI bus",
		            NOXS_PCI_VENDOR, NOXS_PCI_DEVICE);
	uint64_t size = 0;
	uint64_t base = pci_bar_map_nodma(&dev, NOXS_PCI_BAR, &size);
	if (!base)
		guest_fatal(NOXS_ERR_NO_DEVICE, "noxs: cannot map BAR%u of %02x:%02x.%u", NOXS_PCI_BAR,
		            dev.bus, dev.slot, dev.func);
	if (size < NOXS_REGION_MIN)
		guest_fatal(NOXS_ERR_BAD_PAGE, "noxs: BAR%u is %llu bytes (want >= %u)", NOXS_PCI_BAR,
		            (unsigned long long)size, NOXS_REGION_MIN);
	region = (volatile uint8_t *)(uintptr_t)base;
	region_bytes = size;

	char err[128];
	if (read_config(err, sizeof(err)) != 0)
		bad_page(err);

	sys = (volatile struct noxs_sysctl_ctrl *)(region + layout.sysctl_offset);
	if (snap.features & NOXS_FEAT_WAIT_CONFIG) {
		/* A prepared shell: say so, and wait for the host to write the real
		 * page. Either it stops our vCPU here and resumes it after the
		 * rewrite, or (NOXS_FEAT_CONSOLE_BELL) we sleep until it rings. */
		uint64_t g = snap.generation;
		bool bell = (snap.features & NOXS_FEAT_CONSOLE_BELL) && console_bell_on();
		if (bell) {
			clock_pit_quiesce();   /* else QEMU's PIT timer wakes it 36 times a second */
			/* The clock on the placeholder (it carries the host's TSC rate): the
			 * NIC prewarm below may use it, and its code is then translated for
			 * the create (guest_start runs both again on the real page). */
			clock_init();
			noxs_clock_ready();
			/* and bring up the NICs the placeholder names (by dev_mac) */
			for (uint32_t i = 0; i < layout.n_vif; i++)
				noxs_vif_prewarm(&vifs[i]);
			rehearse();
		}
		barrier();
		sys->boot.state = bell ? NOXS_BOOT_WAITING_BELL : NOXS_BOOT_WAITING;
		/* No spinning once rung: under TCG every pause drops and retakes
		 * QEMU's big lock, which starves the main loop that delivers the
		 * interrupts (a wake-up then took 1-10 ms instead of ~0.05). The host
		 * writes the page first and rings after. sti's one-instruction shadow:
		 * no wake-up is lost before hlt. */
		while (*generation_ptr() == g) {
			if (bell)
				__asm__ volatile("sti; hlt; cli" ::: "memory");
			else
				cpu_pause();
		}
		bell_armed = bell;   /* turned off by noxs_ready(): 4 I/O exits, ~0.2 ms under TCG */
		take_identity(false);
		return;
	}
	announce(false);
}

/* A guest without the network stack has nothing to bring up early (netif.c
 * overrides this in the network apps). */
__attribute__((weak)) void noxs_vif_prewarm(const struct noxs_vif_info *vif)
{
	(void)vif;
}

uint64_t noxs_tsc_hint(void)
{
	return (snap.features & NOXS_FEAT_TSC_HZ) ? snap.tsc_hz : 0;
}

/* After clock_init: the rate in the record, and the wall clock base. */
void noxs_clock_ready(void)
{
	clock_rebase_wall(snap.host_time_ns, tsc_at_read);
	if (!sys)
		return;
	sys->boot.tsc_hz = tsc_hz();
	sys->boot.tsc_source = clock_source();
}

unsigned noxs_vif_count(void)
{
	return layout.n_vif;
}

const struct noxs_vif_info *noxs_vif(unsigned i)
{
	return i < layout.n_vif ? &vifs[i] : NULL;
}

unsigned noxs_vbd_count(void)
{
	return layout.n_vbd;
}

int noxs_vbd(unsigned i, struct noxs_vbd_info *out)
{
	struct noxs_vbd_ctrl c;
	char err[96];

	if (i >= layout.n_vbd)
		return -1;
	copy_in(&c, layout.vbd_offset[i], NOXS_VBD_HOST_BYTES);
	if (noxs_validate_vbd(&c, layout.vbd_id[i], err, sizeof(err)) != 0) {
		printf("%s\n", err);
		return -1;
	}
	out->id = layout.vbd_id[i];
	out->sectors = c.sectors;
	out->sector_size = c.sector_size;
	out->read_only = c.mode == NOXS_VBD_RO;
	out->ctrl = (volatile struct noxs_vbd_ctrl *)(region + layout.vbd_offset[i]);
	return 0;
}

const volatile struct noxs_device_page *noxs_page(void)
{
	return (const volatile struct noxs_device_page *)region;
}

void noxs_set_fe_state(volatile struct noxs_ctrl_hdr *hdr, uint32_t state)
{
	if (!hdr)
		return;
	hdr->fe_state = state;
	barrier();
	hdr->fe_events = hdr->fe_events + 1;
}

void noxs_devices_up(void)
{
	if (sys) {
		sys->boot.tsc_devices_up = tsc_read();
		barrier();
		sys->boot.state = NOXS_BOOT_DEVICES_UP;
		noxs_set_fe_state(&sys->hdr, NOXS_STATE_CONNECTED);
	}
	devices_said = true;   /* printed by noxs_ready(), after READY: off the boot path */
}

static void record_ready(const char *app)
{
	if (sys) {
		volatile struct noxs_boot_record *b = &sys->boot;
		b->tsc_ready = tsc_read();
		size_t n = strnlen(app, NOXS_APP_LEN);
		for (size_t i = 0; i < NOXS_APP_LEN; i++)
			b->app[i] = i < n ? app[i] : 0;
		barrier();
		b->state = NOXS_BOOT_READY;
	}
}

void noxs_ready(const char *app)
{
	record_ready(app);
	/* console_puts, not printf: printf's first use costs ~0.3 ms of TCG translation.
	 * Every byte is an I/O exit (~3.5 us under TCG): the NoXS front-end prints
	 * nothing of its own between the boot banner and READY. */
	if (bell_armed) {
		console_bell_off();
		bell_armed = false;
	}
	if (devices_said)
		console_puts("lightvm-guest: devices up\n");
	console_puts("READY ");
	console_puts(app);
	console_puts("\n");
	clock_pit_quiesce();   /* after READY: off the boot path */
}

void noxs_count(uint64_t app_counter)
{
	if (sys)
		sys->boot.app_counter = app_counter;
}

/* One more interrupt taken (timer, device or NMI): the vCPU runs. */
void noxs_heartbeat(void)
{
	if (sys)
		sys->boot.heartbeat = sys->boot.heartbeat + 1;
}

/* Will the host ring the NMI doorbell after a sysctl request? If not,
 * idle_until() has to poll the page. */
bool noxs_doorbell(void)
{
	return doorbell;
}

/* Called from idle_until: act on sysctl requests, follow page rewrites. */
void noxs_service(void)
{
	if (!sys)
		return;
	uint32_t req = sys->status_req;
	if (req & NOXS_SYSCTL_POWEROFF) {
		sys->status_ack = sys->status_ack | NOXS_SYSCTL_POWEROFF;
		guest_poweroff();
	}
	if (req & NOXS_SYSCTL_CRASH) {
		sys->status_ack = sys->status_ack | NOXS_SYSCTL_CRASH;
		guest_fatal(NOXS_ERR_APP, "sysctl: crash requested by the host");
	}
	noxs_follow();
}

/* A new page generation: the host stamped host_time_ns before resuming us
 * (unpause, restore, migration in; SPEC.md, "The wall clock"), or rewrote
 * the page. Re-base the wall clock at the stamp and follow the doorbell
 * feature. Called on every idle wake-up and every wall clock read, so the
 * first read after a resume never returns the clock of before the pause;
 * the host's NMI after cont makes an idle guest look at once. */
void noxs_follow(void)
{
	if (!sys)
		return;
	uint64_t g1 = *generation_ptr();
	if ((g1 & 1) || g1 == gen_seen)
		return;
	barrier();
	uint64_t host_ns = *(volatile uint64_t *)(region + offsetof(struct noxs_device_page, host_time_ns));
	uint64_t features = *(volatile uint64_t *)(region + offsetof(struct noxs_device_page, features));
	uint64_t now = tsc_read();
	barrier();
	if (*generation_ptr() != g1)
		return;   /* mid-rewrite: try again on the next pass */
	clock_rebase_wall(host_ns, now);
	doorbell = (features & NOXS_FEAT_NMI_DOORBELL) != 0;
	gen_seen = g1;
	sys->boot.generation_seen = (uint32_t)g1;
}

void noxs_set_stopping(void)
{
	if (sys)
		sys->boot.state = NOXS_BOOT_STOPPING;
}

void noxs_close_all(void)
{
	if (!sys)
		return;
	for (uint32_t i = 0; i < layout.n_vif; i++)
		noxs_set_fe_state(&vifs[i].ctrl->hdr, NOXS_STATE_CLOSED);
	for (uint32_t i = 0; i < layout.n_vbd; i++)
		noxs_set_fe_state(vbd_hdr[i], NOXS_STATE_CLOSED);
	noxs_set_fe_state(&sys->hdr, NOXS_STATE_CLOSED);
}

void noxs_set_halted(void)
{
	if (sys)
		sys->boot.state = NOXS_BOOT_HALTED;
}

void noxs_fatal_record(uint32_t err, const char *msg)
{
	if (!sys)
		return;
	volatile struct noxs_boot_record *b = &sys->boot;
	size_t n = strnlen(msg, NOXS_MESSAGE_LEN - 1);
	for (size_t i = 0; i < NOXS_MESSAGE_LEN; i++)
		b->message[i] = i < n ? msg[i] : 0;
	b->error = err;
	barrier();
	b->state = NOXS_BOOT_ERROR;
}
