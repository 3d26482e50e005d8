/*
 * warm.c - run the stack's receive and answer paths once on a scratch
 * struct net, at a prepared shell's wait point (netif.c, noxs_vif_prewarm).
 *
 * Why: under TCG the first time a guest runs a piece of code QEMU translates
 * it. A pooled VM's first client pays that for everything between the frame
 * and the answer (ARP, IP, TCP's SYN, handshake, send and close paths):
 * measured 1.7-3 ms for connect() alone from the host right after a pooled
 * create's READY, against ~1 ms for the next connection (docs/lightvmd.md,
 * "NICs of prepared shells"). QEMU keeps translated blocks by guest physical
 * address, so running the same functions here, before the shell is taken,
 * moves that cost to prepare.
 *
 * What runs: an ARP request for the scratch address, a SYN to a listener, the
 * handshake's ACK (the listener sends a byte and closes), the peer's ACK and
 * FIN. Frames the stack sends go to a sink that keeps the last one (to read
 * the SYN-ACK's sequence number); nothing reaches the device. The scratch
 * net is never used again and shares nothing with the VM's (the stack keeps
 * all its state in struct net). Its statistics are returned for the host-side
 * test (tests/functional/test_netstack_host.py: the whole exchange ran).
 */
#include "net_internal.h"

#define WARM_IP       NET_IP4(169, 254, 77, 2)
#define WARM_PEER     NET_IP4(169, 254, 77, 1)
#define WARM_PORT     13
#define WARM_PEERPORT 40000

static struct net warm;
static uint8_t last[NET_FRAME_MAX];
static size_t last_len;
static const uint8_t peer_mac[6] = {0x02, 0x4c, 0x56, 0x77, 0x00, 0x01};

static int warm_tx(void *ctx, const void *frame, size_t len)
{
	(void)ctx;
	if (len > sizeof(last))
		len = sizeof(last);
	n_memcpy(last, frame, len);
	last_len = len;
	return 0;
}

static void warm_accepted(void *ctx, struct tcp_conn *c)
{
	(void)ctx;
	tcp_send(c, "x", 1);
	tcp_close(c);
}

static const struct tcp_ops warm_ops = {.accepted = warm_accepted};

static size_t eth_head(uint8_t *f, const uint8_t *mac, uint16_t type)
{
	n_memcpy(f, mac, 6);
	n_memcpy(f + 6, peer_mac, 6);
	wr16(f + 12, type);
	return NET_ETH_HLEN;
}

static void warm_arp(uint64_t now)
{
	uint8_t f[60] = {0};
	uint8_t *a = f + eth_head(f, (const uint8_t[6]){0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, 0x0806);

	wr16(a, 1);            /* Ethernet */
	wr16(a + 2, 0x0800);   /* IPv4 */
	a[4] = 6;
	a[5] = 4;
	wr16(a + 6, 1);        /* request */
	n_memcpy(a + 8, peer_mac, 6);
	wr32(a + 14, WARM_PEER);
	wr32(a + 24, WARM_IP);
	net_input(&warm, f, sizeof(f), now);
}

/* A TCP segment from the peer: 20-byte IP and TCP headers, checksums set. */
static void warm_tcp(const uint8_t *mac, uint32_t seq, uint32_t ack, uint8_t flags, uint64_t now)
{
	uint8_t f[NET_ETH_HLEN + 40] = {0};
	uint8_t *ip = f + eth_head(f, mac, 0x0800);
	uint8_t *t = ip + 20;

	ip[0] = 0x45;
	wr16(ip + 2, 40);
	ip[8] = 64;
	ip[9] = 6;
	wr32(ip + 12, WARM_PEER);
	wr32(ip + 16, WARM_IP);
	wr16(ip + 10, net_csum_fold(net_csum_add(0, ip, 20)));
	wr16(t, WARM_PEERPORT);
	wr16(t + 2, WARM_PORT);
	wr32(t + 4, seq);
	wr32(t + 8, ack);
	t[12] = 5 << 4;
	t[13] = flags;
	wr16(t + 14, 65535);
	wr16(t + 16, net_csum_fold(net_csum_add(net_csum_pseudo(WARM_PEER, WARM_IP, 6, 20), t, 20)));
	net_input(&warm, f, sizeof(f), now);
}

const struct net_stats *net_warm(const uint8_t mac[6], uint64_t now)
{
	struct net_config cfg = {
		.ip = WARM_IP, .prefix = 24, .gateway = WARM_PEER, .mtu = NET_MTU_MAX,
		.seed = now, .tx = warm_tx, .tx_ctx = 0,
	};
	enum { SYN = 0x02, ACK = 0x10, FIN = 0x01 };
	uint32_t iss = 1000;

	n_memcpy(cfg.mac, mac, 6);
	if (net_init(&warm, &cfg) != 0 || tcp_listen(&warm, WARM_PORT, &warm_ops, 0) != 0)
		return 0;
	warm_arp(now);
	last_len = 0;
	warm_tcp(mac, iss, 0, SYN, now);
	if (last_len < NET_ETH_HLEN + 40)
		return net_get_stats(&warm);   /* no SYN-ACK: nothing more to warm */
	uint32_t ours = rd32(last + NET_ETH_HLEN + 20 + 4);
	warm_tcp(mac, iss + 1, ours + 1, ACK, now);              /* accepted: "x" and FIN go out */
	warm_tcp(mac, iss + 1, ours + 3, ACK | FIN, now);         /* the byte and FIN acked, ours */
	net_timers(&warm, now);
	return net_get_stats(&warm);
}
