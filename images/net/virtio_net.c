/*
 * virtio_net.c - virtio-net driver for our unikernels (guest only).
 *
 * Transports, tried in this order:
 *   - virtio-mmio (microvm: -device virtio-net-device), found through the
 *     "virtio_mmio.device=" entries of the command line. Modern (version 2,
 *     virtio 1.x; QEMU needs -global virtio-mmio.force-legacy=false) is
 *     preferred; QEMU's default legacy layout (version 1) is driven too, so
 *     the plain QEMU command line works. Interrupt: the transport's GSI,
 *     edge-triggered through the IO-APIC; the handler acknowledges
 *     InterruptStatus, which drops QEMU's level so the next event makes a new
 *     edge.
 *   - virtio-pci, modern capabilities only (-device virtio-net-pci; device
 *     0x1041, or the transitional 0x1000 with subsystem id 1). Interrupt:
 *     MSI-X vector 0 for the receive queue; without MSI-X the driver asks to be
 *     polled (vnet_poll_period()).
 * The device used is the one whose config-space MAC equals the NoXS vif's.
 *
 * Split virtqueues of VQ_SIZE entries, one buffer (virtio-net header + frame)
 * per descriptor, no offloads: we negotiate only VIRTIO_NET_F_MAC (and
 * VIRTIO_F_VERSION_1 on modern transports). Transmit copies the frame into a
 * per-descriptor buffer and reclaims finished ones lazily; its interrupts are
 * suppressed. Everything the device writes (used ring ids and lengths) is
 * range-checked before use.
 */
#include "guest.h"
#include "net.h"
#include "virtio_mmio.h"

#define VQ_SIZE      32u
#define BUF_SIZE     1536u          /* header (10 or 12) + a 1514-byte frame */
#define VQ_ALIGN     4096u          /* legacy MMIO QueueAlign; fine for modern too */
#define VQ_BYTES     8192u          /* desc + avail, then the used ring at +4096 */
#define RX_Q         0u
#define TX_Q         1u

/* virtio-pci modern common configuration */
#define PCI_DEV_FEAT_SEL    0
#define PCI_DEV_FEATURES    4
#define PCI_DRV_FEAT_SEL    8
#define PCI_DRV_FEATURES    12
#define PCI_MSIX_CONFIG     16
#define PCI_STATUS          20
#define PCI_QUEUE_SEL       22
#define PCI_QUEUE_SIZE      24
#define PCI_QUEUE_MSIX      26
#define PCI_QUEUE_ENABLE    28
#define PCI_QUEUE_NOTIFY_OFF 30
#define PCI_QUEUE_DESC      32
#define PCI_QUEUE_DRIVER    40
#define PCI_QUEUE_DEVICE    48
#define VIRTIO_NO_VECTOR    0xffffu


#define F_NET_MAC      (1ull << 5)

#define AVAIL_F_NO_INTERRUPT 1u

enum transport { T_MMIO_LEGACY = 1, T_MMIO_MODERN, T_PCI };

struct vq_desc { uint64_t addr; uint32_t len; uint16_t flags, next; };
struct vq_avail { uint16_t flags, idx, ring[VQ_SIZE], used_event; };
struct vq_used_elem { uint32_t id, len; };
struct vq_used { uint16_t flags, idx; struct vq_used_elem ring[VQ_SIZE]; uint16_t avail_event; };

struct vq {
	volatile struct vq_desc *desc;
	volatile struct vq_avail *avail;
	volatile struct vq_used *used;
	uint16_t size;          /* entries in use (<= VQ_SIZE, a power of two) */
	uint16_t last_used;     /* used->idx we have consumed up to */
	uint16_t in_flight;     /* tx: descriptors the device still owns */
	uint16_t next_free;     /* tx: where to start looking for a free descriptor */
	uint8_t busy[VQ_SIZE];  /* tx: the device owns this descriptor */
	volatile uint16_t *notify;   /* PCI only */
	uint8_t (*buf)[BUF_SIZE];
};

struct vnet {
	enum transport t;
	volatile uint8_t *mmio;       /* virtio-mmio base */
	volatile uint8_t *common, *isr, *devcfg, *notify_base;   /* virtio-pci */
	uint32_t notify_mult;
	unsigned hdr_len;
	unsigned gsi;
	int vector;
	uint64_t poll_ns;
	uint64_t irqs;
	struct vq rx, tx;
	char desc[64];
};

static struct vnet the_vnet;
static uint8_t vq_mem[2][VQ_BYTES] __attribute__((aligned(VQ_ALIGN)));
static uint8_t rx_bufs[VQ_SIZE][BUF_SIZE] __attribute__((aligned(64)));
static uint8_t tx_bufs[VQ_SIZE][BUF_SIZE] __attribute__((aligned(64)));

static inline uint16_t rd16(volatile uint8_t *base, unsigned off) { return *(volatile uint16_t *)(base + off); }
static inline void wr16(volatile uint8_t *base, unsigned off, uint16_t v) { *(volatile uint16_t *)(base + off) = v; }
static inline uint8_t rd8(volatile uint8_t *base, unsigned off) { return base[off]; }
static inline void wr8(volatile uint8_t *base, unsigned off, uint8_t v) { base[off] = v; }
static inline void wr64(volatile uint8_t *base, unsigned off, uint64_t v)
{
	wr32(base, off, (uint32_t)v);
	wr32(base, off + 4, (uint32_t)(v >> 32));
}

/* ---- transport-neutral accessors ---- */

static void set_status(struct vnet *v, uint8_t s)
{
	if (v->t == T_PCI)
		wr8(v->common, PCI_STATUS, s);
	else
		wr32(v->mmio, MMIO_STATUS, s);
}

static uint8_t get_status(struct vnet *v)
{
	return v->t == T_PCI ? rd8(v->common, PCI_STATUS) : (uint8_t)rd32(v->mmio, MMIO_STATUS);
}

static uint8_t cfg8(struct vnet *v, unsigned off)
{
	return v->t == T_PCI ? rd8(v->devcfg, off) : rd8(v->mmio, MMIO_CONFIG + off);
}

static uint64_t dev_features(struct vnet *v)
{
	if (v->t == T_PCI) {
		wr32(v->common, PCI_DEV_FEAT_SEL, 0);
		uint64_t lo = rd32(v->common, PCI_DEV_FEATURES);
		wr32(v->common, PCI_DEV_FEAT_SEL, 1);
		return lo | ((uint64_t)rd32(v->common, PCI_DEV_FEATURES) << 32);
	}
	wr32(v->mmio, MMIO_DEV_FEAT_SEL, 0);
	uint64_t lo = rd32(v->mmio, MMIO_DEV_FEATURES);
	if (v->t == T_MMIO_LEGACY)
		return lo;
	wr32(v->mmio, MMIO_DEV_FEAT_SEL, 1);
	return lo | ((uint64_t)rd32(v->mmio, MMIO_DEV_FEATURES) << 32);
}

static void drv_features(struct vnet *v, uint64_t f)
{
	if (v->t == T_PCI) {
		wr32(v->common, PCI_DRV_FEAT_SEL, 0);
		wr32(v->common, PCI_DRV_FEATURES, (uint32_t)f);
		wr32(v->common, PCI_DRV_FEAT_SEL, 1);
		wr32(v->common, PCI_DRV_FEATURES, (uint32_t)(f >> 32));
		return;
	}
	wr32(v->mmio, MMIO_DRV_FEAT_SEL, 0);
	wr32(v->mmio, MMIO_DRV_FEATURES, (uint32_t)f);
	if (v->t == T_MMIO_MODERN) {
		wr32(v->mmio, MMIO_DRV_FEAT_SEL, 1);
		wr32(v->mmio, MMIO_DRV_FEATURES, (uint32_t)(f >> 32));
	}
}

static void notify(struct vnet *v, unsigned q)
{
	mb();
	if (v->t == T_PCI)
		*(q == RX_Q ? v->rx.notify : v->tx.notify) = (uint16_t)q;
	else
		wr32(v->mmio, MMIO_QUEUE_NOTIFY, q);
}

/* Lay out queue q in vq_mem[q] and tell the device where it is. */
static int setup_queue(struct vnet *v, unsigned q, struct vq *vq, uint8_t (*bufs)[BUF_SIZE])
{
	uint32_t max;
	uint8_t *mem = vq_mem[q];

	memset(mem, 0, VQ_BYTES);
	vq->desc = (volatile struct vq_desc *)mem;
	vq->avail = (volatile struct vq_avail *)(mem + VQ_SIZE * sizeof(struct vq_desc));
	vq->used = (volatile struct vq_used *)(mem + VQ_ALIGN);
	vq->buf = bufs;
	vq->last_used = vq->in_flight = vq->next_free = 0;
	memset(vq->busy, 0, sizeof(vq->busy));

	if (v->t == T_PCI) {
		wr16(v->common, PCI_QUEUE_SEL, (uint16_t)q);
		max = rd16(v->common, PCI_QUEUE_SIZE);
	} else {
		wr32(v->mmio, MMIO_QUEUE_SEL, q);
		if (v->t == T_MMIO_MODERN ? rd32(v->mmio, MMIO_QUEUE_READY) : rd32(v->mmio, MMIO_QUEUE_PFN))
			return -1;   /* reset did not take */
		max = rd32(v->mmio, MMIO_QUEUE_NUM_MAX);
	}
	if (max == 0)
		return -1;
	vq->size = (uint16_t)(max < VQ_SIZE ? max : VQ_SIZE);
	if (vq->size & (vq->size - 1))
		return -1;   /* split rings need a power of two */

	uint64_t desc = (uint64_t)(uintptr_t)vq->desc;
	uint64_t avail = (uint64_t)(uintptr_t)vq->avail;
	uint64_t used = (uint64_t)(uintptr_t)vq->used;
	switch (v->t) {
	case T_PCI: {
		wr16(v->common, PCI_QUEUE_SIZE, vq->size);
		wr64(v->common, PCI_QUEUE_DESC, desc);
		wr64(v->common, PCI_QUEUE_DRIVER, avail);
		wr64(v->common, PCI_QUEUE_DEVICE, used);
		uint16_t off = rd16(v->common, PCI_QUEUE_NOTIFY_OFF);
		vq->notify = (volatile uint16_t *)(v->notify_base + (uint64_t)off * v->notify_mult);
		break;
	}
	case T_MMIO_MODERN:
		wr32(v->mmio, MMIO_QUEUE_NUM, vq->size);
		wr32(v->mmio, MMIO_QUEUE_DESC_LO, (uint32_t)desc);
		wr32(v->mmio, MMIO_QUEUE_DESC_HI, (uint32_t)(desc >> 32));
		wr32(v->mmio, MMIO_QUEUE_AVAIL_LO, (uint32_t)avail);
		wr32(v->mmio, MMIO_QUEUE_AVAIL_HI, (uint32_t)(avail >> 32));
		wr32(v->mmio, MMIO_QUEUE_USED_LO, (uint32_t)used);
		wr32(v->mmio, MMIO_QUEUE_USED_HI, (uint32_t)(used >> 32));
		wr32(v->mmio, MMIO_QUEUE_READY, 1);
		break;
	case T_MMIO_LEGACY:
		/* legacy: one contiguous area, used ring at the next QueueAlign
		 * boundary after desc + avail (here always VQ_ALIGN) */
		wr32(v->mmio, MMIO_QUEUE_NUM, vq->size);
		wr32(v->mmio, MMIO_QUEUE_ALIGN, VQ_ALIGN);
		wr32(v->mmio, MMIO_QUEUE_PFN, (uint32_t)(desc / 4096));
		break;
	}
	return 0;
}

/* The legacy used ring must start at align(desc + avail) for the size the
 * device uses; with VQ_SIZE <= 32 that is exactly VQ_ALIGN. */
_Static_assert(VQ_SIZE * 16 + 6 + 2 * VQ_SIZE <= VQ_ALIGN, "legacy ring layout");
_Static_assert(VQ_ALIGN + 6 + 8 * VQ_SIZE <= VQ_BYTES, "queue memory");

static void rx_post(struct vnet *v, uint16_t id)
{
	struct vq *vq = &v->rx;

	vq->desc[id].addr = (uint64_t)(uintptr_t)vq->buf[id];
	vq->desc[id].len = BUF_SIZE;
	vq->desc[id].flags = DESC_F_WRITE;
	vq->desc[id].next = 0;
	uint16_t idx = vq->avail->idx;
	vq->avail->ring[idx & (vq->size - 1)] = id;
	barrier();
	vq->avail->idx = (uint16_t)(idx + 1);
}

static void irq_handler(void *ctx)
{
	struct vnet *v = ctx;

	v->irqs++;
	if (v->t != T_PCI) {
		uint32_t s = rd32(v->mmio, MMIO_INT_STATUS);
		wr32(v->mmio, MMIO_INT_ACK, s);
	}
	/* the work happens in vnet_rx(), from the main loop: idle_until()
	 * returns because this interrupt arrived */
}

/* Reset, negotiate, set up both queues, DRIVER_OK. */
static int bring_up(struct vnet *v)
{
	uint64_t want = F_NET_MAC | (v->t == T_MMIO_LEGACY ? 0 : F_VERSION_1);
	uint64_t have = dev_features(v);

	if ((have & want) != want)
		return -1;
	drv_features(v, want);
	if (v->t != T_MMIO_LEGACY) {
		set_status(v, ST_ACK | ST_DRIVER | ST_FEATURES_OK);
		if (!(get_status(v) & ST_FEATURES_OK))
			return -1;
	} else {
		wr32(v->mmio, MMIO_GUEST_PAGE_SIZE, 4096);
	}
	v->hdr_len = v->t == T_MMIO_LEGACY ? 10 : 12;
	if (setup_queue(v, RX_Q, &v->rx, rx_bufs) || setup_queue(v, TX_Q, &v->tx, tx_bufs))
		return -1;
	v->tx.avail->flags = AVAIL_F_NO_INTERRUPT;
	if (v->t == T_PCI) {
		wr16(v->common, PCI_QUEUE_SEL, RX_Q);
		wr16(v->common, PCI_QUEUE_ENABLE, 1);
		wr16(v->common, PCI_QUEUE_SEL, TX_Q);
		wr16(v->common, PCI_QUEUE_ENABLE, 1);
	}
	for (uint16_t i = 0; i < v->rx.size; i++)
		rx_post(v, i);
	set_status(v, (uint8_t)(get_status(v) | ST_DRIVER_OK));
	if (get_status(v) & ST_FAILED)
		return -1;
	notify(v, RX_Q);
	return 0;
}

static bool mac_matches(struct vnet *v, const uint8_t mac[6])
{
	for (unsigned i = 0; i < 6; i++)
		if (cfg8(v, i) != mac[i])
			return false;
	return true;
}

static void fmt_mac(char *out, const uint8_t mac[6])
{
	snprintf(out, 18, "%02x:%02x:%02x:%02x:%02x:%02x", mac[0], mac[1], mac[2], mac[3], mac[4], mac[5]);
}

/* ---- virtio-mmio ---- */

static struct vnet *open_mmio(const uint8_t mac[6])
{
	struct vnet *v = &the_vnet;
	uint64_t base;
	unsigned gsi;

	for (unsigned n = 0; virtio_mmio_find(n, &base, &gsi) == 0; n++) {
		volatile uint8_t *m = (volatile uint8_t *)(uintptr_t)base;
		if (rd32(m, MMIO_MAGIC) != MMIO_MAGIC_VALUE || rd32(m, MMIO_DEVICE_ID) != 1)
			continue;   /* an empty transport, or not a NIC */
		uint32_t ver = rd32(m, MMIO_VERSION);
		if (ver != 1 && ver != 2)
			continue;
		memset(v, 0, sizeof(*v));
		v->t = ver == 2 ? T_MMIO_MODERN : T_MMIO_LEGACY;
		v->mmio = m;
		v->gsi = gsi;
		v->vector = -1;
		set_status(v, 0);   /* reset */
		set_status(v, ST_ACK);
		set_status(v, ST_ACK | ST_DRIVER);
		if (!(dev_features(v) & F_NET_MAC) || !mac_matches(v, mac)) {
			set_status(v, 0);
			continue;
		}
		if (bring_up(v)) {
			printf("virtio-net: mmio@0x%llx: device refused setup\n", (unsigned long long)base);
			set_status(v, ST_FAILED);
			return 0;
		}
		if (irq_attach_gsi(gsi, irq_handler, v) != 0) {
			v->poll_ns = 1000000;   /* no interrupt: poll every ms */
		}
		snprintf(v->desc, sizeof(v->desc), "virtio-mmio v%u@0x%llx gsi %u%s", (unsigned)ver,
			 (unsigned long long)base, gsi, v->poll_ns ? " (polled)" : "");
		return v;
	}
	return 0;
}

/* ---- virtio-pci (modern) ---- */

static volatile uint8_t *pci_cap_ptr(const struct pci_dev *d, uint8_t cap, uint64_t bar_addr[6])
{
	uint8_t bar = pci_cfg_read8(d, cap + 4);
	uint32_t off = pci_cfg_read32(d, cap + 8);
	uint32_t len = pci_cfg_read32(d, cap + 12);
	if (bar > 5)
		return 0;
	if (!bar_addr[bar]) {
		uint64_t size = 0;
		bar_addr[bar] = pci_bar_map(d, bar, &size);
		if (!bar_addr[bar] || (uint64_t)off + len > size)
			return 0;
	}
	return (volatile uint8_t *)(uintptr_t)(bar_addr[bar] + off);
}

/* MSI-X entry 0 -> a fresh vector, for the receive queue. 0 on success. */
static int pci_msix(struct vnet *v, const struct pci_dev *d, uint8_t cap, uint64_t bar_addr[6])
{
	uint16_t ctrl = pci_cfg_read16(d, cap + 2);
	uint32_t table = pci_cfg_read32(d, cap + 4);
	unsigned bir = table & 7;
	if (bir > 5)
		return -1;
	if (!bar_addr[bir]) {
		uint64_t size = 0;
		bar_addr[bir] = pci_bar_map(d, bir, &size);
		if (!bar_addr[bir] || (table & ~7u) + 16 > size)
			return -1;
	}
	int vec = irq_alloc_vector(irq_handler, v);
	if (vec < 0)
		return -1;
	volatile uint8_t *entry = (volatile uint8_t *)(uintptr_t)(bar_addr[bir] + (table & ~7u));
	uint64_t addr = msi_address();
	wr32(entry, 0, (uint32_t)addr);
	wr32(entry, 4, (uint32_t)(addr >> 32));
	wr32(entry, 8, msi_data(vec));
	wr32(entry, 12, 0);   /* unmasked */
	pci_cfg_write16(d, cap + 2, (uint16_t)((ctrl | 0x8000u) & ~0x4000u));   /* enable, no function mask */
	wr16(v->common, PCI_MSIX_CONFIG, VIRTIO_NO_VECTOR);
	wr16(v->common, PCI_QUEUE_SEL, RX_Q);
	wr16(v->common, PCI_QUEUE_MSIX, 0);
	if (rd16(v->common, PCI_QUEUE_MSIX) != 0)
		return -1;
	wr16(v->common, PCI_QUEUE_SEL, TX_Q);
	wr16(v->common, PCI_QUEUE_MSIX, VIRTIO_NO_VECTOR);
	v->vector = vec;
	return 0;
}

static struct vnet *open_pci_one(const struct pci_dev *d, const uint8_t mac[6])
{
	struct vnet *v = &the_vnet;
	uint64_t bar_addr[6] = {0};
	uint8_t msix_cap = 0;

	memset(v, 0, sizeof(*v));
	v->t = T_PCI;
	v->vector = -1;
	if (!(pci_cfg_read16(d, 0x06) & 0x10))
		return 0;   /* no capability list: legacy-only device */
	uint8_t cap = pci_cfg_read8(d, 0x34) & 0xfc;
	for (unsigned guard = 0; cap && guard < 48; guard++) {
		uint8_t id = pci_cfg_read8(d, cap);
		if (id == 0x11) {
			msix_cap = cap;
		} else if (id == 0x09) {
			uint8_t type = pci_cfg_read8(d, cap + 3);
			volatile uint8_t *p = 0;
			if (type >= 1 && type <= 4)
				p = pci_cap_ptr(d, cap, bar_addr);
			if (type == 1 && !v->common)
				v->common = p;
			else if (type == 2 && !v->notify_base) {
				v->notify_base = p;
				v->notify_mult = pci_cfg_read32(d, cap + 16);
			} else if (type == 3 && !v->isr)
				v->isr = p;
			else if (type == 4 && !v->devcfg)
				v->devcfg = p;
		}
		cap = pci_cfg_read8(d, cap + 1) & 0xfc;
	}
	if (!v->common || !v->notify_base || !v->devcfg)
		return 0;
	set_status(v, 0);
	for (unsigned i = 0; i < 1000000 && get_status(v) != 0; i++)
		;   /* the reset completes when status reads back 0 */
	set_status(v, ST_ACK);
	set_status(v, ST_ACK | ST_DRIVER);
	if (!(dev_features(v) & F_NET_MAC) || !mac_matches(v, mac)) {
		set_status(v, 0);
		return 0;
	}
	/* vectors are assigned before DRIVER_OK, queues before they are enabled */
	if (bring_up(v)) {
		printf("virtio-net: pci %02x:%02x.%u: device refused setup\n", d->bus, d->slot, d->func);
		set_status(v, ST_FAILED);
		return 0;
	}
	if (!msix_cap || pci_msix(v, d, msix_cap, bar_addr) != 0)
		v->poll_ns = 1000000;
	snprintf(v->desc, sizeof(v->desc), "virtio-pci %02x:%02x.%u %s", d->bus, d->slot, d->func,
		 v->poll_ns ? "(polled)" : "msi-x");
	return v;
}

static struct vnet *open_pci(const uint8_t mac[6])
{
	static const uint16_t ids[2] = {0x1041, 0x1000};
	struct pci_dev d;

	for (unsigned k = 0; k < 2; k++) {
		for (unsigned n = 0; pci_find(0x1af4, ids[k], n, &d) == 0; n++) {
			if (ids[k] == 0x1000 && pci_cfg_read16(&d, 0x2e) != 1)
				continue;   /* transitional: subsystem id 1 = network */
			struct vnet *v = open_pci_one(&d, mac);
			if (v)
				return v;
		}
	}
	return 0;
}

/* ---- the API ---- */

struct vnet *vnet_open(const uint8_t mac[6])
{
	/* Opened already (at a prepared shell's wait point, netif_prewarm): the same
	 * device again, as it is. Another MAC probes afresh (resetting that one). */
	static struct vnet *opened;
	static uint8_t opened_mac[6];
	if (opened && memcmp(opened_mac, mac, 6) == 0)
		return opened;
	struct vnet *v = open_mmio(mac);
	if (!v)
		v = open_pci(mac);
	if (!v) {
		char m[18];
		fmt_mac(m, mac);
		printf("virtio-net: no device with MAC %s\n", m);
	}
	opened = v;
	if (v)
		memcpy(opened_mac, mac, 6);
	return v;
}

/* Take back transmit buffers the device has finished with. */
static void tx_reclaim(struct vnet *v)
{
	struct vq *vq = &v->tx;
	uint16_t used = vq->used->idx;

	barrier();
	while (vq->last_used != used) {
		uint32_t id = vq->used->ring[vq->last_used & (vq->size - 1)].id;
		vq->last_used++;
		if (id < vq->size && vq->busy[id]) {   /* ignore ids we never gave out */
			vq->busy[id] = 0;
			vq->in_flight--;
		}
	}
}

int vnet_tx(void *ctx, const void *frame, size_t len)
{
	struct vnet *v = ctx;
	struct vq *vq = &v->tx;

	if (len > BUF_SIZE - v->hdr_len)
		return -1;
	tx_reclaim(v);
	if (vq->in_flight >= vq->size)
		return -1;   /* ring full: the stack counts the drop */
	uint16_t id = vq->next_free;
	while (vq->busy[id])   /* terminates: in_flight < size */
		id = (uint16_t)((id + 1) & (vq->size - 1));
	vq->next_free = (uint16_t)((id + 1) & (vq->size - 1));
	vq->busy[id] = 1;
	uint8_t *b = vq->buf[id];
	memset(b, 0, v->hdr_len);
	memcpy(b + v->hdr_len, frame, len);
	vq->desc[id].addr = (uint64_t)(uintptr_t)b;
	vq->desc[id].len = (uint32_t)(v->hdr_len + len);
	vq->desc[id].flags = 0;
	vq->desc[id].next = 0;
	uint16_t idx = vq->avail->idx;
	vq->avail->ring[idx & (vq->size - 1)] = id;
	barrier();
	vq->avail->idx = (uint16_t)(idx + 1);
	vq->in_flight++;
	notify(v, TX_Q);
	return 0;
}

unsigned vnet_rx(struct vnet *v, void (*fn)(void *ctx, const uint8_t *frame, size_t len), void *ctx)
{
	struct vq *vq = &v->rx;
	unsigned count = 0, posted = 0;

	/* bounded: a device that keeps the ring full cannot starve the timers */
	while (count < 2u * vq->size) {
		uint16_t used = vq->used->idx;
		barrier();
		if (vq->last_used == used)
			break;
		volatile struct vq_used_elem *e = &vq->used->ring[vq->last_used & (vq->size - 1)];
		uint32_t id = e->id, len = e->len;
		vq->last_used++;
		if (id >= vq->size)
			continue;   /* a broken device: never index with it */
		if (len > v->hdr_len && len <= BUF_SIZE)
			fn(ctx, vq->buf[id] + v->hdr_len, len - v->hdr_len);
		rx_post(v, (uint16_t)id);
		posted++;
		count++;
	}
	if (posted)
		notify(v, RX_Q);
	return count;
}

uint64_t vnet_poll_period(const struct vnet *v) { return v->poll_ns; }
const char *vnet_describe(const struct vnet *v) { return v->desc; }
