/* stall: a test image that boots and never reports READY (it idles and obeys
 * sysctl): the host's create waits for it until its timeout, which gives tests
 * a create that is reliably in flight (e.g. to kill lightvmd mid-create). */
#include "guest.h"

void app_main(void)
{
	noxs_devices_up();
	for (;;)
		idle_until(UINT64_MAX);
}
