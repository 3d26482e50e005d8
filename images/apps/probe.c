/*
 * probe: a test image for the base library's services, driven by the
 * command line (probe=...). Prints one result line, then idles (obeying
 * sysctl) so the test can also power it off:
 *   probe=wall   "WALL <wallclock_ns> <clock_ns>"
 *   probe=irq    PIT channel 0 at 1 kHz through IO-APIC GSI 2 (irq_attach_gsi)
 *                for 100 ms of idle_until: "IRQ <count> <idle wakeups>"
 *   probe=mmio   "MMIO <n> <base> <gsi>" for each virtio_mmio_find() hit, then "MMIO end"
 *   probe=msi    "MSI <vector> <address> <data>" from irq_alloc_vector/msi_*
 *   probe=pci    "PCI <bus>:<slot>.<func> <bar2> <size>" for the NoXS device
 */
#include "guest.h"

static const char *arg(const char *key)
{
	size_t n = strlen(key);
	for (const char *p = boot_cmdline(); *p; p++)
		if ((p == boot_cmdline() || p[-1] == ' ') && strncmp(p, key, n) == 0)
			return p + n;
	return "";
}

static volatile unsigned ticks;

static void on_tick(void *ctx)
{
	(void)ctx;
	ticks++;
}

static void outb(uint16_t port, uint8_t v) { __asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port)); }

static void probe_irq(void)
{
	if (irq_attach_gsi(2, on_tick, NULL) != 0) {
		printf("IRQ attach failed\n");
		return;
	}
	const uint16_t div = 1193;          /* ~1 kHz */
	outb(0x43, 0x34);                   /* ch0, lo/hi, mode 2 (rate generator) */
	outb(0x40, (uint8_t)div);
	outb(0x40, (uint8_t)(div >> 8));
	uint64_t end = clock_ns() + 100000000ull;
	unsigned wakeups = 0;
	while (clock_ns() < end) {
		idle_until(end);
		wakeups++;
	}
	outb(0x43, 0x30);                   /* back to one-shot mode 0: no more ticks */
	outb(0x40, 0);
	outb(0x40, 0);
	printf("IRQ %u %u\n", ticks, wakeups);
}

void app_main(void)
{
	noxs_devices_up();
	noxs_ready("probe");
	const char *what = arg("probe=");
	if (strncmp(what, "wall", 4) == 0) {
		printf("WALL %llu %llu\n", (unsigned long long)wallclock_ns(), (unsigned long long)clock_ns());
	} else if (strncmp(what, "irq", 3) == 0) {
		probe_irq();
	} else if (strncmp(what, "mmio", 4) == 0) {
		uint64_t base;
		unsigned gsi;
		for (unsigned i = 0; virtio_mmio_find(i, &base, &gsi) == 0; i++)
			printf("MMIO %u 0x%llx %u\n", i, (unsigned long long)base, gsi);
		printf("MMIO end\n");
	} else if (strncmp(what, "msi", 3) == 0) {
		int v = irq_alloc_vector(on_tick, NULL);
		printf("MSI %d 0x%llx 0x%x\n", v, (unsigned long long)msi_address(), msi_data(v));
	} else if (strncmp(what, "pci", 3) == 0) {
		struct pci_dev d;
		uint64_t size = 0;
		if (pci_find(NOXS_PCI_VENDOR, NOXS_PCI_DEVICE, 0, &d) == 0) {
			uint64_t bar = pci_bar_map(&d, NOXS_PCI_BAR, &size);
			printf("PCI %02x:%02x.%u 0x%llx %llu cmd=0x%x\n", d.bus, d.slot, d.func,
			       (unsigned long long)bar, (unsigned long long)size, pci_cfg_read16(&d, 4));
		} else {
			printf("PCI none\n");
		}
	} else {
		printf("PROBE unknown\n");
	}
	for (;;)
		idle_until(UINT64_MAX);
}
