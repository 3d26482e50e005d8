/*
 * fault: a test image for the exception path. After READY it takes the CPU
 * exception named on the command line (fault=ud|pf|de|gp); tests expect a
 * register dump, "FATAL: exception ..." and QEMU exit status 3.
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

void app_main(void)
{
	noxs_devices_up();
	noxs_ready("fault");
	const char *what = arg("fault=");
	volatile uint64_t zero = 0;
	if (strncmp(what, "pf", 2) == 0)
		(void)*(volatile uint64_t *)0x100000000ull;   /* beyond the identity map */
	else if (strncmp(what, "de", 2) == 0)
		zero = 100 / zero;
	else if (strncmp(what, "gp", 2) == 0)
		(void)*(volatile uint64_t *)0x8000000000000000ull;   /* non-canonical */
	else
		__builtin_trap();
	for (;;)
		idle_until(UINT64_MAX);
}
