/* noop: boot, report READY, idle, obey sysctl (poweroff from idle_until). */
#include "guest.h"

void app_main(void)
{
	noxs_devices_up();
	noxs_ready("noop");
	for (;;)
		idle_until(UINT64_MAX);
}
