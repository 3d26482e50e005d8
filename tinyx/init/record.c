/*
 * record.c - everything the init writes into the NoXS region: the boot record
 * and the status_ack of the sysctl page, and the Xenbus frontend states. Only
 * ever at offsets of the validated layout, and only the guest-owned half of a
 * control page (the header's fe_* fields, and from NOXS_CTRL_GUEST_OFFSET on).
 * The same order of stores as images/base/noxs.c: the fields first, the state
 * word last, so a host that sees READY also sees tsc_ready and the app name.
 */
#include <string.h>

#include "lvinit.h"

void lv_rec_attach(struct lv_noxs *n)
{
	n->sys = (volatile struct noxs_sysctl_ctrl *)(n->region + n->page.layout.sysctl_offset);
}

void lv_rec_fe(volatile struct noxs_ctrl_hdr *hdr, uint32_t state)
{
	if (!hdr)
		return;
	hdr->fe_state = state;
	lv_barrier();
	hdr->fe_events = hdr->fe_events + 1;
}

volatile struct noxs_vif_ctrl *lv_rec_vif(struct lv_noxs *n, unsigned i)
{
	if (!n->sys || i >= n->page.layout.n_vif)
		return NULL;
	return (volatile struct noxs_vif_ctrl *)(n->region + n->page.vif[i].offset);
}

void lv_rec_fe_devices(struct lv_noxs *n, uint32_t state)
{
	if (!n->sys)
		return;
	for (uint32_t i = 0; i < n->page.layout.n_vif; i++)
		lv_rec_fe(&lv_rec_vif(n, i)->hdr, state);
	for (uint32_t i = 0; i < n->page.layout.n_vbd; i++)
		lv_rec_fe((volatile struct noxs_ctrl_hdr *)(n->region + n->page.layout.vbd_offset[i]), state);
}

static void put_text(volatile char *dst, size_t cap, const char *src)
{
	size_t len = strnlen(src, cap - 1);
	for (size_t i = 0; i < cap; i++)
		dst[i] = i < len ? src[i] : '\0';
}

void lv_rec_state(struct lv_noxs *n, uint32_t state)
{
	if (!n->sys)
		return;
	lv_barrier();
	n->sys->boot.state = state;
}

void lv_rec_booting(struct lv_noxs *n, const char *app, uint64_t tsc_entry, uint64_t tsc_hz,
                    uint32_t tsc_source)
{
	if (!n->sys)
		return;
	volatile struct noxs_boot_record *b = &n->sys->boot;
	b->tsc_entry = tsc_entry;
	b->tsc_hz = tsc_hz;
	b->tsc_source = tsc_source;
	b->generation_seen = (uint32_t)n->page.snap.generation;
	put_text(b->app, NOXS_APP_LEN, app);
	lv_rec_state(n, NOXS_BOOT_BOOTING);
}

void lv_rec_devices_up(struct lv_noxs *n, uint64_t tsc)
{
	if (!n->sys)
		return;
	n->sys->boot.tsc_devices_up = tsc;
	lv_rec_state(n, NOXS_BOOT_DEVICES_UP);
	lv_rec_fe(&n->sys->hdr, NOXS_STATE_CONNECTED);
}

void lv_rec_ready(struct lv_noxs *n, const char *app, uint64_t tsc)
{
	if (!n->sys)
		return;
	n->sys->boot.tsc_ready = tsc;
	put_text(n->sys->boot.app, NOXS_APP_LEN, app);
	lv_rec_state(n, NOXS_BOOT_READY);
}

void lv_rec_error(struct lv_noxs *n, uint32_t code, const char *msg)
{
	if (!n->sys)
		return;
	put_text(n->sys->boot.message, NOXS_MESSAGE_LEN, msg);
	n->sys->boot.error = code;
	lv_rec_state(n, NOXS_BOOT_ERROR);
}

void lv_rec_heartbeat(struct lv_noxs *n)
{
	if (n->sys)
		n->sys->boot.heartbeat = n->sys->boot.heartbeat + 1;
}

void lv_rec_ack(struct lv_noxs *n, uint32_t bits)
{
	if (n->sys)
		n->sys->status_ack = n->sys->status_ack | bits;
}

uint32_t lv_rec_requests(struct lv_noxs *n)
{
	return n->sys ? n->sys->status_req : 0;
}

uint32_t lv_rec_generation_seen(struct lv_noxs *n)
{
	return n->sys ? n->sys->boot.generation_seen : 0;
}

void lv_rec_generation(struct lv_noxs *n, uint64_t generation)
{
	if (n->sys)
		n->sys->boot.generation_seen = (uint32_t)generation;
}
