/*
 * net.h - the guest network stack: virtio-net driver + a small IPv4 stack.
 *
 * Two halves:
 *   - The stack (images/net/{eth,arp,ip,tcp,tcp_conn,daytime_fmt}.c) is portable
 *     freestanding C11. It knows nothing about the platform: it is handed a
 *     transmit function and the current time on every call, so the very same
 *     sources are unit-tested on the host against a Linux tap device
 *     (images/net/test/tap_harness.c).
 *   - The driver and glue (images/net/{virtio_net,netif}.c) use guest.h:
 *     they find the virtio-net device whose MAC matches a NoXS vif, configure
 *     the stack from that vif (IP, prefix, gateway, MTU; no DHCP) and run the
 *     receive path and the timers from the app's main loop.
 *
 * Scope of the stack: Ethernet II, ARP (reply, resolve, small cache, the
 * gateway for off-subnet destinations), IPv4 without fragments (fragments are
 * dropped), ICMP echo reply and port unreachable, UDP, and a server-side TCP:
 * listen/accept, data in both directions with retransmission (RFC 6298 RTO,
 * Karn, exponential backoff), window probing, FIN close in both directions,
 * RST for closed ports, RFC 5961 challenge ACKs, and a connection table whose
 * finished slots (TIME_WAIT, FIN_WAIT_2) are recycled so fast sequential
 * clients never exhaust it.
 *
 * Every length and offset of a received frame is validated before use: the
 * input is hostile. IP addresses in this API are uint32_t in host byte order
 * (NET_IP4(10,0,0,1)). Times are nanoseconds on any monotonic clock.
 *
 * Not thread-safe and not re-entrant from interrupt context: call everything
 * from one main loop. Callbacks may call tcp_send/tcp_close/tcp_abort/
 * udp_send on the connection they are given.
 */
#ifndef NET_H
#define NET_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define NET_IP4(a, b, c, d) \
	(((uint32_t)(a) << 24) | ((uint32_t)(b) << 16) | ((uint32_t)(c) << 8) | (uint32_t)(d))

#define NET_TIME_NEVER     UINT64_MAX

#define NET_ETH_HLEN       14u
#define NET_MTU_MAX        1500u   /* larger NoXS MTUs are clamped to this */
#define NET_MTU_MIN        576u    /* smaller NoXS MTUs are rejected */
#define NET_FRAME_MAX      (NET_ETH_HLEN + NET_MTU_MAX)

#define NET_ARP_SLOTS      8u
#define NET_TCP_CONNS      16u
#define NET_TCP_LISTENERS  4u
/* Slots one peer address may hold: the rest stay for everybody else
 * (a peer at its cap recycles its own oldest connection). */
#define NET_TCP_PER_SOURCE 12u
#define NET_UDP_BINDS      4u
#define NET_TCP_SNDBUF     2048u   /* unacknowledged + unsent bytes per connection */
#define NET_TCP_RCVWND     8192u   /* window advertised when the app sets no limit */

struct net;
struct tcp_conn;

/* ---- configuration and lifetime ---- */

/* Transmit one complete Ethernet frame (no FCS). Return 0 if queued, <0 if
 * dropped (the stack counts it; TCP recovers by retransmission). */
typedef int (*net_tx_fn)(void *ctx, const void *frame, size_t len);

struct net_config {
	uint8_t mac[6];
	uint32_t ip;           /* our address */
	uint8_t prefix;        /* 0..32 */
	uint32_t gateway;      /* 0 = no gateway: off-subnet traffic is dropped */
	uint16_t mtu;          /* NET_MTU_MIN..; clamped to NET_MTU_MAX */
	uint64_t seed;         /* secret for TCP initial sequence numbers */
	net_tx_fn tx;
	void *tx_ctx;
};

struct net_stats {
	uint64_t rx_frames, rx_dropped, tx_frames, tx_errors;
	uint64_t arp_requests_sent, arp_replies_sent, arp_unresolved;
	uint64_t icmp_echo_replies;
	uint64_t udp_in, udp_out;
	uint64_t tcp_accepted, tcp_resets_sent, tcp_retransmits, tcp_timeouts;
	uint64_t tcp_recycled;   /* TIME_WAIT/FIN_WAIT_2 slots reused for a new SYN */
	uint64_t tcp_table_full;
	uint64_t tcp_evicted;    /* idle connections reset to make room (table full, or the peer at its cap) */
	uint64_t tcp_cookies_sent, tcp_cookies_ok;   /* SYN cookies: table full; valid ones returned */
};

/* 0 on success, -1 if the configuration is unusable (bad MTU, no tx, MAC
 * multicast or zero, address 0). */
int net_init(struct net *n, const struct net_config *cfg);
/* Process one received frame (any length, any content). */
void net_input(struct net *n, const void *frame, size_t len, uint64_t now_ns);
/* Run expired timers; return the next deadline (NET_TIME_NEVER if none). */
uint64_t net_timers(struct net *n, uint64_t now_ns);
/* Announce our address (gratuitous ARP), e.g. once the link is up. */
void net_announce(struct net *n, uint64_t now_ns);
const struct net_stats *net_get_stats(const struct net *n);
uint32_t net_ip(const struct net *n);

/* ---- UDP ---- */
typedef void (*udp_recv_fn)(void *ctx, struct net *n, uint32_t src_ip, uint16_t src_port,
			    uint16_t dst_port, const uint8_t *data, size_t len);
/* 0 on success, -1 if the port is taken or the table is full. */
int udp_bind(struct net *n, uint16_t port, udp_recv_fn fn, void *ctx);
/* 0 if sent or queued behind ARP resolution, -1 if too long or unroutable. */
int udp_send(struct net *n, uint32_t dst_ip, uint16_t src_port, uint16_t dst_port,
	     const void *data, size_t len);

/* ---- TCP (server side) ---- */
enum tcp_abort_reason {
	TCP_RESET_BY_PEER = 1,
	TCP_TIMED_OUT = 2,
	TCP_EVICTED = 3,   /* idle while the table was full: reset to make room */
};

struct tcp_ops {
	/* Handshake complete; the app now owns c until it calls tcp_close or
	 * tcp_abort, or aborted() is called. */
	void (*accepted)(void *ctx, struct tcp_conn *c);
	/* In-order data, already acknowledged; len <= the window the app
	 * allows (window()), so it must take all of it. May be NULL. */
	void (*received)(void *ctx, struct tcp_conn *c, const uint8_t *data, size_t len);
	/* The peer sent FIN: nothing more will arrive. Call tcp_close(). */
	void (*peer_closed)(void *ctx, struct tcp_conn *c);
	/* The connection died under the app (reset, timeout); c is invalid
	 * once this returns. */
	void (*aborted)(void *ctx, struct tcp_conn *c, enum tcp_abort_reason why);
	/* Receive window to advertise (flow control), e.g. tcp_send_space(c)
	 * for an echo server. NULL = NET_TCP_RCVWND. */
	size_t (*window)(void *ctx, struct tcp_conn *c);
};

/* 0 on success, -1 if the port is taken or the table is full. */
int tcp_listen(struct net *n, uint16_t port, const struct tcp_ops *ops, void *ctx);
/* Queue data; returns bytes taken (<= tcp_send_space()), -1 if the
 * connection no longer accepts data. */
int tcp_send(struct tcp_conn *c, const void *data, size_t len);
size_t tcp_send_space(const struct tcp_conn *c);
/* Send FIN after the queued data; the stack finishes the close and frees
 * the slot (no more callbacks for c; later data from the peer is dropped). */
void tcp_close(struct tcp_conn *c);
/* Send RST and free the slot now. */
void tcp_abort(struct tcp_conn *c);
uint32_t tcp_remote_ip(const struct tcp_conn *c);
uint16_t tcp_remote_port(const struct tcp_conn *c);
unsigned tcp_active_count(const struct net *n);   /* slots not free */

/* ---- RFC 867 daytime text ---- */
/* "Saturday, November 21, 2026 19:35:12-UTC\r\n" for a Unix time in
 * seconds; returns the length written (NUL-terminated if it fits), or the
 * length needed if size is too small (snprintf-style). */
size_t net_format_daytime(char *buf, size_t size, uint64_t unix_seconds);

/* ---- the structures (sized here so the app can allocate them statically;
 *      fields are private to the stack) ---- */
struct net_arp_entry {
	uint32_t ip;
	uint8_t mac[6];
	uint8_t state;          /* ARP_FREE / ARP_PENDING / ARP_RESOLVED */
	uint8_t tries;
	uint64_t deadline;      /* pending: next request; resolved: expiry */
	uint16_t pending_len;   /* one frame waiting for resolution */
	uint8_t pending[NET_FRAME_MAX];
};

struct tcp_listener {
	uint16_t port;          /* 0 = free */
	const struct tcp_ops *ops;
	void *ctx;
};

struct tcp_conn {
	struct net *net;
	const struct tcp_listener *lst;
	uint8_t state;
	uint8_t flags;
	uint8_t retries;
	uint16_t lport, rport;
	uint32_t rip;
	uint16_t mss;           /* largest segment we send */
	uint16_t rcv_adv;       /* window last advertised */
	uint32_t iss, irs;
	uint32_t snd_una, snd_nxt, snd_max, snd_wnd, snd_wl1, snd_wl2;
	uint32_t rcv_nxt;
	uint32_t buf_seq;       /* sequence number of buf[0] */
	uint16_t buf_len;
	uint32_t rto_ms, srtt_ms, rttvar_ms;
	uint32_t rtt_seq;
	uint64_t rtt_start;
	uint64_t timer;         /* retransmit/probe, FIN_WAIT_2 or TIME_WAIT deadline */
	uint64_t since;         /* when the slot entered its current state */
	uint64_t heard;         /* last progress from the peer: handshake done, new
	                           data acknowledged, in-order data or FIN taken */
	uint8_t buf[NET_TCP_SNDBUF];
};

struct net_udp_bind {
	uint16_t port;          /* 0 = free */
	udp_recv_fn fn;
	void *ctx;
};

struct net {
	uint8_t mac[6];
	uint32_t ip, mask, gateway;
	uint16_t mtu;
	uint16_t ip_id;
	uint64_t seed;
	uint64_t now;
	net_tx_fn tx;
	void *tx_ctx;
	struct net_stats stats;
	struct net_arp_entry arp[NET_ARP_SLOTS];
	struct tcp_listener listeners[NET_TCP_LISTENERS];
	struct tcp_conn conns[NET_TCP_CONNS];
	struct net_udp_bind udp[NET_UDP_BINDS];
	uint8_t txbuf[NET_FRAME_MAX];
};

/* ---- guest glue (images/net/netif.c + virtio_net.c; guest only) ---- */
struct noxs_vif_info;
struct vnet;

/* Find the virtio-net device (virtio-mmio first, then virtio-pci) whose MAC
 * matches vif `vif_index`, bring it up, configure `n` from the vif (IP,
 * prefix, gateway, MTU) and set the vif's fe_state to Connected. 0 on
 * success; on failure a message is printed and <0 returned
 * (NOXS_ERR_NO_DEVICE / NOXS_ERR_DEVICE negated). */
int netif_up(struct net *n, unsigned vif_index);
/* Run the stack's ARP and TCP server paths once on a scratch net whose frames
 * go nowhere (warm.c): at a prepared shell's wait point, so that TCG has
 * translated them before the VM's first client arrives. Returns the scratch
 * net's statistics (NULL if it could not be set up). */
const struct net_stats *net_warm(const uint8_t mac[6], uint64_t now_ns);
/* After netif_up (an app calls it once it is READY): print the vif's line on
 * the console and announce the address (gratuitous ARP). */
void netif_announce(struct net *n);
/* Receive everything pending, run the timers, update the vif counters;
 * return the deadline to pass to idle_until() (never far in the future when
 * the device has no interrupt and must be polled). */
uint64_t netif_poll(struct net *n);

/* The driver itself (virtio_net.c). */
struct vnet *vnet_open(const uint8_t mac[6]);
int vnet_tx(void *vnet, const void *frame, size_t len);
/* Deliver each received frame to fn; returns the number delivered. */
unsigned vnet_rx(struct vnet *v, void (*fn)(void *ctx, const uint8_t *frame, size_t len), void *ctx);
/* Poll period in ns if the device has no working interrupt, else 0. */
uint64_t vnet_poll_period(const struct vnet *v);
const char *vnet_describe(const struct vnet *v);   /* "virtio-mmio@0x... gsi N" */

#endif /* NET_H */
