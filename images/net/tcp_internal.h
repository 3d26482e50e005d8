/*
 * tcp_internal.h - what tcp.c (segments in and out) and tcp_conn.c (the
 * connection table, timers and the app's API) share. Private to those two.
 */
#ifndef TCP_INTERNAL_H
#define TCP_INTERNAL_H

#include "net_internal.h"

static inline uint64_t mix64(uint64_t x)
{
	x ^= x >> 30;
	x *= 0xbf58476d1ce4e5b9ull;
	x ^= x >> 27;
	x *= 0x94d049bb133111ebull;
	x ^= x >> 31;
	return x;
}

enum {
	ST_FREE = 0,
	ST_SYN_RCVD,
	ST_ESTABLISHED,
	ST_CLOSE_WAIT,
	ST_LAST_ACK,
	ST_FIN_WAIT_1,
	ST_FIN_WAIT_2,
	ST_CLOSING,
	ST_TIME_WAIT,
};

#define F_FIN  0x01u
#define F_SYN  0x02u
#define F_RST  0x04u
#define F_PSH  0x08u
#define F_ACK  0x10u

/* connection flags */
#define C_APP       0x01u   /* the app owns it: callbacks go to the app */
#define C_FIN_QUEUED 0x02u  /* app closed: FIN follows the queued data */
#define C_ACK_NOW   0x04u   /* an ACK is owed and no segment has carried it yet */
#define C_WUPD      0x08u   /* we reopened a closed window and the peer has not
                               sent since: repeat the update on the timer, as a
                               lost update would leave the peer to its persist
                               timer (Linux backs that off to minutes) */

#define SEQ_LT(a, b)  ((int32_t)((a) - (b)) < 0)
#define SEQ_LEQ(a, b) ((int32_t)((a) - (b)) <= 0)
#define SEQ_GT(a, b)  ((int32_t)((a) - (b)) > 0)
#define SEQ_GEQ(a, b) ((int32_t)((a) - (b)) >= 0)

#define RTO_INIT_MS       1000u
#define RTO_MIN_MS        200u
#define RTO_MAX_MS        8000u
#define SYN_RETRIES       5u
#define DATA_RETRIES      8u
#define TIME_WAIT_NS      (10000 * MS)   /* short 2MSL; slots are recycled anyway */
#define FIN_WAIT_2_NS     (30000 * MS)   /* peer never closes: give up on it */
#define HALF_OPEN_STALE_NS (3000 * MS)   /* SYN-ACK sent twice, never answered: a
					    dead or flooding peer, not a slow one */
#define IDLE_EVICT_NS     (500 * MS)     /* no progress for this long: evictable when
					    the table is full (never a fresh connection) */
#define EVICT_AFTER_RETRIES 2u           /* ... and, with data in flight, sent again this
					    often (tcp_conn.c quiet()) */
#define DEFAULT_MSS       536u

/* tcp.c */
void tcp_conn_free(struct tcp_conn *c);
void tcp_set_state(struct tcp_conn *c, uint8_t st);
/* One segment of connection (lport, rip:rport); mss_opt != 0 adds the MSS option. */
int tcp_segment(struct net *n, uint32_t rip, uint16_t lport, uint16_t rport, uint32_t seq,
		uint32_t ack, uint8_t flags, uint16_t wnd, const uint8_t *data, size_t len,
		uint16_t mss_opt);
void tcp_send_ack(struct tcp_conn *c);
void tcp_arm_rtx(struct tcp_conn *c);
/* Send whatever the window allows: data from snd_nxt, then the FIN. */
void tcp_output(struct tcp_conn *c, bool probe);
/* The connection died under the app: tell it (once), then free the slot. */
void tcp_conn_abort(struct tcp_conn *c, enum tcp_abort_reason why);

/* tcp_conn.c */
struct tcp_conn *tcp_conn_lookup(struct net *n, uint32_t rip, uint16_t rport, uint16_t lport);
struct tcp_conn *tcp_conn_alloc(struct net *n, uint32_t rip, bool proven, bool *capped);
/* SYN cookies: our ISN for a SYN we keep no state for; the MSS a returned one
 * carries (0: not ours); the window its SYN-ACK advertises. */
uint32_t tcp_cookie_make(const struct net *n, uint32_t rip, uint16_t rport, uint16_t lport, uint32_t irs,
			 uint16_t mss);
uint16_t tcp_cookie_check(const struct net *n, uint32_t rip, uint16_t rport, uint16_t lport, uint32_t irs,
			  uint32_t iss);
uint16_t tcp_cookie_window(const struct tcp_listener *l);

#endif /* TCP_INTERNAL_H */
