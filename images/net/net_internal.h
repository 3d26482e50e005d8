/*
 * net_internal.h - shared by the portable stack sources only (not the
 * driver). No platform headers: the compiler builtins below become inline
 * code or calls to the memcpy/memset/memmove/memcmp that both the guest base
 * and a hosted libc provide.
 */
#ifndef NET_INTERNAL_H
#define NET_INTERNAL_H

#include "net.h"

#define n_memcpy  __builtin_memcpy
#define n_memset  __builtin_memset
#define n_memmove __builtin_memmove
#define n_memcmp  __builtin_memcmp

#define ETH_TYPE_IP   0x0800u
#define ETH_TYPE_ARP  0x0806u
#define IP_PROTO_ICMP 1u
#define IP_PROTO_TCP  6u
#define IP_PROTO_UDP  17u
#define IP_HLEN       20u
#define UDP_HLEN      8u
#define TCP_HLEN      20u
#define IP_TTL        64u

/* Offset of the IP payload in n->txbuf (no IP options on output). */
#define TX_L4         (NET_ETH_HLEN + IP_HLEN)

#define MS            1000000ull   /* ns per ms */

static inline uint16_t rd16(const uint8_t *p) { return (uint16_t)((p[0] << 8) | p[1]); }
static inline uint32_t rd32(const uint8_t *p)
{
	return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}
static inline void wr16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)(v >> 8); p[1] = (uint8_t)v; }
static inline void wr32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)(v >> 24); p[1] = (uint8_t)(v >> 16); p[2] = (uint8_t)(v >> 8); p[3] = (uint8_t)v;
}
static inline uint64_t min_u64(uint64_t a, uint64_t b) { return a < b ? a : b; }

/* One's-complement sum over a byte string, folded later. */
uint32_t net_csum_add(uint32_t sum, const uint8_t *p, size_t len);
uint16_t net_csum_fold(uint32_t sum);
/* Pseudo-header sum for TCP/UDP. */
uint32_t net_csum_pseudo(uint32_t src, uint32_t dst, uint8_t proto, uint16_t len);

/* eth.c */
int net_eth_send(struct net *n, const uint8_t dst_mac[6], uint16_t type, const uint8_t *frame, size_t len);
bool net_is_local_bcast(const struct net *n, uint32_t ip);
/* arp.c */
void net_arp_input(struct net *n, const uint8_t *pkt, size_t len);
/* Send frame (Ethernet header filled except the destination MAC) to the
 * next hop for dst_ip, resolving it first if needed. */
int net_arp_output(struct net *n, uint32_t dst_ip, uint8_t *frame, size_t len);
uint64_t net_arp_timers(struct net *n);
void net_arp_request(struct net *n, uint32_t target);
/* ip.c */
void net_ip_input(struct net *n, const uint8_t *pkt, size_t len);
/* Send n->txbuf[TX_L4 .. TX_L4+l4len) as an IPv4 datagram. */
int net_ip_output(struct net *n, uint32_t dst, uint8_t proto, size_t l4len);
/* tcp.c */
void net_tcp_input(struct net *n, uint32_t src, uint32_t dst, const uint8_t *seg, size_t len);
uint64_t net_tcp_timers(struct net *n);

#endif /* NET_INTERNAL_H */
