/*
 * tcp.c - server-side TCP (RFC 793/9293 subset, RFC 6298 timers, RFC 5961
 * challenge ACKs): segments out and in. The connection table, the timers
 * and the app's API are in tcp_conn.c.
 *
 * Passive open only. Each connection owns a send buffer holding everything
 * from snd_una on (unacknowledged, then unsent); retransmission is
 * go-back-N from snd_una. Received in-order data is handed to the app at
 * once and acknowledged; out-of-order segments are dropped with a duplicate
 * ACK (the peer retransmits), which keeps the stack free of reassembly
 * buffers. The table is small and fixed: TIME_WAIT, FIN_WAIT_2 and half-open
 * slots are recycled oldest first, so clients arriving back to back never find it
 * exhausted by connections that are already finished; one peer address holds
 * at most NET_TCP_PER_SOURCE slots, and when the table is full the connection
 * whose peer has made no progress for longest is reset to make room, so peers
 * that go silent or close their window cannot lock everybody else out.
 */
#include "tcp_internal.h"

/* ---- helpers ---- */

/* RFC 6528: a keyed hash of the 4-tuple plus a 4 us clock. */
static uint32_t tcp_isn(const struct net *n, uint32_t rip, uint16_t rport, uint16_t lport)
{
	uint64_t h = mix64(n->seed ^ mix64(((uint64_t)rip << 32) | ((uint32_t)rport << 16) | lport));
	return (uint32_t)h + (uint32_t)(n->now / 4000);
}

static bool app_owned(const struct tcp_conn *c) { return (c->flags & C_APP) != 0; }

static uint16_t rcv_window(struct tcp_conn *c)
{
	size_t w = NET_TCP_RCVWND;

	/* the app's limit from the SYN-ACK on, so the peer's first flight fits */
	if ((app_owned(c) || c->state == ST_SYN_RCVD) && c->lst && c->lst->ops->window) {
		size_t a = c->lst->ops->window(c->lst->ctx, c);
		if (a < w)
			w = a;
	}
	return (uint16_t)(w > 0xffff ? 0xffff : w);
}

void tcp_conn_free(struct tcp_conn *c)
{
	struct net *n = c->net;

	n_memset(c, 0, offsetof(struct tcp_conn, buf));
	c->net = n;
	c->state = ST_FREE;
	c->timer = NET_TIME_NEVER;
}

void tcp_set_state(struct tcp_conn *c, uint8_t st)
{
	c->state = st;
	c->since = c->net->now;
}

/* Build and send one segment of connection c (or, with c == NULL, a bare
 * RST/ACK answering a segment that has no connection). */
int tcp_segment(struct net *n, uint32_t rip, uint16_t lport, uint16_t rport, uint32_t seq,
			uint32_t ack, uint8_t flags, uint16_t wnd, const uint8_t *data, size_t len,
			uint16_t mss_opt)
{
	uint8_t *t = n->txbuf + TX_L4;
	size_t hlen = TCP_HLEN + (mss_opt ? 4 : 0);

	wr16(t, lport);
	wr16(t + 2, rport);
	wr32(t + 4, seq);
	wr32(t + 8, ack);
	t[12] = (uint8_t)((hlen / 4) << 4);
	t[13] = flags;
	wr16(t + 14, wnd);
	wr16(t + 16, 0);
	wr16(t + 18, 0);
	if (mss_opt) {
		t[20] = 2;
		t[21] = 4;
		wr16(t + 22, mss_opt);
	}
	if (len)
		n_memcpy(t + hlen, data, len);
	uint16_t seglen = (uint16_t)(hlen + len);
	uint32_t s = net_csum_pseudo(n->ip, rip, IP_PROTO_TCP, seglen);
	wr16(t + 16, net_csum_fold(net_csum_add(s, t, seglen)));
	return net_ip_output(n, rip, IP_PROTO_TCP, seglen);
}

static void conn_send(struct tcp_conn *c, uint32_t seq, uint8_t flags, const uint8_t *data, size_t len)
{
	struct net *n = c->net;
	uint16_t wnd = rcv_window(c);
	uint16_t mss = (flags & F_SYN) ? (uint16_t)(n->mtu - IP_HLEN - TCP_HLEN) : 0;

	if (flags & F_ACK) {
		c->flags &= (uint8_t)~C_ACK_NOW;
		if (c->rcv_adv < c->mss && wnd >= c->mss && c->state != ST_SYN_RCVD) {
			c->flags |= C_WUPD;
			if (c->timer == NET_TIME_NEVER)
				c->timer = n->now + (uint64_t)c->rto_ms * MS;
		} else if (wnd < c->mss) {
			c->flags &= (uint8_t)~C_WUPD;
		}
		c->rcv_adv = wnd;
	}
	tcp_segment(n, c->rip, c->lport, c->rport, seq, c->rcv_nxt, flags, wnd, data, len, mss);
}

void tcp_send_ack(struct tcp_conn *c)
{
	conn_send(c, c->snd_nxt, F_ACK, 0, 0);
}

/* RST in reply to a segment (RFC 9293 3.10.7.1). */
static void send_reset(struct net *n, uint32_t rip, uint16_t lport, uint16_t rport, uint32_t seq,
		       uint32_t ack, uint8_t flags, size_t seglen)
{
	if (flags & F_RST)
		return;
	n->stats.tcp_resets_sent++;
	if (flags & F_ACK)
		tcp_segment(n, rip, lport, rport, ack, 0, F_RST, 0, 0, 0, 0);
	else
		tcp_segment(n, rip, lport, rport, 0, seq + (uint32_t)seglen, F_RST | F_ACK, 0, 0, 0, 0);
}

void tcp_arm_rtx(struct tcp_conn *c)
{
	c->timer = c->net->now + (uint64_t)c->rto_ms * MS;
}

/* Send whatever the window allows: data from snd_nxt, then the FIN. */
void tcp_output(struct tcp_conn *c, bool probe)
{
	if (c->state == ST_SYN_RCVD) {
		if (c->snd_nxt == c->iss) {
			conn_send(c, c->iss, F_SYN | F_ACK, 0, 0);
			c->snd_nxt = c->iss + 1;
			if (SEQ_GT(c->snd_nxt, c->snd_max))
				c->snd_max = c->snd_nxt;
		}
		if (c->timer == NET_TIME_NEVER)
			tcp_arm_rtx(c);
		return;
	}
	if (c->state != ST_ESTABLISHED && c->state != ST_CLOSE_WAIT && c->state != ST_FIN_WAIT_1 &&
	    c->state != ST_LAST_ACK && c->state != ST_CLOSING)
		return;

	uint32_t data_end = c->buf_seq + c->buf_len;
	uint32_t wnd = c->snd_wnd ? c->snd_wnd : (probe ? 1u : 0u);
	uint32_t wnd_end = c->snd_una + wnd;

	while (SEQ_LT(c->snd_nxt, data_end) && SEQ_LT(c->snd_nxt, wnd_end)) {
		uint32_t off = c->snd_nxt - c->buf_seq;
		uint32_t len = data_end - c->snd_nxt;
		if (len > wnd_end - c->snd_nxt)
			len = wnd_end - c->snd_nxt;
		if (len > c->mss)
			len = c->mss;
		uint8_t flags = F_ACK | F_PSH;
		bool fin = (c->flags & C_FIN_QUEUED) && c->snd_nxt + len == data_end;
		if (fin)
			flags |= F_FIN;
		if (!(c->rtt_seq) && c->snd_nxt == c->snd_max) {   /* time one new segment (Karn) */
			c->rtt_seq = c->snd_nxt + len;
			c->rtt_start = c->net->now;
		}
		conn_send(c, c->snd_nxt, flags, c->buf + off, len);
		c->snd_nxt += len + (fin ? 1 : 0);
	}
	if ((c->flags & C_FIN_QUEUED) && c->snd_nxt == data_end) {
		conn_send(c, c->snd_nxt, F_FIN | F_ACK, 0, 0);
		c->snd_nxt++;
	}
	if (SEQ_GT(c->snd_nxt, c->snd_max))
		c->snd_max = c->snd_nxt;
	bool outstanding = c->snd_una != c->snd_max;
	bool blocked = !outstanding && SEQ_LT(c->snd_nxt, data_end);   /* zero window: probe later */
	if ((outstanding || blocked) && c->timer == NET_TIME_NEVER)
		tcp_arm_rtx(c);   /* a running timer is not restarted by new data (RFC 6298) */
}

/* Connection died under the app: tell it (once), then free the slot. */
void tcp_conn_abort(struct tcp_conn *c, enum tcp_abort_reason why)
{
	const struct tcp_listener *l = c->lst;

	if (app_owned(c) && l && l->ops->aborted) {
		c->flags &= (uint8_t)~C_APP;
		l->ops->aborted(l->ctx, c, why);
	}
	tcp_conn_free(c);
}

static uint16_t parse_mss(const uint8_t *opt, size_t len)
{
	size_t i = 0;

	while (i < len) {
		uint8_t kind = opt[i];
		if (kind == 0)
			break;
		if (kind == 1) {
			i++;
			continue;
		}
		if (i + 1 >= len || opt[i + 1] < 2 || i + opt[i + 1] > len)
			break;   /* malformed: ignore the rest */
		if (kind == 2 && opt[i + 1] == 4)
			return rd16(opt + i + 2);
		i += opt[i + 1];
	}
	return 0;
}

/* A SYN for a listening port: make a SYN_RCVD connection and answer; with
 * no slot, answer with a cookie. */
static void passive_open(struct net *n, const struct tcp_listener *l, uint32_t rip, uint16_t rport,
			 uint32_t seq, uint16_t wnd, const uint8_t *opt, size_t optlen)
{
	uint16_t peer_mss = parse_mss(opt, optlen);
	uint16_t our_mss = (uint16_t)(n->mtu - IP_HLEN - TCP_HLEN);
	uint16_t mss = peer_mss ? (peer_mss < our_mss ? peer_mss : our_mss) : DEFAULT_MSS;
	bool capped;

	if (mss < 64)
		mss = 64;   /* a hostile tiny MSS must not turn a reply into 1-byte segments */
	struct tcp_conn *c = tcp_conn_alloc(n, rip, false, &capped);
	if (!c) {
		if (capped)
			return;   /* this address has its share: drop the SYN, the client retries */
		n->stats.tcp_cookies_sent++;
		tcp_segment(n, rip, l->port, rport, tcp_cookie_make(n, rip, rport, l->port, seq, mss), seq + 1,
			    F_SYN | F_ACK, tcp_cookie_window(l), 0, 0, our_mss);
		return;
	}
	c->lst = l;
	c->rip = rip;
	c->rport = rport;
	c->lport = l->port;
	c->mss = mss;
	c->irs = seq;
	c->rcv_nxt = seq + 1;
	c->iss = tcp_isn(n, rip, rport, l->port);
	c->snd_una = c->snd_nxt = c->snd_max = c->iss;
	c->buf_seq = c->iss + 1;
	c->snd_wnd = wnd;
	c->snd_wl1 = seq;
	c->snd_wl2 = c->iss;
	c->rto_ms = RTO_INIT_MS;
	c->timer = NET_TIME_NEVER;
	tcp_set_state(c, ST_SYN_RCVD);
	c->rtt_seq = c->iss + 1;   /* the handshake gives the first RTT sample */
	c->rtt_start = n->now;
	tcp_output(c, false);
}

/* ---- input ---- */

struct seg {
	uint32_t seq, ack;
	uint8_t flags;
	uint16_t wnd;
	const uint8_t *data;
	size_t len;
};

static bool seq_acceptable(struct tcp_conn *c, const struct seg *s)
{
	uint32_t wnd = c->rcv_adv;
	uint32_t seglen = (uint32_t)s->len + ((s->flags & F_SYN) ? 1 : 0) + ((s->flags & F_FIN) ? 1 : 0);

	if (wnd == 0)
		wnd = 1;   /* keep accepting ACKs, window updates and the FIN at rcv_nxt */
	if (seglen == 0)
		return SEQ_GEQ(s->seq, c->rcv_nxt) && SEQ_LT(s->seq, c->rcv_nxt + wnd);
	return (SEQ_GEQ(s->seq, c->rcv_nxt) && SEQ_LT(s->seq, c->rcv_nxt + wnd)) ||
	       (SEQ_GEQ(s->seq + seglen - 1, c->rcv_nxt) && SEQ_LT(s->seq + seglen - 1, c->rcv_nxt + wnd));
}

static void rtt_sample(struct tcp_conn *c, uint32_t ack)
{
	if (!c->rtt_seq || SEQ_LT(ack, c->rtt_seq))
		return;
	uint64_t d = c->net->now - c->rtt_start;
	uint32_t r = (uint32_t)(d / MS);
	c->rtt_seq = 0;
	if (c->srtt_ms == 0 && c->rttvar_ms == 0) {
		c->srtt_ms = r ? r : 1;
		c->rttvar_ms = r / 2;
	} else {
		uint32_t diff = c->srtt_ms > r ? c->srtt_ms - r : r - c->srtt_ms;
		c->rttvar_ms = (3 * c->rttvar_ms + diff) / 4;
		c->srtt_ms = (7 * c->srtt_ms + r) / 8;
	}
	uint32_t rto = c->srtt_ms + 4 * c->rttvar_ms;
	c->rto_ms = rto < RTO_MIN_MS ? RTO_MIN_MS : rto > RTO_MAX_MS ? RTO_MAX_MS : rto;
}

/* Process an acceptable ACK; returns false if the connection is gone. */
static bool process_ack(struct tcp_conn *c, const struct seg *s)
{
	if (SEQ_GT(s->ack, c->snd_max)) {
		tcp_send_ack(c);   /* acks something never sent */
		return false;
	}
	if (SEQ_GT(s->ack, c->snd_una)) {
		uint16_t old_space = (uint16_t)tcp_send_space(c);
		c->heard = c->net->now;
		rtt_sample(c, s->ack);
		c->snd_una = s->ack;
		if (SEQ_LT(c->snd_nxt, c->snd_una))
			c->snd_nxt = c->snd_una;
		if (SEQ_GT(s->ack, c->buf_seq)) {
			uint32_t done = s->ack - c->buf_seq;
			if (done > c->buf_len)
				done = c->buf_len;
			n_memmove(c->buf, c->buf + done, c->buf_len - done);
			c->buf_len = (uint16_t)(c->buf_len - done);
			c->buf_seq += done;
		}
		/* the peer is getting through again: drop the backoff (as Linux
		 * does), back to the RTO the measurements give */
		if (c->retries && c->srtt_ms) {
			uint32_t rto = c->srtt_ms + 4 * c->rttvar_ms;
			c->rto_ms = rto < RTO_MIN_MS ? RTO_MIN_MS : rto > RTO_MAX_MS ? RTO_MAX_MS : rto;
		}
		c->retries = 0;
		c->timer = NET_TIME_NEVER;
		if (c->snd_una != c->snd_max)
			tcp_arm_rtx(c);
		/* our window depends on the app's buffer: reopen it promptly */
		if (app_owned(c) && c->lst->ops->window && c->rcv_adv < c->mss &&
		    tcp_send_space(c) > old_space && rcv_window(c) >= c->mss)
			c->flags |= C_ACK_NOW;
	}
	/* persist: the peer answers our zero-window probes, so it is alive */
	if (s->ack == c->snd_una && s->wnd == 0 && c->snd_una == c->snd_max)
		c->retries = 0;
	/* window update, only from the newest segment (SND.WL1/WL2) */
	if (SEQ_LT(c->snd_wl1, s->seq) || (c->snd_wl1 == s->seq && SEQ_LEQ(c->snd_wl2, s->ack))) {
		c->snd_wnd = s->wnd;
		c->snd_wl1 = s->seq;
		c->snd_wl2 = s->ack;
	}
	bool fin_acked = (c->flags & C_FIN_QUEUED) && c->buf_len == 0 && c->snd_una == c->buf_seq + 1;
	if (fin_acked) {
		switch (c->state) {
		case ST_FIN_WAIT_1:
			tcp_set_state(c, ST_FIN_WAIT_2);
			c->timer = c->net->now + FIN_WAIT_2_NS;
			break;
		case ST_CLOSING:
			tcp_set_state(c, ST_TIME_WAIT);
			c->timer = c->net->now + TIME_WAIT_NS;
			break;
		case ST_LAST_ACK:
			tcp_conn_free(c);
			return false;
		default:
			break;
		}
	}
	return true;
}

static void conn_input(struct tcp_conn *c, struct seg *s)
{
	struct net *n = c->net;
	const struct tcp_listener *l = c->lst;

	/* a retransmitted SYN while we wait for the handshake's ACK */
	if (c->state == ST_SYN_RCVD && (s->flags & F_SYN) && !(s->flags & (F_ACK | F_RST)) && s->seq == c->irs) {
		c->snd_nxt = c->iss;
		tcp_output(c, false);
		return;
	}
	if (!seq_acceptable(c, s)) {
		if (!(s->flags & F_RST))
			tcp_send_ack(c);
		return;
	}
	if (s->flags & F_RST) {
		if (s->seq == c->rcv_nxt)
			tcp_conn_abort(c, TCP_RESET_BY_PEER);
		else
			tcp_send_ack(c);   /* RFC 5961 challenge ACK */
		return;
	}
	if (s->flags & F_SYN) {
		tcp_send_ack(c);   /* RFC 5961: a SYN in a synchronized state */
		return;
	}
	if (!(s->flags & F_ACK))
		return;

	if (c->state == ST_SYN_RCVD) {
		if (SEQ_LEQ(s->ack, c->snd_una) || SEQ_GT(s->ack, c->snd_max)) {
			send_reset(n, c->rip, c->lport, c->rport, s->seq, s->ack, s->flags, s->len);
			return;
		}
		tcp_set_state(c, ST_ESTABLISHED);
		c->heard = n->now;
		c->snd_wl1 = s->seq - 1;   /* force the window update below */
		if (!process_ack(c, s))
			return;
		n->stats.tcp_accepted++;
		c->flags |= C_APP;
		if (l->ops->accepted)
			l->ops->accepted(l->ctx, c);
		if (c->state == ST_FREE)
			return;   /* the app aborted it */
	} else if (!process_ack(c, s)) {
		return;
	}

	/* payload */
	uint32_t fin_seq = s->seq + (uint32_t)s->len;
	const uint8_t *data = s->data;
	size_t len = s->len;
	uint32_t seq = s->seq;
	if (len) {
		if (SEQ_LT(seq, c->rcv_nxt)) {
			uint32_t skip = c->rcv_nxt - seq;
			if (skip >= len) {
				len = 0;
			} else {
				data += skip;
				len -= skip;
				seq = c->rcv_nxt;
			}
		}
		c->flags |= C_ACK_NOW;
		c->flags &= (uint8_t)~C_WUPD;   /* the peer is sending again */
		if (len && seq == c->rcv_nxt &&
		    (c->state == ST_ESTABLISHED || c->state == ST_FIN_WAIT_1 || c->state == ST_FIN_WAIT_2)) {
			size_t take = len;
			if (take > c->rcv_adv)
				take = c->rcv_adv;   /* what the app said it can take */
			if (take < len)
				s->flags &= (uint8_t)~F_FIN;   /* the FIN lies beyond what we took */
			c->rcv_nxt += (uint32_t)take;
			if (take)
				c->heard = n->now;
			if (take && app_owned(c) && l->ops->received) {
				l->ops->received(l->ctx, c, data, take);
				if (c->state == ST_FREE)
					return;
			}
		}
	}

	if ((s->flags & F_FIN) && fin_seq == c->rcv_nxt) {
		c->rcv_nxt++;
		c->heard = n->now;
		c->flags |= C_ACK_NOW;
		switch (c->state) {
		case ST_ESTABLISHED:
			tcp_set_state(c, ST_CLOSE_WAIT);
			if (app_owned(c) && l->ops->peer_closed) {
				l->ops->peer_closed(l->ctx, c);
				if (c->state == ST_FREE)
					return;
			}
			break;
		case ST_FIN_WAIT_1:
			tcp_set_state(c, ST_CLOSING);
			break;
		case ST_FIN_WAIT_2:
			tcp_set_state(c, ST_TIME_WAIT);
			c->timer = n->now + TIME_WAIT_NS;
			break;
		default:
			break;
		}
	} else if (c->state == ST_TIME_WAIT && (s->flags & F_FIN)) {
		c->flags |= C_ACK_NOW;   /* a retransmitted FIN: ack it again */
		c->timer = n->now + TIME_WAIT_NS;
	}

	tcp_output(c, false);
	if (c->state != ST_FREE && (c->flags & C_ACK_NOW))
		tcp_send_ack(c);
}

/* An ACK for no connection on a listening port: if it returns one of our
 * cookies, make the connection it stands for and process the ACK on it as
 * on a SYN_RCVD one. false: not a cookie, or no slot even so (the caller
 * resets the peer, which then fails at once rather than wait forever). */
static bool cookie_open(struct net *n, const struct tcp_listener *l, uint32_t rip, uint16_t rport,
			struct seg *s)
{
	uint16_t mss = tcp_cookie_check(n, rip, rport, l->port, s->seq - 1, s->ack - 1);
	bool capped;

	if (!mss)
		return false;
	struct tcp_conn *c = tcp_conn_alloc(n, rip, true, &capped);
	if (!c)
		return false;
	n->stats.tcp_cookies_ok++;
	c->lst = l;
	c->rip = rip;
	c->rport = rport;
	c->lport = l->port;
	c->mss = mss;
	c->irs = s->seq - 1;
	c->rcv_nxt = s->seq;
	c->rcv_adv = tcp_cookie_window(l);
	c->iss = s->ack - 1;
	c->snd_una = c->iss;
	c->snd_nxt = c->snd_max = c->iss + 1;
	c->buf_seq = c->iss + 1;
	c->snd_wnd = s->wnd;
	c->snd_wl1 = c->irs;
	c->snd_wl2 = c->iss;
	c->rto_ms = RTO_INIT_MS;
	c->timer = NET_TIME_NEVER;
	tcp_set_state(c, ST_SYN_RCVD);
	conn_input(c, s);
	return true;
}

void net_tcp_input(struct net *n, uint32_t src, uint32_t dst, const uint8_t *t, size_t len)
{
	if (len < TCP_HLEN) {
		n->stats.rx_dropped++;
		return;
	}
	size_t hlen = (size_t)(t[12] >> 4) * 4;
	if (hlen < TCP_HLEN || hlen > len) {
		n->stats.rx_dropped++;
		return;
	}
	if (net_csum_fold(net_csum_add(net_csum_pseudo(src, dst, IP_PROTO_TCP, (uint16_t)len), t, len)) != 0) {
		n->stats.rx_dropped++;
		return;
	}
	uint16_t sport = rd16(t), dport = rd16(t + 2);
	struct seg s = {
		.seq = rd32(t + 4),
		.ack = rd32(t + 8),
		.flags = t[13] & 0x3f,
		.wnd = rd16(t + 14),
		.data = t + hlen,
		.len = len - hlen,
	};
	if (sport == 0 || dport == 0) {
		n->stats.rx_dropped++;
		return;
	}
	size_t seglen = s.len + ((s.flags & F_SYN) ? 1 : 0) + ((s.flags & F_FIN) ? 1 : 0);

	struct tcp_conn *c = tcp_conn_lookup(n, src, sport, dport);
	/* RFC 6191-style reuse: a new SYN beyond the old connection's sequence
	 * space ends its TIME_WAIT early */
	if (c && c->state == ST_TIME_WAIT && (s.flags & (F_SYN | F_ACK | F_RST)) == F_SYN &&
	    SEQ_GT(s.seq, c->rcv_nxt)) {
		tcp_conn_free(c);
		c = 0;
	}
	if (c) {
		conn_input(c, &s);
		return;
	}

	const struct tcp_listener *l = 0;
	for (unsigned i = 0; i < NET_TCP_LISTENERS; i++)
		if (n->listeners[i].port && n->listeners[i].port == dport)
			l = &n->listeners[i];
	/* LISTEN (RFC 9293 3.10.7.2): a RST is ignored, an ACK answered with a
	 * RST, a SYN opens; anything else (no flags, FIN alone, SYN with FIN)
	 * is dropped, so a port scan cannot tell our listening ports from
	 * closed ones by what they answer to those. */
	if (l && !(s.flags & (F_ACK | F_RST))) {
		if ((s.flags & (F_SYN | F_FIN)) == F_SYN)
			passive_open(n, l, src, sport, s.seq, s.wnd, t + TCP_HLEN, hlen - TCP_HLEN);
		else
			n->stats.rx_dropped++;
		return;
	}
	if (l && (s.flags & (F_SYN | F_ACK | F_RST)) == F_ACK && cookie_open(n, l, src, sport, &s))
		return;
	/* closed port, or a stray segment for a connection we do not have */
	send_reset(n, src, dport, sport, s.seq, s.ack, s.flags, seglen);
}
