/*
 * noxs_validate.h - validation of a NoXS region, shared by the unikernel
 * base (images/base/noxs.c) and the Linux tool (tools/noxs-read.c), so both
 * accept exactly the same pages.
 *
 * Everything works on private snapshots the caller copied out of the
 * shared region: a check never re-reads memory the host can change.
 * Errors are one line, "noxs: ...", written to err.
 */
#ifndef NOXS_VALIDATE_H
#define NOXS_VALIDATE_H

#include <stddef.h>
#include <stdint.h>

#include "noxs_abi.h"

/* Where the validated devices' control pages are (table order kept). */
struct noxs_layout {
	uint32_t sysctl_offset;
	uint32_t n_vif, n_vbd;
	uint32_t vif_offset[NOXS_MAX_DEVICES], vif_id[NOXS_MAX_DEVICES];
	uint32_t vbd_offset[NOXS_MAX_DEVICES], vbd_id[NOXS_MAX_DEVICES];
};

/* Bytes of a control page that hold host-owned configuration. */
#define NOXS_VIF_HOST_BYTES offsetof(struct noxs_vif_ctrl, host_pad)
#define NOXS_VBD_HOST_BYTES offsetof(struct noxs_vbd_ctrl, host_pad)

/* Validate a snapshot of the device page against the size of the memory
 * that backs it (the BAR, or the file). 0 if valid, else -1 and err. */
int noxs_validate_page(const struct noxs_device_page *pg, uint64_t backing_size,
                       struct noxs_layout *out, char *err, size_t errlen);
/* Validate the host half of a vif / vbd control page (a snapshot). */
int noxs_validate_vif(const struct noxs_vif_ctrl *v, uint32_t id, char *err, size_t errlen);
int noxs_validate_vbd(const struct noxs_vbd_ctrl *v, uint32_t id, char *err, size_t errlen);

#endif /* NOXS_VALIDATE_H */
