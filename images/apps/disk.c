/*
 * disk.c - read the first and the last sector of NoXS vbd 0 and show them.
 *
 * Proves a disk-backed VM really reads its disk: after both reads succeed it
 * prints
 *   disk: vbd 0 <sectors> sectors <ro|rw> via <transport>
 *   disk: sector 0 fnv1a=<8 hex> head=<first 16 bytes, hex>
 *   disk: sector <last> fnv1a=<8 hex> head=<first 16 bytes, hex>
 *   disk: SUCCESS
 * and only then reports READY (so `lightvm create` waits for the reads). The
 * NoXS page's capacity must equal the device's; any failure is fatal. The
 * vbd's `reads` counter (boot record side of the page) counts sectors read.
 */
#include "blk.h"

static uint8_t sector[512];

static uint32_t fnv1a(const uint8_t *p, size_t n)
{
	uint32_t h = 2166136261u;
	for (size_t i = 0; i < n; i++)
		h = (h ^ p[i]) * 16777619u;
	return h;
}

static void show(struct noxs_vbd_info *info, struct vblk *b, uint64_t n)
{
	if (vblk_read(b, n, sector, 1) != 0)
		guest_fatal(NOXS_ERR_APP, "disk: reading sector %llu failed", (unsigned long long)n);
	info->ctrl->reads = info->ctrl->reads + 1;
	char head[33];
	for (unsigned i = 0; i < 16; i++)
		snprintf(head + 2 * i, 3, "%02x", sector[i]);
	printf("disk: sector %llu fnv1a=%08x head=%s\n", (unsigned long long)n, fnv1a(sector, sizeof(sector)), head);
}

void app_main(void)
{
	struct noxs_vbd_info info;

	if (noxs_vbd_count() == 0 || noxs_vbd(0, &info) != 0)
		guest_fatal(NOXS_ERR_APP, "disk: no vbd 0 in the NoXS page");
	struct vblk *b = vblk_open(0);
	if (!b)
		guest_fatal(NOXS_ERR_APP, "disk: no virtio-blk device for vbd 0");
	if (info.sector_size != 512 || vblk_sectors(b) != info.sectors)
		guest_fatal(NOXS_ERR_APP, "disk: NoXS says %llu sectors of %u bytes, the device %llu of 512",
			    (unsigned long long)info.sectors, info.sector_size,
			    (unsigned long long)vblk_sectors(b));
	noxs_set_fe_state(&info.ctrl->hdr, NOXS_STATE_CONNECTED);
	printf("disk: vbd %u %llu sectors %s via %s\n", info.id, (unsigned long long)info.sectors,
	       info.read_only ? "ro" : "rw", vblk_describe(b));
	show(&info, b, 0);
	show(&info, b, info.sectors - 1);
	printf("disk: SUCCESS\n");
	noxs_devices_up();
	noxs_ready("disk");
	for (;;)
		idle_until(UINT64_MAX);
}
