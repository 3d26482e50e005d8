/*
 * netif.c - glue between a NoXS vif, the virtio-net driver and the stack
 * (guest only). The vif's control page is the only configuration source:
 * MAC (to pick the device), IPv4 address, prefix, gateway and MTU; no DHCP.
 * The driver has a single device instance, so one vif per guest.
 */
#include "guest.h"
#include "net.h"

static struct {
	struct net *net;
	struct vnet *dev;
	const struct noxs_vif_info *vif;
	unsigned index;
	uint64_t rx, tx;
} nif;

static uint32_t ip_of(const uint8_t b[4])
{
	return NET_IP4(b[0], b[1], b[2], b[3]);
}

static int tx_counted(void *ctx, const void *frame, size_t len)
{
	int rc = vnet_tx(ctx, frame, len);
	if (rc == 0) {
		nif.tx++;
		nif.vif->ctrl->tx_packets = nif.tx;
	}
	return rc;
}

static void rx_one(void *ctx, const uint8_t *frame, size_t len)
{
	net_input(ctx, frame, len, clock_ns());
}

/* At a prepared shell's wait point (noxs.c), on the placeholder page: open the
 * virtio-net device the vif names (dev_mac) now, so that probing the transports,
 * resetting and setting up the device (and QEMU translating that code, under TCG)
 * are off the create's path; netif_up then finds it open (vnet_open). Then the
 * stack's answer paths run once on a scratch net (warm.c): the VM's first client
 * then finds them translated too. Nothing reaches the device, and a failure
 * here is only a missed head start. */
void noxs_vif_prewarm(const struct noxs_vif_info *vif)
{
	vnet_open(vif->dev_mac);
	net_warm(vif->dev_mac, clock_ns());
}

int netif_up(struct net *n, unsigned vif_index)
{
	if (nif.net) {
		printf("netif: only one vif per guest is supported\n");
		return -(int)NOXS_ERR_DEVICE;
	}
	const struct noxs_vif_info *vif = noxs_vif(vif_index);
	if (!vif || vif_index >= noxs_vif_count()) {
		printf("netif: no vif %u in the NoXS page (%u configured)\n", vif_index, noxs_vif_count());
		return -(int)NOXS_ERR_NO_DEVICE;
	}
	if (vif->mtu < NET_MTU_MIN) {
		printf("netif: vif %u MTU %u is below the %u this stack needs\n", vif_index, vif->mtu, NET_MTU_MIN);
		return -(int)NOXS_ERR_DEVICE;
	}
	noxs_set_fe_state(&vif->ctrl->hdr, NOXS_STATE_INITIALISING);
	struct vnet *dev = vnet_open(vif->dev_mac);
	if (!dev)
		return -(int)NOXS_ERR_NO_DEVICE;

	struct net_config cfg = {
		.ip = ip_of(vif->ip),
		.prefix = vif->prefix,
		.gateway = ip_of(vif->gateway),
		.mtu = vif->mtu,
		.seed = tsc_read() ^ (wallclock_ns() << 17) ^ (uint64_t)(uintptr_t)n,
		.tx = tx_counted,
		.tx_ctx = dev,
	};
	memcpy(cfg.mac, vif->mac, 6);
	if (net_init(n, &cfg) != 0) {
		printf("netif: vif %u: unusable configuration %u.%u.%u.%u/%u\n", vif_index, vif->ip[0], vif->ip[1],
		       vif->ip[2], vif->ip[3], vif->prefix);
		return -(int)NOXS_ERR_DEVICE;
	}
	nif.net = n;
	nif.dev = dev;
	nif.vif = vif;
	nif.index = vif_index;
	noxs_set_fe_state(&vif->ctrl->hdr, NOXS_STATE_CONNECTED);
	return 0;
}

/* Say the vif's configuration on the console and send the gratuitous ARP. Apart
 * from netif_up so that an app can do it after noxs_ready(): neither is needed to
 * serve (a peer resolves us with its own ARP request), and under TCG the console
 * line (one port write per byte) and the first transmit cost 0.5-0.9 ms of a
 * pooled create's READY (docs/lightvmd.md, "NICs of prepared shells"). */
void netif_announce(struct net *n)
{
	const struct noxs_vif_info *vif = nif.vif;

	if (n != nif.net)
		return;
	printf("net: vif %u %u.%u.%u.%u/%u gw %u.%u.%u.%u mtu %u on %s\n", nif.index, vif->ip[0], vif->ip[1],
	       vif->ip[2], vif->ip[3], vif->prefix, vif->gateway[0], vif->gateway[1], vif->gateway[2],
	       vif->gateway[3], n->mtu, vnet_describe(nif.dev));
	net_announce(n, clock_ns());
}

uint64_t netif_poll(struct net *n)
{
	if (n != nif.net)
		return NET_TIME_NEVER;
	unsigned got = vnet_rx(nif.dev, rx_one, n);
	if (got) {
		nif.rx += got;
		nif.vif->ctrl->rx_packets = nif.rx;
	}
	uint64_t now = clock_ns();
	uint64_t next = net_timers(n, now);
	uint64_t period = vnet_poll_period(nif.dev);
	if (period && next > now + period)
		next = now + period;
	/* a full receive batch may have left more behind: come straight back */
	if (got >= 32)
		next = now;
	return next;
}
