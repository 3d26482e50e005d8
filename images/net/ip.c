/*
 * ip.c - IPv4 input/output, ICMP (echo reply, port unreachable), UDP.
 */
#include "net_internal.h"

#define IP_FLAG_DF    0x4000u
#define IP_FLAG_MF    0x2000u
#define IP_OFF_MASK   0x1fffu
#define ICMP_ECHO_REPLY   0u
#define ICMP_UNREACH      3u
#define ICMP_PORT_UNREACH 3u
#define ICMP_ECHO         8u

int net_ip_output(struct net *n, uint32_t dst, uint8_t proto, size_t l4len)
{
	uint8_t *f = n->txbuf;
	uint8_t *ip = f + NET_ETH_HLEN;
	size_t total = IP_HLEN + l4len;

	if (total > n->mtu)
		return -1;
	ip[0] = 0x45;
	ip[1] = 0;
	wr16(ip + 2, (uint16_t)total);
	wr16(ip + 4, n->ip_id++);
	wr16(ip + 6, proto == IP_PROTO_TCP ? IP_FLAG_DF : 0);
	ip[8] = IP_TTL;
	ip[9] = proto;
	wr16(ip + 10, 0);
	wr32(ip + 12, n->ip);
	wr32(ip + 16, dst);
	wr16(ip + 10, net_csum_fold(net_csum_add(0, ip, IP_HLEN)));
	wr16(f + 12, ETH_TYPE_IP);   /* net_arp_output reads the type from here */
	return net_arp_output(n, dst, f, NET_ETH_HLEN + total);
}

/* A source we may answer: a real unicast host, not ourselves. */
static bool ip_src_ok(const struct net *n, uint32_t src)
{
	uint8_t top = (uint8_t)(src >> 24);

	return src != 0 && src != n->ip && top != 127 && top < 224 && !net_is_local_bcast(n, src);
}

static void icmp_input(struct net *n, uint32_t src, const uint8_t *p, size_t len)
{
	if (len < 8 || net_csum_fold(net_csum_add(0, p, len)) != 0) {
		n->stats.rx_dropped++;
		return;
	}
	if (p[0] != ICMP_ECHO || p[1] != 0 || len > (size_t)n->mtu - IP_HLEN) {
		n->stats.rx_dropped++;   /* we only answer echo requests */
		return;
	}
	uint8_t *r = n->txbuf + TX_L4;
	n_memcpy(r, p, len);
	r[0] = ICMP_ECHO_REPLY;
	wr16(r + 2, 0);
	wr16(r + 2, net_csum_fold(net_csum_add(0, r, len)));
	if (net_ip_output(n, src, IP_PROTO_ICMP, len) == 0)
		n->stats.icmp_echo_replies++;
}

/* ICMP destination unreachable quoting the offending header + 8 bytes. */
static void icmp_unreach(struct net *n, uint32_t src, uint8_t code, const uint8_t *ip, size_t iplen)
{
	size_t quote = (size_t)(ip[0] & 0xf) * 4 + 8;
	if (quote > iplen)
		quote = iplen;
	uint8_t *r = n->txbuf + TX_L4;
	r[0] = ICMP_UNREACH;
	r[1] = code;
	n_memset(r + 2, 0, 6);
	n_memcpy(r + 8, ip, quote);
	wr16(r + 2, net_csum_fold(net_csum_add(0, r, 8 + quote)));
	net_ip_output(n, src, IP_PROTO_ICMP, 8 + quote);
}

static void udp_input(struct net *n, uint32_t src, uint32_t dst, const uint8_t *ip, size_t iplen,
		      const uint8_t *p, size_t len)
{
	if (len < UDP_HLEN) {
		n->stats.rx_dropped++;
		return;
	}
	uint16_t ulen = rd16(p + 4);
	if (ulen < UDP_HLEN || ulen > len) {
		n->stats.rx_dropped++;
		return;
	}
	uint16_t sum = rd16(p + 6);
	if (sum != 0) {   /* 0 = sender computed none, allowed over IPv4 */
		uint32_t s = net_csum_pseudo(src, dst, IP_PROTO_UDP, ulen);
		if (net_csum_fold(net_csum_add(s, p, ulen)) != 0) {
			n->stats.rx_dropped++;
			return;
		}
	}
	uint16_t sport = rd16(p), dport = rd16(p + 2);
	if (sport == 0 || dport == 0) {
		n->stats.rx_dropped++;
		return;
	}
	for (unsigned i = 0; i < NET_UDP_BINDS; i++) {
		struct net_udp_bind *b = &n->udp[i];
		if (b->port && b->port == dport) {
			n->stats.udp_in++;
			b->fn(b->ctx, n, src, sport, dport, p + UDP_HLEN, ulen - UDP_HLEN);
			return;
		}
	}
	n->stats.rx_dropped++;
	icmp_unreach(n, src, ICMP_PORT_UNREACH, ip, iplen);
}

void net_ip_input(struct net *n, const uint8_t *ip, size_t len)
{
	if (len < IP_HLEN || (ip[0] >> 4) != 4) {
		n->stats.rx_dropped++;
		return;
	}
	size_t hlen = (size_t)(ip[0] & 0xf) * 4;
	size_t total = rd16(ip + 2);
	/* the frame may carry Ethernet padding after the datagram: trust the
	 * IP total length, but only once it is shown to fit */
	if (hlen < IP_HLEN || total < hlen || total > len) {
		n->stats.rx_dropped++;
		return;
	}
	if (net_csum_fold(net_csum_add(0, ip, hlen)) != 0) {
		n->stats.rx_dropped++;
		return;
	}
	uint16_t frag = rd16(ip + 6);
	if ((frag & IP_FLAG_MF) || (frag & IP_OFF_MASK)) {
		n->stats.rx_dropped++;   /* no reassembly: fragments are dropped */
		return;
	}
	uint32_t src = rd32(ip + 12), dst = rd32(ip + 16);
	if (dst != n->ip || !ip_src_ok(n, src)) {
		n->stats.rx_dropped++;
		return;
	}
	const uint8_t *p = ip + hlen;
	size_t plen = total - hlen;
	switch (ip[9]) {
	case IP_PROTO_ICMP:
		icmp_input(n, src, p, plen);
		break;
	case IP_PROTO_UDP:
		udp_input(n, src, dst, ip, total, p, plen);
		break;
	case IP_PROTO_TCP:
		net_tcp_input(n, src, dst, p, plen);
		break;
	default:
		n->stats.rx_dropped++;
		break;
	}
}

int udp_bind(struct net *n, uint16_t port, udp_recv_fn fn, void *ctx)
{
	struct net_udp_bind *slot = 0;

	if (port == 0 || !fn)
		return -1;
	for (unsigned i = 0; i < NET_UDP_BINDS; i++) {
		if (n->udp[i].port == port)
			return -1;
		if (!n->udp[i].port && !slot)
			slot = &n->udp[i];
	}
	if (!slot)
		return -1;
	slot->port = port;
	slot->fn = fn;
	slot->ctx = ctx;
	return 0;
}

int udp_send(struct net *n, uint32_t dst_ip, uint16_t src_port, uint16_t dst_port, const void *data,
	     size_t len)
{
	if (len > (size_t)n->mtu - IP_HLEN - UDP_HLEN || src_port == 0 || dst_port == 0)
		return -1;
	uint8_t *u = n->txbuf + TX_L4;
	uint16_t ulen = (uint16_t)(UDP_HLEN + len);
	wr16(u, src_port);
	wr16(u + 2, dst_port);
	wr16(u + 4, ulen);
	wr16(u + 6, 0);
	n_memmove(u + UDP_HLEN, data, len);   /* data may live in txbuf (echo) */
	uint16_t sum = net_csum_fold(net_csum_add(net_csum_pseudo(n->ip, dst_ip, IP_PROTO_UDP, ulen), u, ulen));
	wr16(u + 6, sum ? sum : 0xffff);
	if (net_ip_output(n, dst_ip, IP_PROTO_UDP, ulen) < 0)
		return -1;
	n->stats.udp_out++;
	return 0;
}
