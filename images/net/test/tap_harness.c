/*
 * tap_harness.c - runs the guest IPv4 stack (images/net/) as a host process,
 * so it can be tested with real Linux clients long before a guest boots.
 *
 * Built with the host gcc from the very same stack sources the guest links
 * (tests/functional/test_netstack_host.py does this, with ASan+UBSan).
 *
 *   tap_harness run TAP MAC IP/PREFIX GATEWAY [--loss PCT] [--mtu N] [--seed N] [--trace 1]
 *       Attach to tap TAP (IFF_TAP|IFF_NO_PI) and serve:
 *         tcp/13 daytime (RFC 867), tcp/37 time (RFC 868), tcp/7 echo,
 *         udp/7 echo, udp/13 daytime,
 *         ICMP echo. --loss drops PCT% of IPv4 frames in each direction (to
 *         test retransmission). Prints "READY" when serving; on SIGTERM/SIGINT
 *         prints one "STATS key=value ..." line and exits 0.
 *   tap_harness fmt SECONDS...
 *       Print net_format_daytime() for each Unix time, one per line.
 *   tap_harness fuzz ITERATIONS SEED
 *       Feed the stack hostile frames (mutated from valid ones, and replies
 *       that follow its own TCP sequence numbers) and check every frame it
 *       transmits; exit 0 with "FUZZ OK ..." or abort on the first bad one.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

#include "net.h"

static struct net the_net;
static volatile sig_atomic_t stop;
static int tap_fd = -1;
static unsigned loss_pct;
static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static uint64_t rng(void)
{
	uint64_t x = rng_state;
	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	return rng_state = x;
}

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void on_signal(int sig)
{
	(void)sig;
	stop = 1;
}

static int parse_mac(const char *s, uint8_t mac[6])
{
	unsigned v[6];
	if (sscanf(s, "%x:%x:%x:%x:%x:%x", &v[0], &v[1], &v[2], &v[3], &v[4], &v[5]) != 6)
		return -1;
	for (int i = 0; i < 6; i++) {
		if (v[i] > 255)
			return -1;
		mac[i] = (uint8_t)v[i];
	}
	return 0;
}

static int parse_ip(const char *s, uint32_t *ip, unsigned *prefix)
{
	unsigned a, b, c, d, p = 32;
	int n = sscanf(s, "%u.%u.%u.%u/%u", &a, &b, &c, &d, &p);
	if (n < 4 || a > 255 || b > 255 || c > 255 || d > 255 || p > 32)
		return -1;
	*ip = NET_IP4(a, b, c, d);
	if (prefix)
		*prefix = p;
	return 0;
}

/* ---- the apps (what the guest's daytime does, plus echo) ---- */

static unsigned long daytime_served;

static void daytime_accepted(void *ctx, struct tcp_conn *c)
{
	char text[64];
	size_t len = net_format_daytime(text, sizeof(text), (uint64_t)time(NULL));
	(void)ctx;
	tcp_send(c, text, len);
	tcp_close(c);
	daytime_served++;
}

static const struct tcp_ops daytime_ops = {.accepted = daytime_accepted};

/* RFC 868 time (what `rdate -p` asks for): seconds since 1900, big-endian. */
static void time_accepted(void *ctx, struct tcp_conn *c)
{
	uint32_t t = (uint32_t)((uint64_t)time(NULL) + 2208988800ull);
	uint8_t be[4] = {(uint8_t)(t >> 24), (uint8_t)(t >> 16), (uint8_t)(t >> 8), (uint8_t)t};
	(void)ctx;
	tcp_send(c, be, sizeof(be));
	tcp_close(c);
}

static const struct tcp_ops time_ops = {.accepted = time_accepted};

static void echo_received(void *ctx, struct tcp_conn *c, const uint8_t *data, size_t len)
{
	(void)ctx;
	if (tcp_send(c, data, len) != (int)len) {
		fprintf(stderr, "echo: window violated (%zu bytes, space %zu)\n", len, tcp_send_space(c));
		tcp_abort(c);
	}
}

static void echo_peer_closed(void *ctx, struct tcp_conn *c)
{
	(void)ctx;
	tcp_close(c);
}

static size_t echo_window(void *ctx, struct tcp_conn *c)
{
	(void)ctx;
	return tcp_send_space(c);
}

static const struct tcp_ops echo_ops = {
	.received = echo_received,
	.peer_closed = echo_peer_closed,
	.window = echo_window,
};

static void udp_echo(void *ctx, struct net *n, uint32_t src, uint16_t sport, uint16_t dport,
		     const uint8_t *data, size_t len)
{
	(void)ctx;
	udp_send(n, src, dport, sport, data, len);
}

static void udp_daytime(void *ctx, struct net *n, uint32_t src, uint16_t sport, uint16_t dport,
			const uint8_t *data, size_t len)
{
	char text[64];
	(void)ctx, (void)data, (void)len;
	size_t tl = net_format_daytime(text, sizeof(text), (uint64_t)time(NULL));
	udp_send(n, src, dport, sport, text, tl);
}

static int start_apps(struct net *n)
{
	if (tcp_listen(n, 13, &daytime_ops, NULL) || tcp_listen(n, 7, &echo_ops, NULL) ||
	    tcp_listen(n, 37, &time_ops, NULL) ||
	    udp_bind(n, 7, udp_echo, NULL) || udp_bind(n, 13, udp_daytime, NULL))
		return -1;
	return 0;
}

/* ---- run: a real tap ---- */

static bool trace;

/* --trace: one line per TCP frame, to debug a stuck connection. */
static void trace_frame(const char *dir, const uint8_t *f, size_t len, bool lost)
{
	if (trace && len >= 42 && f[12] == 0x08 && f[13] == 0x06) {
		fprintf(stderr, "%.3f %s%s ARP op=%u sender=%u.%u.%u.%u target=%u.%u.%u.%u\n",
			(double)(now_ns() % 1000000000000ull) / 1e9, dir, lost ? "(lost)" : "", f[21],
			f[28], f[29], f[30], f[31], f[38], f[39], f[40], f[41]);
		return;
	}
	if (!trace || len < 54 || f[12] != 0x08 || f[13] != 0x00 || f[23] != 6)
		return;
	const uint8_t *t = f + 14 + (f[14] & 0xf) * 4;
	if (t + 20 > f + len)
		return;
	unsigned sport = (unsigned)(t[0] << 8 | t[1]), dport = (unsigned)(t[2] << 8 | t[3]);
	unsigned long seq = (unsigned long)t[4] << 24 | (unsigned long)t[5] << 16 | (unsigned)t[6] << 8 | t[7];
	unsigned long ack = (unsigned long)t[8] << 24 | (unsigned long)t[9] << 16 | (unsigned)t[10] << 8 | t[11];
	size_t hl = (size_t)(t[12] >> 4) * 4;
	size_t total = (size_t)(f[16] << 8 | f[17]);
	fprintf(stderr, "%.3f %s%s %u>%u %s%s%s%s%s seq=%lu ack=%lu win=%u len=%zu\n",
		(double)(now_ns() % 1000000000000ull) / 1e9, dir, lost ? "(lost)" : "", sport, dport,
		t[13] & 2 ? "S" : "", t[13] & 16 ? "A" : "", t[13] & 1 ? "F" : "", t[13] & 4 ? "R" : "",
		t[13] & 8 ? "P" : "", seq, ack, (unsigned)(t[14] << 8 | t[15]),
		total - (size_t)(f[14] & 0xf) * 4 - hl);
}

/* --loss applies to IPv4 only: it is there to exercise TCP, and a lost ARP
 * exchange makes the kernel report "no route to host" to the client. */
static bool lose(const uint8_t *f, size_t len)
{
	return loss_pct && len >= 14 && f[12] == 0x08 && f[13] == 0x00 && rng() % 100 < loss_pct;
}

static int tap_tx(void *ctx, const void *frame, size_t len)
{
	(void)ctx;
	bool lost = lose(frame, len);
	trace_frame("tx", frame, len, lost);
	if (lost)
		return 0;   /* "sent", and lost on the wire */
	return write(tap_fd, frame, len) == (ssize_t)len ? 0 : -1;
}

static void print_stats(const struct net *n)
{
	const struct net_stats *s = net_get_stats(n);
	printf("STATS rx_frames=%llu rx_dropped=%llu tx_frames=%llu tx_errors=%llu "
	       "arp_requests_sent=%llu arp_replies_sent=%llu icmp_echo_replies=%llu udp_in=%llu "
	       "udp_out=%llu tcp_accepted=%llu tcp_resets_sent=%llu tcp_retransmits=%llu "
	       "tcp_timeouts=%llu tcp_recycled=%llu tcp_table_full=%llu "
	       "tcp_evicted=%llu tcp_cookies_sent=%llu tcp_cookies_ok=%llu daytime_served=%lu active=%u\n",
	       (unsigned long long)s->rx_frames, (unsigned long long)s->rx_dropped,
	       (unsigned long long)s->tx_frames, (unsigned long long)s->tx_errors,
	       (unsigned long long)s->arp_requests_sent, (unsigned long long)s->arp_replies_sent,
	       (unsigned long long)s->icmp_echo_replies, (unsigned long long)s->udp_in,
	       (unsigned long long)s->udp_out, (unsigned long long)s->tcp_accepted,
	       (unsigned long long)s->tcp_resets_sent, (unsigned long long)s->tcp_retransmits,
	       (unsigned long long)s->tcp_timeouts, (unsigned long long)s->tcp_recycled,
	       (unsigned long long)s->tcp_table_full,
	       (unsigned long long)s->tcp_evicted, (unsigned long long)s->tcp_cookies_sent,
	       (unsigned long long)s->tcp_cookies_ok, daytime_served, tcp_active_count(n));
	fflush(stdout);
}

static int cmd_run(int argc, char **argv)
{
	struct net_config cfg = {.mtu = 1500};
	unsigned prefix;

	if (argc < 4 || strlen(argv[0]) >= IFNAMSIZ || parse_mac(argv[1], cfg.mac) ||
	    parse_ip(argv[2], &cfg.ip, &prefix) || parse_ip(argv[3], &cfg.gateway, NULL)) {
		fprintf(stderr, "usage: tap_harness run TAP MAC IP/PREFIX GATEWAY [--loss PCT] [--mtu N] [--seed N]\n");
		return 2;
	}
	cfg.prefix = (uint8_t)prefix;
	cfg.seed = now_ns();
	for (int i = 4; i + 1 < argc; i += 2) {
		if (!strcmp(argv[i], "--loss"))
			loss_pct = (unsigned)atoi(argv[i + 1]);
		else if (!strcmp(argv[i], "--mtu"))
			cfg.mtu = (uint16_t)atoi(argv[i + 1]);
		else if (!strcmp(argv[i], "--trace"))
			trace = atoi(argv[i + 1]) != 0;
		else if (!strcmp(argv[i], "--seed"))
			rng_state = strtoull(argv[i + 1], NULL, 0) | 1;
	}

	tap_fd = open("/dev/net/tun", O_RDWR | O_CLOEXEC | O_NONBLOCK);
	if (tap_fd < 0) {
		perror("/dev/net/tun");
		return 1;
	}
	struct ifreq ifr;
	memset(&ifr, 0, sizeof(ifr));
	ifr.ifr_flags = IFF_TAP | IFF_NO_PI;
	strncpy(ifr.ifr_name, argv[0], IFNAMSIZ - 1);
	if (ioctl(tap_fd, TUNSETIFF, &ifr) < 0) {
		perror("TUNSETIFF");
		return 1;
	}
	cfg.tx = tap_tx;
	if (net_init(&the_net, &cfg) || start_apps(&the_net)) {
		fprintf(stderr, "net_init/start_apps failed\n");
		return 1;
	}
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_signal;
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);

	net_announce(&the_net, now_ns());
	printf("READY\n");
	fflush(stdout);

	static uint8_t frame[NET_FRAME_MAX + 64];
	while (!stop) {
		uint64_t now = now_ns();
		uint64_t next = net_timers(&the_net, now);
		int timeout = -1;
		if (next != NET_TIME_NEVER)
			timeout = next <= now ? 0 : (int)((next - now + 999999) / 1000000);
		if (timeout < 0 || timeout > 1000)
			timeout = 1000;   /* wake up for `stop` */
		struct pollfd p = {.fd = tap_fd, .events = POLLIN};
		int r = poll(&p, 1, timeout);
		if (r < 0 && errno != EINTR) {
			perror("poll");
			return 1;
		}
		if (r > 0 && (p.revents & POLLIN)) {
			/* the fd is non-blocking: drain what is there, never wait here */
			for (int burst = 0; burst < 64; burst++) {
				ssize_t len = read(tap_fd, frame, sizeof(frame));
				if (len <= 0)
					break;
				bool lost = lose(frame, (size_t)len);
				trace_frame("rx", frame, (size_t)len, lost);
				if (!lost)
					net_input(&the_net, frame, (size_t)len, now_ns());
			}
		}
	}
	print_stats(&the_net);
	return 0;
}

/* ---- fmt ---- */

static int cmd_fmt(int argc, char **argv)
{
	for (int i = 0; i < argc; i++) {
		char text[64];
		size_t len = net_format_daytime(text, sizeof(text), strtoull(argv[i], NULL, 10));
		if (len >= sizeof(text))
			return 1;
		/* print without the CRLF so the test compares text only, then
		 * check the terminator separately */
		if (len < 2 || text[len - 2] != '\r' || text[len - 1] != '\n')
			return 1;
		text[len - 2] = '\0';
		printf("%s\n", text);
	}
	/* truncation is snprintf-like */
	char small[8];
	size_t need = net_format_daytime(small, sizeof(small), 0);
	if (need != strlen("Thursday, January 1, 1970 00:00:00-UTC\r\n") || strcmp(small, "Thursda"))
		return 1;
	return 0;
}

/* ---- fuzz ---- */

static const uint8_t fz_mac[6] = {0x52, 0x54, 0x00, 0x12, 0x34, 0x56};
static const uint8_t peer_mac[6] = {0x52, 0x54, 0x00, 0xaa, 0xbb, 0xcc};
#define FZ_IP   NET_IP4(10, 9, 0, 2)
#define PEER_IP NET_IP4(10, 9, 0, 1)
static unsigned long fz_tx_frames;

/* The last TCP segment the stack sent to each client port: lets the fuzzer
 * answer with sequence numbers the stack will accept. */
struct fz_peer {
	uint16_t port;
	uint32_t seq;   /* next seq the stack expects from us */
	uint32_t ack;   /* what we should ack */
	uint8_t flags;
};
static struct fz_peer peers[8];

static void wr16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)(v >> 8); p[1] = (uint8_t)v; }
static void wr32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)(v >> 24); p[1] = (uint8_t)(v >> 16); p[2] = (uint8_t)(v >> 8); p[3] = (uint8_t)v;
}
static uint16_t rd16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static uint32_t rd32(const uint8_t *p) { return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3]; }

static uint16_t csum(uint32_t sum, const uint8_t *p, size_t len)
{
	for (size_t i = 0; i + 1 < len; i += 2)
		sum += (uint32_t)(p[i] << 8 | p[i + 1]);
	if (len & 1)
		sum += (uint32_t)(p[len - 1] << 8);
	while (sum >> 16)
		sum = (sum & 0xffff) + (sum >> 16);
	return (uint16_t)~sum;
}

static uint32_t pseudo(uint32_t s, uint32_t d, uint8_t proto, size_t len)
{
	return (s >> 16) + (s & 0xffff) + (d >> 16) + (d & 0xffff) + proto + (uint32_t)len;
}

static void fz_fail(const char *why, const uint8_t *f, size_t len)
{
	fprintf(stderr, "FUZZ FAIL: %s (frame of %zu bytes)", why, len);
	for (size_t i = 0; f && i < len && i < 80; i++)
		fprintf(stderr, "%s%02x", i % 16 ? " " : "\n  ", f[i]);
	fprintf(stderr, "\n");
	abort();
}

/* Every frame the stack sends must be well-formed. */
static int fz_tx(void *ctx, const void *frame, size_t len)
{
	const uint8_t *f = frame;
	(void)ctx;
	fz_tx_frames++;
	if (len < 14 || len > NET_FRAME_MAX)
		fz_fail("bad frame length", f, len);
	if (memcmp(f + 6, fz_mac, 6) != 0)
		fz_fail("wrong source MAC", f, len);
	uint16_t type = rd16(f + 12);
	if (type == 0x0806) {
		if (len < 42 || rd16(f + 20) < 1 || rd16(f + 20) > 2)
			fz_fail("bad ARP", f, len);
		return 0;
	}
	if (type != 0x0800)
		fz_fail("unknown ethertype", f, len);
	const uint8_t *ip = f + 14;
	size_t total = rd16(ip + 2);
	if (len < 34 || ip[0] != 0x45 || total + 14 != len || csum(0, ip, 20) != 0)
		fz_fail("bad IPv4 header", f, len);
	if (rd32(ip + 12) != FZ_IP)
		fz_fail("wrong source IP", f, len);
	const uint8_t *l4 = ip + 20;
	size_t l4len = total - 20;
	if (ip[9] == 6 || ip[9] == 17) {
		if (csum(pseudo(FZ_IP, rd32(ip + 16), ip[9], l4len), l4, l4len) != 0)
			fz_fail("bad L4 checksum", f, len);
	} else if (ip[9] == 1) {
		if (csum(0, l4, l4len) != 0)
			fz_fail("bad ICMP checksum", f, len);
	} else {
		fz_fail("unknown protocol", f, len);
	}
	if (ip[9] == 6 && l4len >= 20) {
		size_t hl = (size_t)(l4[12] >> 4) * 4;
		if (hl < 20 || hl > l4len)
			fz_fail("bad TCP header length", f, len);
		if (l4len - hl > 1460)
			fz_fail("TCP segment larger than the MSS", f, len);
		uint16_t dport = rd16(l4 + 2);
		struct fz_peer *p = &peers[dport % 8];
		p->port = dport;
		p->seq = rd32(l4 + 8);
		p->ack = rd32(l4 + 4) + (uint32_t)(l4len - hl) + ((l4[13] & 0x02) ? 1 : 0) + ((l4[13] & 0x01) ? 1 : 0);
		p->flags = l4[13];
	}
	return 0;
}

/* Build a valid frame of a random kind into f; returns its length. */
static size_t fz_build(uint8_t *f)
{
	uint8_t *ip = f + 14, *l4 = ip + 20;
	size_t l4len;
	uint8_t proto;

	memcpy(f, (rng() % 8) ? fz_mac : (const uint8_t[6]){0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, 6);
	memcpy(f + 6, peer_mac, 6);
	switch (rng() % 6) {
	case 0: {   /* ARP request/reply */
		wr16(f + 12, 0x0806);
		uint8_t *a = f + 14;
		wr16(a, 1); wr16(a + 2, 0x0800); a[4] = 6; a[5] = 4;
		wr16(a + 6, (uint16_t)(1 + rng() % 2));
		memcpy(a + 8, peer_mac, 6);
		wr32(a + 14, (rng() % 4) ? PEER_IP : (uint32_t)rng());
		memset(a + 18, 0, 6);
		wr32(a + 24, (rng() % 4) ? FZ_IP : (uint32_t)rng());
		return 42;
	}
	case 1:     /* ICMP echo */
		proto = 1;
		l4len = 8 + rng() % 1473;   /* IP total <= 1500 */
		for (size_t i = 0; i < l4len; i++)
			l4[i] = (uint8_t)rng();
		l4[0] = 8; l4[1] = 0; wr16(l4 + 2, 0);
		wr16(l4 + 2, csum(0, l4, l4len));
		break;
	case 2: {   /* UDP to a bound or closed port */
		static const uint16_t ports[] = {7, 13, 9, 53};
		proto = 17;
		l4len = 8 + rng() % 1472;
		for (size_t i = 8; i < l4len; i++)
			l4[i] = (uint8_t)rng();
		wr16(l4, (uint16_t)(1024 + rng() % 64));
		wr16(l4 + 2, ports[rng() % 4]);
		wr16(l4 + 4, (uint16_t)l4len);
		wr16(l4 + 6, 0);
		wr16(l4 + 6, csum(pseudo(PEER_IP, FZ_IP, 17, l4len), l4, l4len));
		break;
	}
	default: {  /* TCP: new SYNs, or a reply that follows the stack's numbers */
		static const uint16_t ports[] = {7, 13, 9};
		struct fz_peer *p = &peers[rng() % 8];
		proto = 6;
		size_t data = (rng() % 3) ? 0 : rng() % 1600;
		size_t optlen = (rng() % 4) ? 0 : 4 * (rng() % 11);
		l4len = 20 + optlen + data;
		if (l4len > 1480)
			l4len = 1480, data = l4len - 20 - optlen;
		uint16_t lport = ports[rng() % 3];
		for (size_t i = 20; i < l4len; i++)
			l4[i] = (uint8_t)rng();
		if (optlen >= 4 && rng() % 2) {
			l4[20] = 2; l4[21] = 4; wr16(l4 + 22, (uint16_t)rng());
		}
		if (p->port && rng() % 4) {
			wr16(l4, p->port);
			wr16(l4 + 2, (uint16_t)((rng() % 2) ? 7 : 13));
			wr32(l4 + 4, p->seq + (uint32_t)((rng() % 8) ? 0 : rng() % 70000));
			wr32(l4 + 8, p->ack - (uint32_t)((rng() % 8) ? 0 : rng() % 3000));
			static const uint8_t fl[] = {0x10, 0x18, 0x11, 0x19, 0x04, 0x14, 0x02, 0x12, 0x01};
			l4[13] = fl[rng() % sizeof(fl)];
		} else {
			wr16(l4, (uint16_t)(40000 + rng() % 8));
			wr16(l4 + 2, lport);
			wr32(l4 + 4, (uint32_t)rng());
			wr32(l4 + 8, (uint32_t)rng());
			l4[13] = (rng() % 4) ? 0x02 : (uint8_t)rng();
		}
		l4[12] = (uint8_t)(((20 + optlen) / 4) << 4);
		wr16(l4 + 14, (uint16_t)((rng() % 4) ? rng() : 0));
		wr16(l4 + 16, 0);
		wr16(l4 + 18, 0);
		wr16(l4 + 16, csum(pseudo(PEER_IP, FZ_IP, 6, l4len), l4, l4len));
		break;
	}
	}
	wr16(f + 12, 0x0800);
	ip[0] = 0x45; ip[1] = 0;
	wr16(ip + 2, (uint16_t)(20 + l4len));
	wr16(ip + 4, (uint16_t)rng());
	wr16(ip + 6, 0);
	ip[8] = 64; ip[9] = proto;
	wr16(ip + 10, 0);
	wr32(ip + 12, PEER_IP);
	wr32(ip + 16, FZ_IP);
	wr16(ip + 10, csum(0, ip, 20));
	return 34 + l4len;
}

/* Damage a valid frame: flips, truncation, garbage, length lies. */
static size_t fz_mutate(uint8_t *f, size_t len, size_t cap)
{
	switch (rng() % 8) {
	case 0:
		return len;   /* leave it valid */
	case 1:
		return len;
	case 2:
		for (int i = 0, k = 1 + (int)(rng() % 8); i < k; i++)
			f[rng() % len] ^= (uint8_t)(1u << (rng() % 8));
		return len;
	case 3:
		return rng() % (len + 1);   /* truncated, maybe to nothing */
	case 4: {
		size_t n = rng() % cap;
		for (size_t i = 0; i < n; i++)
			f[i] = (uint8_t)rng();
		return n;
	}
	case 5:   /* lie about lengths (IP total, IHL, TCP offset, UDP length) */
		if (len > 34) {
			f[14 + (rng() % 2 ? 0 : 2)] = (uint8_t)rng();
			f[14 + 3] = (uint8_t)rng();
			if (len > 34 + 13)
				f[34 + 12] = (uint8_t)rng();
			if (len > 34 + 5)
				f[34 + 4] = (uint8_t)rng();
		}
		return len;
	case 6: {   /* grow with garbage up to the buffer's end */
		size_t n = len + rng() % (cap - len + 1);
		for (size_t i = len; i < n; i++)
			f[i] = (uint8_t)rng();
		return n;
	}
	default:   /* a fragment */
		if (len > 34)
			wr16(f + 14 + 6, (uint16_t)(0x2000 | (rng() % 0x1fff)));
		return len;
	}
}

static int cmd_fuzz(int argc, char **argv)
{
	if (argc < 2)
		return 2;
	unsigned long iters = strtoul(argv[0], NULL, 10);
	rng_state = strtoull(argv[1], NULL, 0) | 1;

	struct net_config cfg = {
		.ip = FZ_IP, .prefix = 24, .gateway = NET_IP4(10, 9, 0, 254), .mtu = 1500,
		.seed = 42, .tx = fz_tx,
	};
	memcpy(cfg.mac, fz_mac, 6);
	if (net_init(&the_net, &cfg) || start_apps(&the_net))
		return 1;
	uint64_t now = 1000000000ull;
	/* one heap buffer sized exactly, so ASan catches any read past the end */
	for (unsigned long i = 0; i < iters; i++) {
		size_t cap = NET_FRAME_MAX + 4;
		uint8_t *f = malloc(cap);
		size_t len = fz_mutate(f, fz_build(f), cap);
		uint8_t *exact = malloc(len ? len : 1);
		memcpy(exact, f, len);
		free(f);
		net_input(&the_net, exact, len, now);
		free(exact);
		now += rng() % 3 ? rng() % 2000000 : rng() % 3000000000ull;
		uint64_t next = net_timers(&the_net, now);
		if (next != NET_TIME_NEVER && next < now)
			fz_fail("timer deadline in the past", NULL, 0);
		if (tcp_active_count(&the_net) > NET_TCP_CONNS)
			fz_fail("connection count out of range", NULL, 0);
	}
	/* after a quiet 10 minutes nothing may be stuck: every connection left
	 * is an idle established one (the echo app keeps those open until the
	 * peer closes), with no data or FIN waiting and no timer running */
	for (int i = 0; i < 600; i++) {
		now += 1000000000ull;
		net_timers(&the_net, now);
	}
	unsigned idle = 0;
	for (unsigned i = 0; i < NET_TCP_CONNS; i++) {
		const struct tcp_conn *c = &the_net.conns[i];
		if (!c->state)
			continue;
		if (c->snd_una != c->snd_max || c->buf_len || c->timer != NET_TIME_NEVER || c->lport != 7)
			fz_fail("a connection is stuck after 10 quiet minutes", NULL, 0);
		idle++;
	}
	const struct net_stats *s = net_get_stats(&the_net);
	printf("FUZZ OK iterations=%lu tx=%lu accepted=%llu resets=%llu retransmits=%llu timeouts=%llu "
	       "recycled=%llu idle_echo_left=%u\n",
	       iters, fz_tx_frames, (unsigned long long)s->tcp_accepted,
	       (unsigned long long)s->tcp_resets_sent, (unsigned long long)s->tcp_retransmits,
	       (unsigned long long)s->tcp_timeouts, (unsigned long long)s->tcp_recycled, idle);
	return 0;
}

/* net_warm (warm.c) on its own: the scratch exchange must run to the end
 * (ARP answered, one connection accepted, its byte and FIN sent, nothing
 * dropped), or the wait point warms less than it says. */
static int cmd_warm(void)
{
	static const uint8_t mac[6] = {0x5a, 0x01, 0x02, 0x03, 0x04, 0x05};
	const struct net_stats *s = net_warm(mac, now_ns());

	if (!s)
		return 1;
	printf("WARM arp_replies=%llu accepted=%llu tx=%llu rx=%llu dropped=%llu resets=%llu\n",
	       (unsigned long long)s->arp_replies_sent, (unsigned long long)s->tcp_accepted,
	       (unsigned long long)s->tx_frames, (unsigned long long)s->rx_frames,
	       (unsigned long long)s->rx_dropped, (unsigned long long)s->tcp_resets_sent);
	return 0;
}

int main(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (argc >= 2 && !strcmp(argv[1], "run"))
		return cmd_run(argc - 2, argv + 2);
	if (argc >= 2 && !strcmp(argv[1], "fmt"))
		return cmd_fmt(argc - 2, argv + 2);
	if (argc >= 2 && !strcmp(argv[1], "fuzz"))
		return cmd_fuzz(argc - 2, argv + 2);
	if (argc >= 2 && !strcmp(argv[1], "warm"))
		return cmd_warm();
	fprintf(stderr, "usage: tap_harness run|fmt|fuzz|warm ...\n");
	return 2;
}
