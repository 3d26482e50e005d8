/*
 * noxs_validate.c - see noxs_validate.h. Freestanding: needs only
 * snprintf, which both the guest base and libc provide.
 */
#include "noxs_validate.h"

int snprintf(char *buf, size_t size, const char *fmt, ...);

#define FAIL(...) do { snprintf(err, errlen, __VA_ARGS__); return -1; } while (0)

static int pow2(uint64_t v) { return v && !(v & (v - 1)); }

int noxs_validate_page(const struct noxs_device_page *pg, uint64_t backing_size,
                       struct noxs_layout *out, char *err, size_t errlen)
{
	if (pg->magic != NOXS_MAGIC)
		FAIL("noxs: bad magic 0x%08x (want 0x%08x)", (unsigned)pg->magic, (unsigned)NOXS_MAGIC);
	if (pg->abi_version != NOXS_ABI_VERSION)
		FAIL("noxs: unsupported ABI version %u (want %u)", (unsigned)pg->abi_version,
		     (unsigned)NOXS_ABI_VERSION);
	if (pg->header_size < sizeof(struct noxs_device_page) || pg->header_size > NOXS_PAGE_SIZE)
		FAIL("noxs: bad header_size %u (want %u..%u)", (unsigned)pg->header_size,
		     (unsigned)sizeof(struct noxs_device_page), (unsigned)NOXS_PAGE_SIZE);
	if (pg->generation & 1)
		FAIL("noxs: page generation %llu is odd (host still writing)",
		     (unsigned long long)pg->generation);
	uint32_t rs = pg->region_size;
	if (!pow2(rs) || rs < NOXS_REGION_MIN || rs > NOXS_REGION_MAX)
		FAIL("noxs: bad region_size %u (want a power of two in %u..%u)", (unsigned)rs,
		     (unsigned)NOXS_REGION_MIN, (unsigned)NOXS_REGION_MAX);
	if (rs > backing_size)
		FAIL("noxs: region_size %u exceeds the %llu bytes mapped", (unsigned)rs,
		     (unsigned long long)backing_size);
	if (pg->dev_count == 0 || pg->dev_count > NOXS_MAX_DEVICES)
		FAIL("noxs: bad dev_count %u (want 1..%u)", (unsigned)pg->dev_count,
		     (unsigned)NOXS_MAX_DEVICES);

	struct noxs_layout l = { 0, 0, 0, { 0 }, { 0 }, { 0 }, { 0 } };
	unsigned n_sysctl = 0;
	for (uint32_t i = 0; i < pg->dev_count; i++) {
		const struct noxs_dev_entry *e = &pg->devs[i];
		uint32_t off = e->ctrl_offset;
		if (off % NOXS_PAGE_SIZE || off < NOXS_PAGE_SIZE || off > rs - NOXS_PAGE_SIZE)
			FAIL("noxs: device %u: bad ctrl_offset 0x%x (region is 0x%x bytes)", (unsigned)i,
			     (unsigned)off, (unsigned)rs);
		for (uint32_t j = 0; j < i; j++)
			if (pg->devs[j].ctrl_offset == off)
				FAIL("noxs: devices %u and %u share ctrl_offset 0x%x", (unsigned)j,
				     (unsigned)i, (unsigned)off);
		switch (e->type) {
		case NOXS_DEV_SYSCTL:
			n_sysctl++;
			l.sysctl_offset = off;
			break;
		case NOXS_DEV_VIF:
		case NOXS_DEV_VBD: {
			int vif = e->type == NOXS_DEV_VIF;
			uint32_t *ids = vif ? l.vif_id : l.vbd_id;
			uint32_t *n = vif ? &l.n_vif : &l.n_vbd;
			for (uint32_t k = 0; k < *n; k++)
				if (ids[k] == e->id)
					FAIL("noxs: two %s devices with id %u", vif ? "vif" : "vbd",
					     (unsigned)e->id);
			ids[*n] = e->id;
			(vif ? l.vif_offset : l.vbd_offset)[*n] = off;
			(*n)++;
			break;
		}
		default:
			FAIL("noxs: device %u: unknown type %u", (unsigned)i, (unsigned)e->type);
		}
	}
	if (n_sysctl != 1)
		FAIL("noxs: %u sysctl devices (want exactly 1)", n_sysctl);
	*out = l;
	return 0;
}

int noxs_validate_vif(const struct noxs_vif_ctrl *v, uint32_t id, char *err, size_t errlen)
{
	static const uint8_t zero[6];
	int mac_zero = 1;
	for (unsigned i = 0; i < 6; i++)
		if (v->mac[i] != zero[i])
			mac_zero = 0;
	if (mac_zero || (v->mac[0] & 1))
		FAIL("noxs: vif %u: bad MAC %02x:%02x:%02x:%02x:%02x:%02x (want unicast)", (unsigned)id,
		     v->mac[0], v->mac[1], v->mac[2], v->mac[3], v->mac[4], v->mac[5]);
	if (v->mtu < 68 || v->mtu > 9000)
		FAIL("noxs: vif %u: bad MTU %u (want 68..9000)", (unsigned)id, (unsigned)v->mtu);
	if (v->prefix > 32)
		FAIL("noxs: vif %u: bad prefix /%u (want 0..32)", (unsigned)id, (unsigned)v->prefix);
	/* dev_mac: all zero (pair the device by mac) or the device's own unicast MAC */
	if (v->dev_mac[0] & 1)
		FAIL("noxs: vif %u: bad dev_mac %02x:%02x:%02x:%02x:%02x:%02x (want unicast or zero)",
		     (unsigned)id, v->dev_mac[0], v->dev_mac[1], v->dev_mac[2], v->dev_mac[3],
		     v->dev_mac[4], v->dev_mac[5]);
	return 0;
}

int noxs_validate_vbd(const struct noxs_vbd_ctrl *v, uint32_t id, char *err, size_t errlen)
{
	if (v->sector_size != 512 && v->sector_size != 4096)
		FAIL("noxs: vbd %u: bad sector_size %u (want 512 or 4096)", (unsigned)id,
		     (unsigned)v->sector_size);
	if (v->mode != NOXS_VBD_RO && v->mode != NOXS_VBD_RW)
		FAIL("noxs: vbd %u: bad mode %u", (unsigned)id, (unsigned)v->mode);
	return 0;
}
