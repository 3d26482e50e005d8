/*
 * blk.h - the virtio-blk driver (images/blk/virtio_blk.c), for apps that
 * read their NoXS vbds. Linked only into the apps that use it (BLK_APPS in
 * the Makefile).
 */
#ifndef BLK_H
#define BLK_H

#include "guest.h"

struct vblk;

/* Bring up the virtio-blk device of NoXS vbd `index` (the index-th
 * virtio-blk device on the virtio-mmio transports, as the host adds them in
 * vbd order). NULL (and a console line) if there is none or it refuses. */
struct vblk *vblk_open(unsigned index);
/* Device capacity in 512-byte sectors (from its config space). */
uint64_t vblk_sectors(const struct vblk *b);
/* Read `count` 512-byte sectors from `sector` into buf (count <= 8).
 * 0 on success, else -1 (device error, bad range, or no answer in time). */
int vblk_read(struct vblk *b, uint64_t sector, void *buf, unsigned count);
const char *vblk_describe(const struct vblk *b);

#endif /* BLK_H */
