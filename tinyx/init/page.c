/*
 * page.c - one consistent, validated snapshot of the host-written NoXS page,
 * taken as images/base/noxs.c takes it: copy the device page and each vif's
 * host half between two reads of an even, unchanged generation, and validate
 * the copies with noxs-virtio/lib/noxs_validate.c (compiled in, the same rules
 * as the unikernels and noxs-read). Works on any mapping: the guest's BAR2
 * through sysfs, or a region file on the host (--dump-page).
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <string.h>

#include "lvinit.h"

uint64_t lv_page_generation(const volatile uint8_t *region)
{
	return *(const volatile uint64_t *)(region + offsetof(struct noxs_device_page, generation));
}

static void copy_in(void *dst, const volatile uint8_t *region, uint32_t off, size_t n)
{
	/* off and n are validated against the mapping by the callers */
	memcpy(dst, (const void *)(region + off), n);
}

/* One attempt on a settled generation: 0 valid, -1 invalid (err). */
static int snapshot(const volatile uint8_t *region, uint64_t bytes, struct lv_page *out, char *err,
                    size_t errlen)
{
	copy_in(&out->snap, region, 0, sizeof(out->snap));
	out->tsc_at_read = lv_rdtsc();
	if (noxs_validate_page(&out->snap, bytes, &out->layout, err, errlen) != 0)
		return -1;
	for (uint32_t i = 0; i < out->layout.n_vif; i++) {
		struct noxs_vif_ctrl c;
		copy_in(&c, region, out->layout.vif_offset[i], NOXS_VIF_HOST_BYTES);
		if (noxs_validate_vif(&c, out->layout.vif_id[i], err, errlen) != 0)
			return -1;
		struct lv_vif *v = &out->vif[i];
		v->id = out->layout.vif_id[i];
		v->offset = out->layout.vif_offset[i];
		memcpy(v->mac, c.mac, 6);
		memcpy(v->dev_mac, c.dev_mac, 6);
		memcpy(v->ip, c.ip, 4);
		memcpy(v->gateway, c.gateway, 4);
		v->prefix = c.prefix;
		v->mtu = c.mtu;
	}
	for (uint32_t i = 0; i < out->layout.n_vbd; i++) {
		struct noxs_vbd_ctrl c;
		copy_in(&c, region, out->layout.vbd_offset[i], NOXS_VBD_HOST_BYTES);
		if (noxs_validate_vbd(&c, out->layout.vbd_id[i], err, errlen) != 0)
			return -1;
	}
	return 0;
}

int lv_page_read(const volatile uint8_t *region, uint64_t bytes, struct lv_page *out,
                 unsigned timeout_ms, char *err, size_t errlen)
{
	if (bytes < NOXS_REGION_MIN) {
		snprintf(err, errlen, "noxs: the region is %llu bytes (want >= %u)",
		         (unsigned long long)bytes, NOXS_REGION_MIN);
		return -1;
	}
	uint64_t deadline = lv_now_ms() + timeout_ms;
	for (unsigned tries = 0;; tries++) {
		/* The host's rewrite takes microseconds: the first few retries are
		 * immediate, then we sleep (no spinning on a busy TCG host). */
		if (tries > 8) {
			if (lv_now_ms() > deadline) {
				snprintf(err, errlen, "noxs: page generation never settles "
				         "(odd, or rewritten on every read)");
				return -1;
			}
			lv_sleep_ms(1);
		}
		uint64_t g1 = lv_page_generation(region);
		if (g1 & 1)
			continue;
		lv_barrier();
		int rc = snapshot(region, bytes, out, err, errlen);
		lv_barrier();
		if (lv_page_generation(region) != g1)
			continue;   /* torn read: the host rewrote the page meanwhile */
		return rc;
	}
}

int lv_page_hostname(const struct lv_page *pg, char out[NOXS_NAME_LEN + 1])
{
	size_t n = strnlen(pg->snap.name, NOXS_NAME_LEN);
	if (n == 0)
		return -1;
	for (size_t i = 0; i < n; i++) {
		char c = pg->snap.name[i];
		int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		         c == '-' || c == '.' || c == '_';
		if (!ok)
			return -1;
	}
	memcpy(out, pg->snap.name, n);
	out[n] = '\0';
	return 0;
}

uint64_t lv_page_tsc_hz(const struct lv_page *pg)
{
	return (pg->snap.features & NOXS_FEAT_TSC_HZ) ? pg->snap.tsc_hz : 0;
}

void lv_format_ip(const uint8_t ip[4], char out[16])
{
	snprintf(out, 16, "%u.%u.%u.%u", ip[0], ip[1], ip[2], ip[3]);
}

void lv_format_mac(const uint8_t m[6], char out[18])
{
	snprintf(out, 18, "%02x:%02x:%02x:%02x:%02x:%02x", m[0], m[1], m[2], m[3], m[4], m[5]);
}

void lv_prefix_mask(unsigned prefix, uint8_t out[4])
{
	uint32_t mask = prefix ? ~0u << (32 - prefix) : 0;
	out[0] = (uint8_t)(mask >> 24);
	out[1] = (uint8_t)(mask >> 16);
	out[2] = (uint8_t)(mask >> 8);
	out[3] = (uint8_t)mask;
}
