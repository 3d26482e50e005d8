/*
 * clock.c - the TSC clock. The rate comes from, in order: the host's hint
 * in the NoXS page, CPUID 0x15, CPUID 0x16, the hypervisor leaf
 * 0x40000010, or ~2 ms of calibration against PIT channel 0. Under TCG the
 * guest TSC runs at the host's TSC rate, so a host that learned the rate
 * once (from any guest's boot record) can hand it to every later guest and
 * spare it the calibration.
 */
#include "base.h"

#define PIT_HZ 1193182ull
#define HZ_MIN 1000000ull          /* plausible TSC rates: 1 MHz .. 100 GHz */
#define HZ_MAX 100000000000ull

static uint64_t hz;
static uint64_t mult;              /* ns = (ticks * mult) >> 32 */
static uint32_t source;
static uint64_t wall_base_ns, wall_base_tsc;

uint64_t tsc_read(void)
{
	uint32_t lo, hi;
	__asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
	return ((uint64_t)hi << 32) | lo;
}

uint64_t tsc_hz(void) { return hz; }
uint32_t clock_source(void) { return source; }

static uint64_t ticks_to_ns(uint64_t ticks)
{
	return (uint64_t)(((unsigned __int128)ticks * mult) >> 32);
}

uint64_t clock_ns(void)
{
	uint64_t now = tsc_read();
	if (!hz || now < boot_tsc_entry)
		return 0;
	return ticks_to_ns(now - boot_tsc_entry);
}

/* The host stamps the page again whenever it resumes us after our TSC
 * stood still (pause, restore, migration): follow that first. */
uint64_t wallclock_ns(void)
{
	noxs_follow();
	uint64_t now = tsc_read();
	if (!hz || now < wall_base_tsc)
		return wall_base_ns;
	return wall_base_ns + ticks_to_ns(now - wall_base_tsc);
}

void clock_rebase_wall(uint64_t host_time_ns, uint64_t tsc)
{
	wall_base_ns = host_time_ns;
	wall_base_tsc = tsc;
}

static uint16_t pit_read(void)
{
	outb(0x43, 0x00);                 /* latch channel 0 */
	uint8_t lo = inb(0x40);
	uint8_t hi = inb(0x40);
	return (uint16_t)(lo | (hi << 8));
}

/* ~2 ms against PIT channel 0 in mode 0 (one-shot: no periodic timer is
 * left running in QEMU afterwards). 0 if the PIT does not count. */
static uint64_t calibrate_pit(void)
{
	const uint16_t span = (uint16_t)(PIT_HZ / 500);   /* 2 ms */
	outb(0x43, 0x30);                 /* ch0, lo/hi, mode 0, binary */
	outb(0x40, 0xff);
	outb(0x40, 0xff);
	uint16_t c0 = pit_read(), c;
	uint64_t t0 = tsc_read(), t1;
	unsigned spins = 0;
	do {
		c = pit_read();
		t1 = tsc_read();
		if (++spins > 200000)
			return 0;
	} while ((uint16_t)(c0 - c) < span);
	uint64_t dc = (uint16_t)(c0 - c);
	return dc ? (t1 - t0) * PIT_HZ / dc : 0;
}

static bool plausible(uint64_t v) { return v >= HZ_MIN && v <= HZ_MAX; }

/* QEMU resets PIT channel 0 to mode 3 (square wave, 18.2 Hz): its timer
 * fires on every edge, ~36 times a second, whether or not the IRQ is
 * masked, and was most of an idle VM's host CPU. Mode 0 with a count of 1
 * reaches terminal count once and then leaves no timer running. Called
 * by noxs_ready() once READY is out: three port writes (and a new
 * translated block) kept off the boot path; an app that wants the PIT
 * programs it after that. Harmless without a PIT. */
void clock_pit_quiesce(void)
{
	outb(0x43, 0x30);                 /* ch0, lo/hi, mode 0, binary */
	outb(0x40, 1);
	outb(0x40, 0);
}

static uint64_t cpuid_rate(uint32_t *src)
{
	uint32_t r[4];
	cpuid(0, 0, r);
	uint32_t max = r[0];
	if (max >= 0x15) {
		cpuid(0x15, 0, r);
		if (r[0] && r[1] && r[2]) {
			*src = NOXS_TSC_CPUID_15H;
			return (uint64_t)r[2] * r[1] / r[0];
		}
	}
	if (max >= 0x16) {
		cpuid(0x16, 0, r);
		if (r[0] & 0xffff) {
			*src = NOXS_TSC_CPUID_16H;
			return (uint64_t)(r[0] & 0xffff) * 1000000ull;
		}
	}
	cpuid(1, 0, r);
	if (r[2] & (1u << 31)) {          /* running under a hypervisor */
		cpuid(0x40000000, 0, r);
		if (r[0] >= 0x40000010 && r[0] < 0x40010000) {
			cpuid(0x40000010, 0, r);
			if (r[0]) {
				*src = NOXS_TSC_HV_LEAF;
				return (uint64_t)r[0] * 1000ull;
			}
		}
	}
	return 0;
}

void clock_init(void)
{
	uint64_t v = noxs_tsc_hint();    /* from the validated snapshot */
	uint32_t src = NOXS_TSC_UNKNOWN;
	if (plausible(v))
		src = NOXS_TSC_PAGE;
	if (!plausible(v))
		v = cpuid_rate(&src);
	if (!plausible(v)) {
		v = calibrate_pit();
		src = NOXS_TSC_PIT;
	}
	if (!plausible(v))
		guest_fatal(NOXS_ERR_DEVICE, "clock: no usable TSC rate (PIT calibration gave %llu Hz)",
		            (unsigned long long)v);
	mult = (1000000000ull << 32) / v;
	hz = v;
	source = src;
}
