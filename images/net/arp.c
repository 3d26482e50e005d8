/*
 * arp.c - ARP for IPv4 over Ethernet: answer requests for our address,
 * resolve next hops with a small cache, and hold one frame per pending
 * resolution (the newest; TCP retransmits whatever else was dropped).
 */
#include "net_internal.h"

enum { ARP_FREE = 0, ARP_PENDING, ARP_RESOLVED };

#define ARP_LEN          28u
#define ARP_TTL_NS       (60000 * MS)   /* a resolved entry is trusted this long */
#define ARP_RETRY_NS     (1000 * MS)
#define ARP_TRIES        3u

static const uint8_t bcast_mac[6] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff};

static void arp_send(struct net *n, uint16_t op, const uint8_t dst_mac[6], const uint8_t tha[6],
		     uint32_t tpa)
{
	uint8_t *f = n->txbuf;
	uint8_t *a = f + NET_ETH_HLEN;

	wr16(a + 0, 1);                /* htype: Ethernet */
	wr16(a + 2, ETH_TYPE_IP);      /* ptype */
	a[4] = 6;
	a[5] = 4;
	wr16(a + 6, op);
	n_memcpy(a + 8, n->mac, 6);
	wr32(a + 14, n->ip);
	n_memcpy(a + 18, tha, 6);
	wr32(a + 24, tpa);
	/* pad to the 60-byte Ethernet minimum; some bridges drop runts */
	n_memset(a + ARP_LEN, 0, 60 - NET_ETH_HLEN - ARP_LEN);
	net_eth_send(n, dst_mac, ETH_TYPE_ARP, f, 60);
}

void net_arp_request(struct net *n, uint32_t target)
{
	static const uint8_t zero[6];

	n->stats.arp_requests_sent++;
	arp_send(n, 1, bcast_mac, zero, target);
}

static struct net_arp_entry *arp_find(struct net *n, uint32_t ip)
{
	for (unsigned i = 0; i < NET_ARP_SLOTS; i++)
		if (n->arp[i].state != ARP_FREE && n->arp[i].ip == ip)
			return &n->arp[i];
	return 0;
}

/* A slot for a new entry: a free one, else the pending one closest to
 * giving up, else the resolved one expiring first. A mapping in use is worth
 * more than an unanswered question: with resolved entries going first, a SYN
 * flood from spoofed addresses (each one a new, never answered request)
 * pushed the real peers' entries out one by one, and each of their frames
 * then waited for a new exchange. */
static struct net_arp_entry *arp_alloc(struct net *n, uint32_t ip)
{
	struct net_arp_entry *best = 0;

	for (unsigned i = 0; i < NET_ARP_SLOTS; i++) {
		struct net_arp_entry *e = &n->arp[i];
		if (e->state == ARP_FREE) {
			best = e;
			break;
		}
		if (!best || (e->state == ARP_PENDING && best->state == ARP_RESOLVED) ||
		    (e->state == best->state && e->deadline < best->deadline))
			best = e;
	}
	n_memset(best, 0, offsetof(struct net_arp_entry, pending));
	best->ip = ip;
	return best;
}

static void arp_resolved(struct net *n, struct net_arp_entry *e, const uint8_t mac[6])
{
	n_memcpy(e->mac, mac, 6);
	e->state = ARP_RESOLVED;
	e->tries = 0;
	e->deadline = n->now + ARP_TTL_NS;
	if (e->pending_len) {
		uint16_t len = e->pending_len;
		e->pending_len = 0;
		net_eth_send(n, mac, rd16(e->pending + 12), e->pending, len);
	}
}

void net_arp_input(struct net *n, const uint8_t *a, size_t len)
{
	if (len < ARP_LEN || rd16(a) != 1 || rd16(a + 2) != ETH_TYPE_IP || a[4] != 6 || a[5] != 4) {
		n->stats.rx_dropped++;
		return;
	}
	uint16_t op = rd16(a + 6);
	const uint8_t *sha = a + 8;
	uint32_t spa = rd32(a + 14);
	uint32_t tpa = rd32(a + 24);

	if ((op != 1 && op != 2) || (sha[0] & 1) || spa == 0 || spa == n->ip ||
	    net_is_local_bcast(n, spa) || (spa & 0xf0000000u) == 0xe0000000u) {
		n->stats.rx_dropped++;   /* also ignores someone else claiming our address */
		return;
	}
	/* RFC 826: update an entry we already have; add one only when the
	 * packet is for us (so a flood of foreign ARP cannot churn the cache). */
	struct net_arp_entry *e = arp_find(n, spa);
	if (!e && tpa == n->ip && (spa & n->mask) == (n->ip & n->mask))
		e = arp_alloc(n, spa);
	if (e)
		arp_resolved(n, e, sha);
	if (op == 1 && tpa == n->ip) {
		n->stats.arp_replies_sent++;
		arp_send(n, 2, sha, sha, spa);
	}
}

int net_arp_output(struct net *n, uint32_t dst_ip, uint8_t *frame, size_t len)
{
	uint16_t type = rd16(frame + 12);
	uint32_t hop;

	if (net_is_local_bcast(n, dst_ip))
		return net_eth_send(n, bcast_mac, type, frame, len);
	if ((dst_ip & n->mask) == (n->ip & n->mask))
		hop = dst_ip;
	else if (n->gateway)
		hop = n->gateway;
	else
		return -1;   /* no route */

	struct net_arp_entry *e = arp_find(n, hop);
	if (e && e->state == ARP_RESOLVED && e->deadline > n->now)
		return net_eth_send(n, e->mac, type, frame, len);
	if (!e) {
		e = arp_alloc(n, hop);
	}
	if (e->state != ARP_PENDING) {
		/* new, or expired: keep using nothing stale, ask again */
		e->state = ARP_PENDING;
		e->tries = 0;
		e->deadline = n->now;
	}
	n_memcpy(e->pending, frame, len);
	e->pending_len = (uint16_t)len;
	if (e->tries == 0) {
		e->tries = 1;
		e->deadline = n->now + ARP_RETRY_NS;
		net_arp_request(n, hop);   /* overwrites txbuf: frame was copied above */
	}
	return 0;
}

uint64_t net_arp_timers(struct net *n)
{
	uint64_t next = NET_TIME_NEVER;

	for (unsigned i = 0; i < NET_ARP_SLOTS; i++) {
		struct net_arp_entry *e = &n->arp[i];
		if (e->state != ARP_PENDING)
			continue;   /* resolved entries expire lazily, at lookup */
		if (e->deadline <= n->now) {
			if (e->tries >= ARP_TRIES) {
				n->stats.arp_unresolved++;
				e->state = ARP_FREE;
				e->pending_len = 0;
				continue;
			}
			e->tries++;
			e->deadline = n->now + ARP_RETRY_NS;
			net_arp_request(n, e->ip);
		}
		next = min_u64(next, e->deadline);
	}
	return next;
}
