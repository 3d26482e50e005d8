/*
 * apic.c - local APIC (xAPIC MMIO), IO-APIC routing, MSI, and idle.
 *
 * Interrupts are on while the app runs, so handlers run asynchronously;
 * idle_until() returns as soon as any device interrupt has arrived since
 * its previous return, so an interrupt that lands just before the app
 * decides to idle is never slept through.
 */
#include "base.h"

#define LAPIC_BASE   0xfee00000ull
#define LAPIC_ID     0x020
#define LAPIC_EOI    0x0b0
#define LAPIC_SVR    0x0f0
#define LAPIC_LVT_TIMER 0x320
#define LAPIC_LVT_LINT0 0x350
#define LAPIC_LVT_LINT1 0x360
#define LAPIC_LVT_ERROR 0x370
#define LAPIC_TIMER_INIT 0x380
#define LAPIC_TIMER_DIV  0x3e0
#define LVT_MASKED   (1u << 16)

/* QEMU's APIC timer counts at 1 GHz / divider: with divide-by-1 one
 * count is one nanosecond (a KVM in-kernel APIC uses the same rate), so
 * the 32-bit count reaches 4.29 s; longer sleeps use divide-by-128
 * (128 ns a count, up to ~549 s). */
#define TIMER_DIV1   0xb
#define TIMER_DIV128 0xa
#define TIMER_MAX_COUNT 0xffffffffull
/* Without the NMI doorbell the host cannot wake us: poll the sysctl page
 * every 100 ms (10 wake-ups/s). With it, idle is tickless. */
#define POLL_TICK_NS 100000000ull

/* microvm has a second IO-APIC (GSI 24-47) when its ACPI is on. */
struct ioapic {
	uint64_t base;
	unsigned gsi_base, count;
};
static struct ioapic ioapics[2];
static unsigned n_ioapics;
static uint32_t lapic_id;
static uint32_t timer_div = TIMER_DIV1;
extern volatile uint64_t irq_seq;
static uint64_t irq_seen;

static uint32_t lapic_read(unsigned reg) { return mmio_read32(LAPIC_BASE + reg); }
static void lapic_write(unsigned reg, uint32_t v) { mmio_write32(LAPIC_BASE + reg, v); }

static uint32_t ioapic_read(const struct ioapic *io, unsigned reg)
{
	mmio_write32(io->base, reg);
	return mmio_read32(io->base + 0x10);
}

static void ioapic_write(const struct ioapic *io, unsigned reg, uint32_t v)
{
	mmio_write32(io->base, reg);
	mmio_write32(io->base + 0x10, v);
}

static void ioapic_probe(uint64_t base, unsigned gsi_base)
{
	struct ioapic io = { base, gsi_base, 0 };
	uint32_t ver = ioapic_read(&io, 1);
	uint8_t version = (uint8_t)ver;
	/* Absent MMIO reads as all-zeros or all-ones; a real IO-APIC has
	 * version 0x1x/0x20 and 1..240 redirection entries. */
	if (ver == 0 || ver == 0xffffffffu || version < 0x10 || version > 0x2f)
		return;
	io.count = ((ver >> 16) & 0xff) + 1;
	for (unsigned i = 0; i < io.count; i++)
		ioapic_write(&io, 0x10 + 2 * i, LVT_MASKED);
	ioapics[n_ioapics++] = io;
}

void apic_init(void)
{
	/* The legacy PICs stay masked: everything goes through the APICs. */
	outb(0x21, 0xff);
	outb(0xa1, 0xff);

	lapic_id = lapic_read(LAPIC_ID) >> 24;
	lapic_write(LAPIC_SVR, 0x100 | SPURIOUS_VECTOR);
	lapic_write(LAPIC_LVT_LINT0, LVT_MASKED);
	lapic_write(LAPIC_LVT_LINT1, 0x400);        /* NMI */
	lapic_write(LAPIC_LVT_ERROR, LVT_MASKED);
	lapic_write(LAPIC_TIMER_DIV, TIMER_DIV1);
	lapic_write(LAPIC_LVT_TIMER, TIMER_VECTOR); /* one-shot */
	lapic_write(LAPIC_TIMER_INIT, 0);

	ioapic_probe(0xfec00000ull, 0);
	if (n_ioapics && ioapics[0].count <= 24)
		ioapic_probe(0xfec10000ull, ioapics[0].count);
}

unsigned apic_ioapic_count(void)
{
	return n_ioapics;
}

void apic_eoi(void)
{
	lapic_write(LAPIC_EOI, 0);
}

/* One-shot: one interrupt in ~ns (at most ~549 s; the caller re-arms). */
void apic_timer_arm(uint64_t ns)
{
	uint32_t div = TIMER_DIV1;
	if (ns > TIMER_MAX_COUNT) {
		div = TIMER_DIV128;
		ns >>= 7;
		if (ns > TIMER_MAX_COUNT)
			ns = TIMER_MAX_COUNT;
	}
	if (ns == 0)
		ns = 1;
	if (div != timer_div) {
		lapic_write(LAPIC_TIMER_DIV, div);
		timer_div = div;
	}
	lapic_write(LAPIC_TIMER_INIT, (uint32_t)ns);
}

/* No timer interrupt until the next apic_timer_arm(). */
void apic_timer_stop(void)
{
	lapic_write(LAPIC_TIMER_INIT, 0);
}

int irq_attach_gsi(unsigned gsi, irq_handler_t fn, void *ctx)
{
	for (unsigned i = 0; i < n_ioapics; i++) {
		const struct ioapic *io = &ioapics[i];
		if (gsi < io->gsi_base || gsi >= io->gsi_base + io->count)
			continue;
		int v = irq_alloc_vector(fn, ctx);
		if (v < 0)
			return -1;
		unsigned pin = gsi - io->gsi_base;
		/* edge, active high, fixed delivery, physical destination */
		ioapic_write(io, 0x10 + 2 * pin + 1, lapic_id << 24);
		ioapic_write(io, 0x10 + 2 * pin, (uint32_t)v);
		return 0;
	}
	return -1;
}

/* Mask the pin of ``gsi`` again (its vector stays allocated). */
void irq_mask_gsi(unsigned gsi)
{
	for (unsigned i = 0; i < n_ioapics; i++) {
		const struct ioapic *io = &ioapics[i];
		if (gsi >= io->gsi_base && gsi < io->gsi_base + io->count)
			ioapic_write(io, 0x10 + 2 * (gsi - io->gsi_base), LVT_MASKED);
	}
}

uint64_t msi_address(void)
{
	return LAPIC_BASE | ((uint64_t)lapic_id << 12);
}

uint32_t msi_data(int vector)
{
	return (uint32_t)vector & 0xff;   /* edge, fixed delivery */
}

/*
 * Tickless: the LAPIC one-shot timer is armed only for the caller's deadline
 * (NET_TIME_NEVER / UINT64_MAX: not at all), so an idle guest with nothing
 * due sleeps until an interrupt or the NMI doorbell. A host without the
 * doorbell (NOXS_FEAT_NMI_DOORBELL clear) gets the page polled at 10 Hz.
 */
void idle_until(uint64_t deadline_ns)
{
	for (;;) {
		/* Clear the doorbell before looking at the page: an NMI after
		 * this point makes idle_halt return at once. */
		nmi_pending = 0;
		barrier();
		noxs_service();
		cpu_cli();
		if (irq_seq != irq_seen) {
			irq_seen = irq_seq;
			break;
		}
		uint64_t now = clock_ns();
		if (now >= deadline_ns)
			break;
		uint64_t wait = deadline_ns - now;
		bool poll = !noxs_doorbell();
		if (poll && wait > POLL_TICK_NS)
			wait = POLL_TICK_NS;
		if (deadline_ns == UINT64_MAX && !poll)
			apic_timer_stop();
		else
			apic_timer_arm(wait);
		idle_halt();   /* returns with interrupts on */
	}
	cpu_sti();
}
