/*
 * dirty: a guest that keeps writing its memory, for live-migration convergence
 * tests. Touches every 4 KiB page of a buffer (dirty_kib=N on the command line,
 * default 2048, at most the buffer) in a loop; app_counter counts the passes.
 * Between passes it services the NoXS sysctl page (poweroff) without sleeping.
 */
#include "guest.h"

#define DIRTY_MAX_KIB 8192u
static volatile uint8_t buffer[DIRTY_MAX_KIB * 1024] __attribute__((aligned(4096)));

static unsigned dirty_kib(void)
{
	const char *p = boot_cmdline();
	for (; *p; p++) {
		if ((p == boot_cmdline() || p[-1] == ' ') && strncmp(p, "dirty_kib=", 10) == 0) {
			unsigned v = 0;
			for (p += 10; *p >= '0' && *p <= '9'; p++)
				v = v * 10 + (unsigned)(*p - '0');
			return v && v <= DIRTY_MAX_KIB ? v : DIRTY_MAX_KIB;
		}
	}
	return 2048;
}

void app_main(void)
{
	unsigned kib = dirty_kib();
	noxs_devices_up();
	noxs_ready("dirty");
	printf("DIRTY %u KiB\n", kib);
	for (uint64_t pass = 1;; pass++) {
		/* Never 0: a page whose one written byte is 0 again is all zeros, and a
		 * migration sends a zero page as a flag, not 4 KiB (one pass in 256 would
		 * then move almost nothing). */
		uint8_t mark = (uint8_t)(pass % 255u + 1u);
		for (unsigned off = 0; off < kib * 1024; off += 4096)
			buffer[off] = mark;
		noxs_count(pass);
		idle_until(0);  /* deadline already passed: services sysctl, no sleep */
	}
}
