/*
 * daytime.c - the RFC 867 daytime server unikernel.
 *
 * TCP port 13: on accept, send "Saturday, November 21, 2026 19:35:12-UTC\r\n"
 * (the time from wallclock_ns(), i.e. the NoXS page's host time plus the TSC
 * since) and close; any number of clients, one after another or several at
 * once. Also UDP port 13 (one datagram in, the line back), TCP port 37 (RFC
 * 868 time, what `rdate -p` asks for) and ping. The boot record's
 * app_counter counts TCP clients served.
 *
 * The network comes from NoXS vif 0 only (address, prefix, gateway, MTU).
 * Idle is interrupt driven: the main loop sleeps in idle_until() until the
 * NIC interrupts or the next TCP/ARP timer is due.
 */
#include "guest.h"
#include "net.h"

static struct net net;
static uint64_t served;

static uint64_t unix_seconds(void)
{
	return wallclock_ns() / 1000000000ull;
}

static void daytime_accepted(void *ctx, struct tcp_conn *c)
{
	char text[64];
	size_t len = net_format_daytime(text, sizeof(text), unix_seconds());

	(void)ctx;
	if (len < sizeof(text))
		tcp_send(c, text, len);
	tcp_close(c);   /* FIN follows the line; the stack finishes the close */
	noxs_count(++served);
}

static const struct tcp_ops daytime_ops = {.accepted = daytime_accepted};

static void time_accepted(void *ctx, struct tcp_conn *c)
{
	uint32_t t = (uint32_t)(unix_seconds() + 2208988800ull);   /* seconds since 1900 */
	uint8_t be[4] = {(uint8_t)(t >> 24), (uint8_t)(t >> 16), (uint8_t)(t >> 8), (uint8_t)t};

	(void)ctx;
	tcp_send(c, be, sizeof(be));
	tcp_close(c);
}

static const struct tcp_ops time_ops = {.accepted = time_accepted};

static void daytime_udp(void *ctx, struct net *n, uint32_t src, uint16_t sport, uint16_t dport,
			const uint8_t *data, size_t len)
{
	char text[64];
	size_t tl = net_format_daytime(text, sizeof(text), unix_seconds());

	(void)ctx, (void)data, (void)len;
	if (tl < sizeof(text))
		udp_send(n, src, dport, sport, text, tl);
}

void app_main(void)
{
	int rc = netif_up(&net, 0);
	if (rc < 0)
		guest_fatal((uint32_t)-rc, "daytime: network vif 0 not available");
	noxs_devices_up();
	if (tcp_listen(&net, 13, &daytime_ops, 0) || tcp_listen(&net, 37, &time_ops, 0) ||
	    udp_bind(&net, 13, daytime_udp, 0))
		guest_fatal(NOXS_ERR_APP, "daytime: cannot listen");
	noxs_ready("daytime");
	netif_announce(&net);   /* after READY: not needed to serve (netif.c) */
	for (;;)
		idle_until(netif_poll(&net));
}
