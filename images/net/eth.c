/*
 * eth.c - stack setup, Ethernet II input/output, checksums, timers.
 */
#include "net_internal.h"

static const uint8_t bcast_mac[6] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff};

uint32_t net_csum_add(uint32_t sum, const uint8_t *p, size_t len)
{
	while (len > 1) {
		sum += (uint32_t)((p[0] << 8) | p[1]);
		p += 2;
		len -= 2;
		/* fold early so a long buffer can never overflow 32 bits */
		if (sum & 0x80000000u)
			sum = (sum & 0xffff) + (sum >> 16);
	}
	if (len)
		sum += (uint32_t)(p[0] << 8);
	return sum;
}

uint16_t net_csum_fold(uint32_t sum)
{
	while (sum >> 16)
		sum = (sum & 0xffff) + (sum >> 16);
	return (uint16_t)~sum;
}

uint32_t net_csum_pseudo(uint32_t src, uint32_t dst, uint8_t proto, uint16_t len)
{
	return (src >> 16) + (src & 0xffff) + (dst >> 16) + (dst & 0xffff) + proto + len;
}

int net_init(struct net *n, const struct net_config *cfg)
{
	static const uint8_t zero_mac[6];

	if (!cfg->tx || cfg->prefix > 32 || cfg->ip == 0 || cfg->mtu < NET_MTU_MIN)
		return -1;
	if ((cfg->mac[0] & 1) || n_memcmp(cfg->mac, zero_mac, 6) == 0)
		return -1;
	n_memset(n, 0, sizeof(*n));
	n_memcpy(n->mac, cfg->mac, 6);
	n->ip = cfg->ip;
	n->mask = cfg->prefix ? 0xffffffffu << (32 - cfg->prefix) : 0;
	n->gateway = cfg->gateway;
	n->mtu = cfg->mtu > NET_MTU_MAX ? NET_MTU_MAX : cfg->mtu;
	n->seed = cfg->seed;
	n->ip_id = (uint16_t)(cfg->seed ^ (cfg->seed >> 16));
	n->tx = cfg->tx;
	n->tx_ctx = cfg->tx_ctx;
	for (unsigned i = 0; i < NET_TCP_CONNS; i++)
		n->conns[i].net = n;
	return 0;
}

const struct net_stats *net_get_stats(const struct net *n) { return &n->stats; }
uint32_t net_ip(const struct net *n) { return n->ip; }

bool net_is_local_bcast(const struct net *n, uint32_t ip)
{
	if (ip == 0xffffffffu)
		return true;
	/* the subnet broadcast exists only for subnets with room for one */
	return n->mask != 0xffffffffu && n->mask != 0xfffffffeu &&
	       (ip & n->mask) == (n->ip & n->mask) && (ip | n->mask) == 0xffffffffu;
}

int net_eth_send(struct net *n, const uint8_t dst_mac[6], uint16_t type, const uint8_t *frame, size_t len)
{
	uint8_t *hdr = (uint8_t *)frame;   /* callers pass a writable frame */

	n_memcpy(hdr, dst_mac, 6);
	n_memcpy(hdr + 6, n->mac, 6);
	wr16(hdr + 12, type);
	if (n->tx(n->tx_ctx, frame, len) < 0) {
		n->stats.tx_errors++;
		return -1;
	}
	n->stats.tx_frames++;
	return 0;
}

void net_announce(struct net *n, uint64_t now_ns)
{
	n->now = now_ns;
	net_arp_request(n, n->ip);   /* gratuitous: target = our own address */
}

void net_input(struct net *n, const void *frame, size_t len, uint64_t now_ns)
{
	const uint8_t *f = frame;

	n->now = now_ns;
	n->stats.rx_frames++;
	if (!frame || len < NET_ETH_HLEN || len > NET_FRAME_MAX + 4 /* room for a VLAN tag we drop */) {
		n->stats.rx_dropped++;
		return;
	}
	if (n_memcmp(f, n->mac, 6) != 0 && n_memcmp(f, bcast_mac, 6) != 0) {
		n->stats.rx_dropped++;   /* multicast or someone else's unicast */
		return;
	}
	switch (rd16(f + 12)) {
	case ETH_TYPE_ARP:
		net_arp_input(n, f + NET_ETH_HLEN, len - NET_ETH_HLEN);
		break;
	case ETH_TYPE_IP:
		if (f[0] & 1) {   /* IP only as unicast to us; no broadcast services */
			n->stats.rx_dropped++;
			break;
		}
		net_ip_input(n, f + NET_ETH_HLEN, len - NET_ETH_HLEN);
		break;
	default:
		n->stats.rx_dropped++;
		break;
	}
}

uint64_t net_timers(struct net *n, uint64_t now_ns)
{
	n->now = now_ns;
	return min_u64(net_arp_timers(n), net_tcp_timers(n));
}
