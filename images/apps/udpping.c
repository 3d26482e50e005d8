/*
 * udpping.c - a guest that initiates traffic: UDP datagrams to one destination.
 *
 * Command line: "dst=A.B.C.D:PORT" (required) and "count=N" (optional, default
 * 100, 1..100000). Once NoXS vif 0 is up, it sends one datagram every 100 ms,
 * N in all, from UDP port 40000 to dst; the payload is
 * "udpping <our address> <seq>\n" (seq from 1), so a receiver can tell which
 * guest sent it and see the guest's own address even when the packet's source
 * was rewritten on the way (NAT). READY after the first send; app_counter
 * counts datagrams sent. Off-subnet destinations go via the vif's gateway (the
 * stack ARPs for the gateway). After the last datagram it stays up, idle.
 */
#include "guest.h"
#include "net.h"

#define UDPPING_SPORT     40000u
#define UDPPING_PERIOD_NS 100000000ull   /* 100 ms */
#define UDPPING_COUNT_MAX 100000u

static struct net net;

/* The value of "key" (e.g. "dst=") on the command line, or NULL. */
static const char *cmdline_value(const char *key)
{
	const char *line = boot_cmdline();
	size_t n = strlen(key);

	for (const char *p = line; *p; p++)
		if ((p == line || p[-1] == ' ') && strncmp(p, key, n) == 0)
			return p + n;
	return 0;
}

/* A decimal number up to max; advances *p. -1 if none or too large. */
static int64_t parse_uint(const char **p, uint32_t max)
{
	const char *s = *p;
	uint64_t v = 0;

	if (*s < '0' || *s > '9')
		return -1;
	for (; *s >= '0' && *s <= '9'; s++) {
		v = v * 10 + (uint64_t)(*s - '0');
		if (v > max)
			return -1;
	}
	*p = s;
	return (int64_t)v;
}

/* "A.B.C.D:PORT" followed by the end or a space. 0 on success. */
static int parse_dst(const char *s, uint32_t *ip, uint16_t *port)
{
	uint32_t addr = 0;

	if (!s)
		return -1;
	for (int i = 0; i < 4; i++) {
		int64_t octet = parse_uint(&s, 255);
		if (octet < 0 || *s != (i < 3 ? '.' : ':'))
			return -1;
		addr = addr << 8 | (uint32_t)octet;
		s++;
	}
	int64_t p = parse_uint(&s, 65535);
	if (p <= 0 || (*s && *s != ' ') || addr == 0)
		return -1;
	*ip = addr;
	*port = (uint16_t)p;
	return 0;
}

static uint32_t count_arg(void)
{
	const char *s = cmdline_value("count=");
	if (!s)
		return 100;
	int64_t v = parse_uint(&s, UDPPING_COUNT_MAX);
	if (v <= 0 || (*s && *s != ' '))
		guest_fatal(NOXS_ERR_APP, "udpping: bad count= (1..%u)", UDPPING_COUNT_MAX);
	return (uint32_t)v;
}

static void send_one(uint32_t dst, uint16_t dport, uint32_t seq)
{
	char text[64];
	uint32_t me = net_ip(&net);
	int len = snprintf(text, sizeof(text), "udpping %u.%u.%u.%u %u\n", me >> 24, (me >> 16) & 0xff,
			   (me >> 8) & 0xff, me & 0xff, seq);

	if (len > 0 && (size_t)len < sizeof(text))
		udp_send(&net, dst, UDPPING_SPORT, dport, text, (size_t)len);
}

void app_main(void)
{
	uint32_t dst;
	uint16_t dport;

	if (parse_dst(cmdline_value("dst="), &dst, &dport))
		guest_fatal(NOXS_ERR_APP, "udpping: needs dst=A.B.C.D:PORT on the command line");
	uint32_t count = count_arg();
	int rc = netif_up(&net, 0);
	if (rc < 0)
		guest_fatal((uint32_t)-rc, "udpping: network vif 0 not available");
	netif_announce(&net);
	noxs_devices_up();

	uint32_t sent = 0;
	uint64_t next_send = clock_ns();
	for (;;) {
		uint64_t deadline = netif_poll(&net);
		if (sent < count && clock_ns() >= next_send) {
			send_one(dst, dport, ++sent);
			noxs_count(sent);
			if (sent == 1)
				noxs_ready("udpping");
			next_send += UDPPING_PERIOD_NS;
			deadline = 0;   /* come straight back: the send may have queued ARP */
		}
		if (sent < count && next_send < deadline)
			deadline = next_send;
		idle_until(deadline);
	}
}
