/*
 * virtio_blk.c - a minimal, read-only virtio-blk driver (guest only).
 *
 * virtio-mmio only (microvm: -device virtio-blk-device), legacy (version 1,
 * QEMU's default) or modern (version 2). One request queue (queue 0) of
 * VQ_SIZE entries, one request at a time: a three-descriptor chain
 *   header {type = IN, reserved, sector}  (device reads)
 *   data                                  (device writes)
 *   status byte                           (device writes, 0 = OK)
 * No features are negotiated beyond VIRTIO_F_VERSION_1 on modern devices.
 * Completion is awaited by polling the used ring between idle_until() naps
 * (the transport's interrupt, when attached, only shortens the naps).
 * What the device writes (used id, status) is checked before use.
 * Transport registers and accessors: images/include/virtio_mmio.h (shared with
 * images/net/virtio_net.c).
 */
#include "blk.h"
#include "virtio_mmio.h"

#define VQ_SIZE      8u
#define VQ_ALIGN     4096u
#define VQ_BYTES     8192u
#define MAX_SECTORS  8u
#define SECTOR       512u
#define READ_TIMEOUT_NS 5000000000ull

#define VIRTIO_ID_BLOCK     2u
#define BLK_T_IN       0u
#define BLK_S_OK       0u

struct vq_desc { uint64_t addr; uint32_t len; uint16_t flags, next; };
struct vq_avail { uint16_t flags, idx, ring[VQ_SIZE], used_event; };
struct vq_used_elem { uint32_t id, len; };
struct vq_used { uint16_t flags, idx; struct vq_used_elem ring[VQ_SIZE]; uint16_t avail_event; };
struct blk_req_hdr { uint32_t type, reserved; uint64_t sector; };

struct vblk {
	volatile uint8_t *mmio;
	unsigned version;
	uint16_t size, last_used;
	volatile struct vq_desc *desc;
	volatile struct vq_avail *avail;
	volatile struct vq_used *used;
	uint64_t sectors;
	uint64_t irqs;
	char desc_text[64];
};

_Static_assert(VQ_SIZE * 16 + 6 + 2 * VQ_SIZE <= VQ_ALIGN, "legacy ring layout");
_Static_assert(VQ_ALIGN + 6 + 8 * VQ_SIZE <= VQ_BYTES, "queue memory");

static struct vblk the_vblk;
static uint8_t vq_mem[VQ_BYTES] __attribute__((aligned(VQ_ALIGN)));
static struct blk_req_hdr req_hdr __attribute__((aligned(16)));
static volatile uint8_t req_status;
static uint8_t bounce[MAX_SECTORS * SECTOR] __attribute__((aligned(SECTOR)));


static uint64_t dev_features(struct vblk *b)
{
	wr32(b->mmio, MMIO_DEV_FEAT_SEL, 0);
	uint64_t lo = rd32(b->mmio, MMIO_DEV_FEATURES);
	if (b->version == 1)
		return lo;
	wr32(b->mmio, MMIO_DEV_FEAT_SEL, 1);
	return lo | ((uint64_t)rd32(b->mmio, MMIO_DEV_FEATURES) << 32);
}

static void drv_features(struct vblk *b, uint64_t f)
{
	wr32(b->mmio, MMIO_DRV_FEAT_SEL, 0);
	wr32(b->mmio, MMIO_DRV_FEATURES, (uint32_t)f);
	if (b->version == 2) {
		wr32(b->mmio, MMIO_DRV_FEAT_SEL, 1);
		wr32(b->mmio, MMIO_DRV_FEATURES, (uint32_t)(f >> 32));
	}
}

static void irq_handler(void *ctx)
{
	struct vblk *b = ctx;

	b->irqs++;
	wr32(b->mmio, MMIO_INT_ACK, rd32(b->mmio, MMIO_INT_STATUS));
}

static int setup_queue(struct vblk *b)
{
	memset(vq_mem, 0, sizeof(vq_mem));
	b->desc = (volatile struct vq_desc *)vq_mem;
	b->avail = (volatile struct vq_avail *)(vq_mem + VQ_SIZE * sizeof(struct vq_desc));
	b->used = (volatile struct vq_used *)(vq_mem + VQ_ALIGN);
	b->last_used = 0;
	wr32(b->mmio, MMIO_QUEUE_SEL, 0);
	if (b->version == 2 ? rd32(b->mmio, MMIO_QUEUE_READY) : rd32(b->mmio, MMIO_QUEUE_PFN))
		return -1;
	uint32_t max = rd32(b->mmio, MMIO_QUEUE_NUM_MAX);
	if (max == 0)
		return -1;
	b->size = (uint16_t)(max < VQ_SIZE ? max : VQ_SIZE);
	if (b->size < 3 || (b->size & (b->size - 1)))
		return -1;
	uint64_t d = (uint64_t)(uintptr_t)b->desc, a = (uint64_t)(uintptr_t)b->avail;
	uint64_t u = (uint64_t)(uintptr_t)b->used;
	wr32(b->mmio, MMIO_QUEUE_NUM, b->size);
	if (b->version == 2) {
		wr32(b->mmio, MMIO_QUEUE_DESC_LO, (uint32_t)d);
		wr32(b->mmio, MMIO_QUEUE_DESC_HI, (uint32_t)(d >> 32));
		wr32(b->mmio, MMIO_QUEUE_AVAIL_LO, (uint32_t)a);
		wr32(b->mmio, MMIO_QUEUE_AVAIL_HI, (uint32_t)(a >> 32));
		wr32(b->mmio, MMIO_QUEUE_USED_LO, (uint32_t)u);
		wr32(b->mmio, MMIO_QUEUE_USED_HI, (uint32_t)(u >> 32));
		wr32(b->mmio, MMIO_QUEUE_READY, 1);
	} else {
		wr32(b->mmio, MMIO_QUEUE_ALIGN, VQ_ALIGN);
		wr32(b->mmio, MMIO_QUEUE_PFN, (uint32_t)(d / 4096));
	}
	return 0;
}

static int bring_up(struct vblk *b, unsigned gsi)
{
	wr32(b->mmio, MMIO_STATUS, 0);
	wr32(b->mmio, MMIO_STATUS, ST_ACK);
	wr32(b->mmio, MMIO_STATUS, ST_ACK | ST_DRIVER);
	uint64_t want = b->version == 2 ? F_VERSION_1 : 0;
	if ((dev_features(b) & want) != want)
		return -1;
	drv_features(b, want);
	if (b->version == 2) {
		wr32(b->mmio, MMIO_STATUS, ST_ACK | ST_DRIVER | ST_FEATURES_OK);
		if (!(rd32(b->mmio, MMIO_STATUS) & ST_FEATURES_OK))
			return -1;
	} else {
		wr32(b->mmio, MMIO_GUEST_PAGE_SIZE, 4096);
	}
	if (setup_queue(b))
		return -1;
	/* capacity: le64 at config offset 0 (two 32-bit reads; it does not change) */
	b->sectors = rd32(b->mmio, MMIO_CONFIG) | ((uint64_t)rd32(b->mmio, MMIO_CONFIG + 4) << 32);
	wr32(b->mmio, MMIO_STATUS, rd32(b->mmio, MMIO_STATUS) | ST_DRIVER_OK);
	if (rd32(b->mmio, MMIO_STATUS) & ST_FAILED)
		return -1;
	if (irq_attach_gsi(gsi, irq_handler, b) != 0)
		b->irqs = 0;   /* no interrupt: the naps below still poll */
	return 0;
}

struct vblk *vblk_open(unsigned index)
{
	struct vblk *b = &the_vblk;
	uint64_t base;
	unsigned gsi, seen = 0;

	for (unsigned n = 0; virtio_mmio_find(n, &base, &gsi) == 0; n++) {
		volatile uint8_t *m = (volatile uint8_t *)(uintptr_t)base;
		if (rd32(m, MMIO_MAGIC) != MMIO_MAGIC_VALUE || rd32(m, MMIO_DEVICE_ID) != VIRTIO_ID_BLOCK)
			continue;
		uint32_t ver = rd32(m, MMIO_VERSION);
		if (ver != 1 && ver != 2)
			continue;
		if (seen++ != index)
			continue;
		memset(b, 0, sizeof(*b));
		b->mmio = m;
		b->version = ver;
		if (bring_up(b, gsi)) {
			printf("virtio-blk: mmio@0x%llx: device refused setup\n", (unsigned long long)base);
			wr32(m, MMIO_STATUS, ST_FAILED);
			return 0;
		}
		snprintf(b->desc_text, sizeof(b->desc_text), "virtio-mmio v%u@0x%llx gsi %u", (unsigned)ver,
			 (unsigned long long)base, gsi);
		return b;
	}
	printf("virtio-blk: no device for vbd %u\n", index);
	return 0;
}

uint64_t vblk_sectors(const struct vblk *b) { return b->sectors; }
const char *vblk_describe(const struct vblk *b) { return b->desc_text; }

int vblk_read(struct vblk *b, uint64_t sector, void *buf, unsigned count)
{
	if (count == 0 || count > MAX_SECTORS || sector >= b->sectors || count > b->sectors - sector)
		return -1;
	req_hdr.type = BLK_T_IN;
	req_hdr.reserved = 0;
	req_hdr.sector = sector;
	req_status = 0xff;
	b->desc[0].addr = (uint64_t)(uintptr_t)&req_hdr;
	b->desc[0].len = sizeof(req_hdr);
	b->desc[0].flags = DESC_F_NEXT;
	b->desc[0].next = 1;
	b->desc[1].addr = (uint64_t)(uintptr_t)bounce;
	b->desc[1].len = count * SECTOR;
	b->desc[1].flags = DESC_F_NEXT | DESC_F_WRITE;
	b->desc[1].next = 2;
	b->desc[2].addr = (uint64_t)(uintptr_t)&req_status;
	b->desc[2].len = 1;
	b->desc[2].flags = DESC_F_WRITE;
	b->desc[2].next = 0;
	uint16_t idx = b->avail->idx;
	b->avail->ring[idx & (b->size - 1)] = 0;
	barrier();
	b->avail->idx = (uint16_t)(idx + 1);
	mb();
	wr32(b->mmio, MMIO_QUEUE_NOTIFY, 0);

	uint64_t deadline = clock_ns() + READ_TIMEOUT_NS;
	while (b->used->idx == b->last_used) {
		uint64_t now = clock_ns();
		if (now >= deadline)
			return -1;
		idle_until(now + 1000000);   /* 1 ms naps; the interrupt ends one sooner */
	}
	barrier();
	uint32_t id = b->used->ring[b->last_used & (b->size - 1)].id;
	b->last_used++;
	if (id != 0 || req_status != BLK_S_OK)
		return -1;
	memcpy(buf, bounce, count * SECTOR);
	return 0;
}
