/*
 * virtio_mmio.h - what the guest's virtio drivers (images/net/virtio_net.c,
 * images/blk/virtio_blk.c) share: the virtio-mmio register layout (virtio 1.x
 * section 4.2.2; the legacy-only registers marked), the device status bits,
 * the feature and descriptor flags both use, and MMIO accessors with the
 * barriers the rings need. Guest only.
 */
#ifndef LIGHTVM_VIRTIO_MMIO_H
#define LIGHTVM_VIRTIO_MMIO_H

#include <stdint.h>

#define MMIO_MAGIC          0x000
#define MMIO_VERSION        0x004
#define MMIO_DEVICE_ID      0x008
#define MMIO_DEV_FEATURES   0x010
#define MMIO_DEV_FEAT_SEL   0x014
#define MMIO_DRV_FEATURES   0x020
#define MMIO_DRV_FEAT_SEL   0x024
#define MMIO_GUEST_PAGE_SIZE 0x028  /* legacy */
#define MMIO_QUEUE_SEL      0x030
#define MMIO_QUEUE_NUM_MAX  0x034
#define MMIO_QUEUE_NUM      0x038
#define MMIO_QUEUE_ALIGN    0x03c  /* legacy */
#define MMIO_QUEUE_PFN      0x040  /* legacy */
#define MMIO_QUEUE_READY    0x044
#define MMIO_QUEUE_NOTIFY   0x050
#define MMIO_INT_STATUS     0x060
#define MMIO_INT_ACK        0x064
#define MMIO_STATUS         0x070
#define MMIO_QUEUE_DESC_LO  0x080
#define MMIO_QUEUE_DESC_HI  0x084
#define MMIO_QUEUE_AVAIL_LO 0x090
#define MMIO_QUEUE_AVAIL_HI 0x094
#define MMIO_QUEUE_USED_LO  0x0a0
#define MMIO_QUEUE_USED_HI  0x0a4
#define MMIO_CONFIG         0x100
#define MMIO_MAGIC_VALUE    0x74726976u

/* device status */
#define ST_ACK         1u
#define ST_DRIVER      2u
#define ST_DRIVER_OK   4u
#define ST_FEATURES_OK 8u
#define ST_FAILED      128u

#define F_VERSION_1    (1ull << 32)
#define DESC_F_NEXT    1u
#define DESC_F_WRITE   2u

static inline void barrier(void) { __asm__ volatile("" ::: "memory"); }
/* x86 is TSO, but the device must see ring contents before the index and
 * the index before the notify: a full fence around the MMIO write. */
static inline void mb(void) { __asm__ volatile("mfence" ::: "memory"); }

static inline uint32_t rd32(volatile uint8_t *base, unsigned off) { return *(volatile uint32_t *)(base + off); }
static inline void wr32(volatile uint8_t *base, unsigned off, uint32_t v) { *(volatile uint32_t *)(base + off) = v; }

#endif
