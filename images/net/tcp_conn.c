/*
 * tcp_conn.c - the TCP connection table (lookup; allocation, recycling and
 * eviction when full), the retransmission/persist/TIME_WAIT timers, and the
 * app's API (listen, send, close, abort) and the SYN cookies. Segments in
 * and out: tcp.c.
 */
#include "tcp_internal.h"

/* ---- the connection table ---- */

struct tcp_conn *tcp_conn_lookup(struct net *n, uint32_t rip, uint16_t rport, uint16_t lport)
{
	for (unsigned i = 0; i < NET_TCP_CONNS; i++) {
		struct tcp_conn *c = &n->conns[i];
		if (c->state != ST_FREE && c->rip == rip && c->rport == rport && c->lport == lport)
			return c;
	}
	return 0;
}

/* Free slot c of a connection with no progress for long: reset it (the
 * app hears TCP_EVICTED) so a new SYN can have it. */
static void conn_evict(struct net *n, struct tcp_conn *c)
{
	n->stats.tcp_evicted++;
	n->stats.tcp_resets_sent++;
	tcp_segment(n, c->rip, c->lport, c->rport, c->snd_nxt, 0, F_RST, 0, 0, 0, 0);
	tcp_conn_abort(c, TCP_EVICTED);
}

static bool finished(const struct tcp_conn *c)
{
	return c->state == ST_TIME_WAIT || c->state == ST_FIN_WAIT_2;
}

/* Has c's peer gone quiet long enough to be reset for a new SYN? No progress for
 * IDLE_EVICT_NS, and, if data or a FIN of ours is in flight, sent again at least
 * EVICT_AFTER_RETRIES times: a peer silent while our segment is lost is waiting
 * for our retransmission, not holding the slot (under 5% loss, evicting after the
 * first lost segment reset a working client now and then). A silent peer is
 * evictable after a few RTOs; one holding its window shut (nothing in flight)
 * after IDLE_EVICT_NS as before. */
static bool quiet(const struct net *n, const struct tcp_conn *c)
{
	if (n->now - c->heard < IDLE_EVICT_NS)
		return false;
	return c->snd_una == c->snd_max || c->retries >= EVICT_AFTER_RETRIES;
}

/* Is a older than b for its kind (finished: by state age, TIME_WAIT before
 * FIN_WAIT_2; half-open: by state age; others: by last progress)? */
static bool older(const struct tcp_conn *a, const struct tcp_conn *b)
{
	if (!b)
		return true;
	if (a->state == ST_TIME_WAIT && b->state == ST_FIN_WAIT_2)
		return true;
	if (a->state == ST_FIN_WAIT_2 && b->state == ST_TIME_WAIT)
		return false;
	if (a->state == ST_SYN_RCVD || finished(a))
		return a->since < b->since;
	return a->heard < b->heard;
}

/* A slot for a SYN from rip, or NULL (the SYN is dropped; the client retries).
 *
 * A peer already holding NET_TCP_PER_SOURCE slots recycles one of its own
 * (finished, else the one idle for longest, else a stale half-open one), so
 * one address (a flood, or many silent connections) leaves the rest of the
 * table to everybody else. Otherwise: a free slot, else the oldest finished
 * one (TIME_WAIT, then FIN_WAIT_2: the app has closed it and the peer has
 * acknowledged everything we sent; all that is left is the peer's FIN), else
 * the oldest stale half-open one, else the connection whose peer has made no
 * progress for longest (a quiet() one: a silent peer, or one holding its window
 * shut; it is reset).
 *
 * A young half-open slot is never taken: its peer may well have sent the
 * handshake's ACK (lost, or still queued), so the peer holds a connection we
 * would forget and would hang or be reset later. Dropping the new SYN instead
 * costs that client one SYN retransmit. A half-open slot that outlived two
 * SYN-ACKs is recycled, and its peer is told with a RST. Except for a peer
 * that proved itself (`proven`: it returned a valid SYN cookie, tcp.c): it
 * may take another address's young half-open slot (reset), as under a flood
 * from many addresses every slot is young and half-open.
 *
 * *capped is set when rip is at its cap (the caller then sends no cookie:
 * the SYN is dropped and the client retries). */
struct tcp_conn *tcp_conn_alloc(struct net *n, uint32_t rip, bool proven, bool *capped)
{
	struct tcp_conn *fre = 0, *fin = 0, *syn = 0, *idle = 0, *young = 0;
	struct tcp_conn *own_fin = 0, *own_syn = 0, *own_idle = 0;
	unsigned own = 0;

	for (unsigned i = 0; i < NET_TCP_CONNS; i++) {
		struct tcp_conn *c = &n->conns[i];
		if (c->state == ST_FREE) {
			if (!fre)
				fre = c;
			continue;
		}
		bool mine = c->rip == rip;
		own += mine;
		if (finished(c)) {
			if (older(c, fin))
				fin = c;
			if (mine && older(c, own_fin))
				own_fin = c;
		} else if (c->state == ST_SYN_RCVD) {
			if (n->now - c->since < HALF_OPEN_STALE_NS) {
				if (!mine && older(c, young))
					young = c;
				continue;
			}
			if (older(c, syn))
				syn = c;
			if (mine && older(c, own_syn))
				own_syn = c;
		} else if (quiet(n, c)) {
			if (older(c, idle))
				idle = c;
			if (mine && older(c, own_idle))
				own_idle = c;
		}
	}
	*capped = own >= NET_TCP_PER_SOURCE;
	if (*capped) {
		fre = 0;
		young = 0;
		fin = own_fin;
		syn = own_syn;
		idle = own_idle;
	}
	if (fre)
		return fre;
	if (fin) {
		n->stats.tcp_recycled++;
		tcp_conn_free(fin);
		return fin;
	}
	if (idle && !syn) {
		conn_evict(n, idle);
		return idle;
	}
	if (!syn && proven)
		syn = young;
	if (syn) {
		n->stats.tcp_resets_sent++;
		tcp_segment(n, syn->rip, syn->lport, syn->rport, syn->iss + 1, 0, F_RST, 0, 0, 0, 0);
		tcp_conn_free(syn);
		return syn;
	}
	n->stats.tcp_table_full++;
	return 0;
}

/* ---- timers ---- */

static void conn_timeout(struct tcp_conn *c)
{
	struct net *n = c->net;

	c->timer = NET_TIME_NEVER;
	if (c->state == ST_TIME_WAIT || c->state == ST_FIN_WAIT_2) {
		tcp_conn_free(c);
		return;
	}
	bool outstanding = c->snd_una != c->snd_max;
	bool pending = SEQ_LT(c->snd_nxt, c->buf_seq + c->buf_len) ||
		       ((c->flags & C_FIN_QUEUED) && c->snd_nxt == c->buf_seq + c->buf_len);
	if (!outstanding && !pending) {
		if ((c->flags & C_WUPD) && c->retries < DATA_RETRIES) {
			c->retries++;
			c->rto_ms = c->rto_ms * 2 > RTO_MAX_MS ? RTO_MAX_MS : c->rto_ms * 2;
			tcp_send_ack(c);   /* carries the open window again */
			tcp_arm_rtx(c);
		} else {
			c->flags &= (uint8_t)~C_WUPD;
		}
		return;
	}
	unsigned limit = c->state == ST_SYN_RCVD ? SYN_RETRIES : DATA_RETRIES;
	if (c->retries >= limit) {
		n->stats.tcp_timeouts++;
		if (c->state != ST_SYN_RCVD)
			tcp_segment(n, c->rip, c->lport, c->rport, c->snd_nxt, 0, F_RST, 0, 0, 0, 0);
		tcp_conn_abort(c, TCP_TIMED_OUT);
		return;
	}
	c->retries++;
	n->stats.tcp_retransmits++;
	c->rtt_seq = 0;   /* Karn: never time a retransmitted segment */
	c->rto_ms = c->rto_ms * 2 > RTO_MAX_MS ? RTO_MAX_MS : c->rto_ms * 2;
	c->snd_nxt = c->state == ST_SYN_RCVD ? c->iss : c->snd_una;
	tcp_output(c, true);
	if (c->state != ST_FREE)
		tcp_arm_rtx(c);
}

uint64_t net_tcp_timers(struct net *n)
{
	uint64_t next = NET_TIME_NEVER;

	for (unsigned i = 0; i < NET_TCP_CONNS; i++) {
		struct tcp_conn *c = &n->conns[i];
		if (c->state == ST_FREE)
			continue;
		if (c->timer <= n->now)
			conn_timeout(c);
		if (c->state != ST_FREE)
			next = min_u64(next, c->timer);
	}
	return next;
}

/* ---- the app's API ---- */

int tcp_listen(struct net *n, uint16_t port, const struct tcp_ops *ops, void *ctx)
{
	struct tcp_listener *slot = 0;

	if (port == 0 || !ops)
		return -1;
	for (unsigned i = 0; i < NET_TCP_LISTENERS; i++) {
		if (n->listeners[i].port == port)
			return -1;
		if (!n->listeners[i].port && !slot)
			slot = &n->listeners[i];
	}
	if (!slot)
		return -1;
	slot->port = port;
	slot->ops = ops;
	slot->ctx = ctx;
	return 0;
}

size_t tcp_send_space(const struct tcp_conn *c)
{
	return NET_TCP_SNDBUF - c->buf_len;
}

int tcp_send(struct tcp_conn *c, const void *data, size_t len)
{
	if ((c->state != ST_ESTABLISHED && c->state != ST_CLOSE_WAIT) || (c->flags & C_FIN_QUEUED))
		return -1;
	size_t space = tcp_send_space(c);
	if (len > space)
		len = space;
	n_memcpy(c->buf + c->buf_len, data, len);
	c->buf_len = (uint16_t)(c->buf_len + len);
	tcp_output(c, false);
	return (int)len;
}

void tcp_close(struct tcp_conn *c)
{
	c->flags &= (uint8_t)~C_APP;
	if (c->flags & C_FIN_QUEUED)
		return;
	if (c->state == ST_ESTABLISHED)
		tcp_set_state(c, ST_FIN_WAIT_1);
	else if (c->state == ST_CLOSE_WAIT)
		tcp_set_state(c, ST_LAST_ACK);
	else
		return;
	c->flags |= C_FIN_QUEUED;
	tcp_output(c, false);
}

void tcp_abort(struct tcp_conn *c)
{
	if (c->state == ST_FREE)
		return;
	c->net->stats.tcp_resets_sent++;
	tcp_segment(c->net, c->rip, c->lport, c->rport, c->snd_nxt, 0, F_RST, 0, 0, 0, 0);
	tcp_conn_free(c);
}

uint32_t tcp_remote_ip(const struct tcp_conn *c) { return c->rip; }
uint16_t tcp_remote_port(const struct tcp_conn *c) { return c->rport; }

unsigned tcp_active_count(const struct net *n)
{
	unsigned count = 0;

	for (unsigned i = 0; i < NET_TCP_CONNS; i++)
		count += n->conns[i].state != ST_FREE;
	return count;
}

/* ---- SYN cookies (RFC 4987 3.6), used by tcp.c ----
 *
 * When the table has no slot for a SYN (and its address is not at its cap),
 * the SYN-ACK keeps no state: its ISN is a keyed hash of the 4-tuple, the
 * client's ISN and a 68.7 s period (n->now >> 36), whose low 3 bits carry
 * the MSS (the only option this stack uses, so a cookie loses nothing). An
 * ACK for no connection whose ack - 1 is such a cookie (this period or the
 * last) makes the connection then. Under a SYN flood from many addresses
 * the half-open slots are all taken, and this is how a real client still
 * gets in. */
#define COOKIE_PERIOD_SHIFT 36
static const uint16_t cookie_mss[8] = {64, 256, 536, 1024, 1220, 1360, 1440, 1460};

static uint32_t cookie_hash(const struct net *n, uint32_t rip, uint16_t rport, uint16_t lport, uint32_t irs,
			    uint64_t period)
{
	uint64_t h = mix64(n->seed ^ 0x636f6f6b69657321ull ^ (((uint64_t)rip << 32) | ((uint32_t)rport << 16) | lport));
	return (uint32_t)mix64(h ^ (((uint64_t)irs << 32) | (uint32_t)period));
}

uint32_t tcp_cookie_make(const struct net *n, uint32_t rip, uint16_t rport, uint16_t lport, uint32_t irs,
			 uint16_t mss)
{
	uint32_t idx = 0;

	for (uint32_t i = 0; i < 8; i++)
		if (cookie_mss[i] <= mss)
			idx = i;
	return (cookie_hash(n, rip, rport, lport, irs, n->now >> COOKIE_PERIOD_SHIFT) & ~7u) | idx;
}

/* The MSS a valid cookie carries, else 0. */
uint16_t tcp_cookie_check(const struct net *n, uint32_t rip, uint16_t rport, uint16_t lport, uint32_t irs,
			  uint32_t iss)
{
	uint64_t period = n->now >> COOKIE_PERIOD_SHIFT;

	for (uint64_t back = 0; back < 2 && back <= period; back++)
		if (((cookie_hash(n, rip, rport, lport, irs, period - back) ^ iss) & ~7u) == 0)
			return cookie_mss[iss & 7];
	return 0;
}

/* The window a cookie SYN-ACK advertises: an app that limits its window
 * (window()) has no connection to ask yet, so it gets one segment. */
uint16_t tcp_cookie_window(const struct tcp_listener *l)
{
	return (uint16_t)(l->ops->window ? DEFAULT_MSS : NET_TCP_RCVWND > 0xffff ? 0xffff : NET_TCP_RCVWND);
}
