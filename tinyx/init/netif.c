/*
 * netif.c - the NICs, from the NoXS vif pages, with the classic ioctls (no
 * netlink, no DHCP, no busybox ip): the interface whose MAC is the vif's gets
 * its MTU, IPv4 address and prefix, goes up, and the default route goes via the
 * gateway if the page has one. lo gets 127.0.0.1/8 (the app's readiness probe
 * connects there).
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <net/if.h>
#include <net/if_arp.h>
#include <net/route.h>
#include <netinet/in.h>
#include <netinet/ip_icmp.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include "lvinit.h"

#define NET "/sys/class/net"

static void set_sin(struct sockaddr *sa, const uint8_t ip[4])
{
	struct sockaddr_in sin;
	memset(&sin, 0, sizeof(sin));
	sin.sin_family = AF_INET;
	memcpy(&sin.sin_addr, ip, 4);
	memcpy(sa, &sin, sizeof(sin));
}

static int ioctl_on(int fd, unsigned long req, struct ifreq *ifr, const char *what,
                    const char *ifname, char *err, size_t errlen)
{
	if (ioctl(fd, req, ifr) == 0)
		return 0;
	snprintf(err, errlen, "%s: %s: %s", ifname, what, strerror(errno));
	return -1;
}

static int addr_up(int fd, const char *ifname, const uint8_t ip[4], unsigned prefix, unsigned mtu,
                   char *err, size_t errlen)
{
	struct ifreq ifr;
	static const uint8_t zero[4];
	memset(&ifr, 0, sizeof(ifr));
	snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "%s", ifname);
	if (mtu) {
		ifr.ifr_mtu = (int)mtu;
		if (ioctl_on(fd, SIOCSIFMTU, &ifr, "set MTU", ifname, err, errlen) != 0)
			return -1;
	}
	if (memcmp(ip, zero, 4) != 0) {   /* 0.0.0.0: the page gives no address; just up */
		uint8_t mask[4];
		set_sin(&ifr.ifr_addr, ip);
		if (ioctl_on(fd, SIOCSIFADDR, &ifr, "set address", ifname, err, errlen) != 0)
			return -1;
		lv_prefix_mask(prefix, mask);
		set_sin(&ifr.ifr_netmask, mask);
		if (ioctl_on(fd, SIOCSIFNETMASK, &ifr, "set netmask", ifname, err, errlen) != 0)
			return -1;
	}
	if (ioctl_on(fd, SIOCGIFFLAGS, &ifr, "get flags", ifname, err, errlen) != 0)
		return -1;
	ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
	return ioctl_on(fd, SIOCSIFFLAGS, &ifr, "bring up", ifname, err, errlen);
}

int lv_net_loopback(char *err, size_t errlen)
{
	static const uint8_t lo[4] = { 127, 0, 0, 1 };
	int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		snprintf(err, errlen, "socket(AF_INET): %s", strerror(errno));
		return -1;
	}
	int rc = addr_up(fd, "lo", lo, 8, 0, err, errlen);
	close(fd);
	return rc;
}

static int parse_mac(const char *s, uint8_t out[6])
{
	for (int i = 0; i < 6; i++) {
		unsigned v = 0;
		for (int k = 0; k < 2; k++, s++) {
			char c = *s;
			unsigned d;
			if (c >= '0' && c <= '9')
				d = (unsigned)(c - '0');
			else if (c >= 'a' && c <= 'f')
				d = (unsigned)(c - 'a' + 10);
			else if (c >= 'A' && c <= 'F')
				d = (unsigned)(c - 'A' + 10);
			else
				return -1;
			v = v * 16 + d;
		}
		out[i] = (uint8_t)v;
		if (i < 5 && *s++ != ':')
			return -1;
	}
	return 0;
}

static int find_once(const uint8_t mac[6], char ifname[16])
{
	DIR *d = opendir(NET);
	if (!d)
		return -1;
	struct dirent *e;
	int rc = -1;
	while (rc != 0 && (e = readdir(d)) != NULL) {
		char path[300], text[64];
		uint8_t have[6];
		if (e->d_name[0] == '.' || strlen(e->d_name) >= 16)
			continue;
		snprintf(path, sizeof(path), NET "/%s/address", e->d_name);
		if (lv_read_file(path, text, sizeof(text) - 1) < 17 || parse_mac(text, have) != 0)
			continue;
		if (memcmp(have, mac, 6) == 0) {
			memcpy(ifname, e->d_name, strlen(e->d_name) + 1);   /* < 16: checked above */
			rc = 0;
		}
	}
	closedir(d);
	return rc;
}

int lv_net_find(const uint8_t mac[6], char ifname[16], unsigned timeout_ms)
{
	/* virtio-net may still be probing when /init starts: poll for it. */
	uint64_t deadline = lv_now_ms() + timeout_ms;
	for (;;) {
		if (find_once(mac, ifname) == 0)
			return 0;
		if (lv_now_ms() >= deadline)
			return -1;
		lv_sleep_ms(5);
	}
}

static int default_route(int fd, const char *ifname, const uint8_t gw[4], char *err, size_t errlen)
{
	static const uint8_t any[4];
	struct rtentry rt;
	char dev[16];
	memset(&rt, 0, sizeof(rt));
	snprintf(dev, sizeof(dev), "%s", ifname);
	set_sin(&rt.rt_dst, any);
	set_sin(&rt.rt_genmask, any);
	set_sin(&rt.rt_gateway, gw);
	rt.rt_flags = RTF_UP | RTF_GATEWAY;
	rt.rt_dev = dev;
	if (ioctl(fd, SIOCADDRT, &rt) == 0 || errno == EEXIST)
		return 0;
	char g[16];
	lv_format_ip(gw, g);
	snprintf(err, errlen, "%s: default route via %s: %s", ifname, g, strerror(errno));
	return -1;
}

/* A pooled shell's NIC was made before the vif's MAC was known: the VM's MAC goes
 * on it here, while it is down. virtio-net then tells QEMU (VIRTIO_NET_CTRL_MAC_ADDR_SET)
 * or, without the control queue, keeps it as the address it sends from. */
static int set_mac(int fd, const char *ifname, const uint8_t mac[6], char *err, size_t errlen)
{
	struct ifreq ifr;
	memset(&ifr, 0, sizeof(ifr));
	snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "%s", ifname);
	ifr.ifr_hwaddr.sa_family = ARPHRD_ETHER;
	memcpy(ifr.ifr_hwaddr.sa_data, mac, 6);
	return ioctl_on(fd, SIOCSIFHWADDR, &ifr, "set MAC", ifname, err, errlen);
}

/* Gratuitous ARP on every interface when it goes up with an address and when its MAC
 * changes (net.ipv4.conf.all.arp_notify): the bridge, the host and QEMU's slirp (which
 * keeps an ARP table of the guest, filled by such an announcement) learn the VM's MAC
 * before the first client's packet, which otherwise waits for an ARP round trip. */
static void arp_notify(void)
{
	static int done;
	if (done++)
		return;
	int fd = open("/proc/sys/net/ipv4/conf/all/arp_notify", O_WRONLY | O_CLOEXEC);
	if (fd < 0 || write(fd, "1", 1) != 1)
		lv_say("arp_notify: %s (no announcement: first packets wait for ARP)", strerror(errno));
	if (fd >= 0)
		close(fd);
}

int lv_net_prewarm(const uint8_t mac[6], char ifname[16], unsigned timeout_ms, char *err, size_t errlen)
{
	static const uint8_t none[4];
	if (lv_net_find(mac, ifname, timeout_ms) != 0) {
		char m[18];
		lv_format_mac(mac, m);
		snprintf(err, errlen, "no network interface with MAC %s", m);
		return -1;
	}
	arp_notify();
	int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		snprintf(err, errlen, "socket(AF_INET): %s", strerror(errno));
		return -1;
	}
	int rc = addr_up(fd, ifname, none, 0, 0, err, errlen);
	close(fd);
	return rc;
}

/* One ICMP echo request to the gateway, not waited for: sending it makes the guest ARP
 * for the gateway, and that request teaches the host (or slirp) the VM's MAC and the
 * guest the host's, so the first client's SYN and the guest's SYN-ACK need no ARP round
 * trip (measured 1.5-43 ms under TCG before a pooled redis' first answer; docs/tinyx-bench.md).
 * Best effort: a failure costs only that round trip later. */
static void greet_gateway(const uint8_t gw[4])
{
	struct icmphdr echo = { .type = ICMP_ECHO };
	struct sockaddr_in to = { .sin_family = AF_INET };
	uint32_t sum = 0;
	echo.un.echo.id = htons(0x4c56);   /* "LV" */
	for (const uint16_t *w = (const uint16_t *)&echo; w < (const uint16_t *)(&echo + 1); w++)
		sum += *w;
	sum = (sum & 0xffff) + (sum >> 16);
	echo.checksum = (uint16_t)~(sum + (sum >> 16));
	memcpy(&to.sin_addr, gw, 4);
	int fd = socket(AF_INET, SOCK_RAW | SOCK_CLOEXEC, IPPROTO_ICMP);
	if (fd < 0)
		return;
	(void)sendto(fd, &echo, sizeof(echo), MSG_DONTWAIT, (struct sockaddr *)&to, sizeof(to));
	close(fd);
}

/* A rewritten page (a VM started from a snapshot) gives an up NIC another address, MAC,
 * gateway or MTU: the old default route goes first (its gateway may not be reachable
 * from the new address), then the NIC is configured as at boot, the MAC last (its
 * change is announced: arp_notify). ``was``: the config the NIC has now. */
int lv_net_reconfigure(const char *ifname, const struct lv_vif *was, const struct lv_vif *v, char *err,
                       size_t errlen)
{
	static const uint8_t zero[4];
	struct lv_vif now = *v;
	memcpy(now.dev_mac, was->mac, 6);   /* the NIC's MAC is the one it was given */
	if (memcmp(was->gateway, zero, 4) != 0 && memcmp(was->gateway, v->gateway, 4) != 0) {
		struct rtentry rt;
		char dev[16];
		int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
		memset(&rt, 0, sizeof(rt));
		snprintf(dev, sizeof(dev), "%s", ifname);
		set_sin(&rt.rt_dst, zero);
		set_sin(&rt.rt_genmask, zero);
		set_sin(&rt.rt_gateway, was->gateway);
		rt.rt_flags = RTF_UP | RTF_GATEWAY;
		rt.rt_dev = dev;
		if (fd >= 0) {
			(void)ioctl(fd, SIOCDELRT, &rt);   /* gone with the old address is fine */
			close(fd);
		}
	}
	return lv_net_configure(ifname, &now, 1, err, errlen);
}

int lv_net_configure(const char *ifname, const struct lv_vif *v, int is_up, char *err, size_t errlen)
{
	static const uint8_t zero[6];
	int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		snprintf(err, errlen, "socket(AF_INET): %s", strerror(errno));
		return -1;
	}
	arp_notify();
	int rc = 0, new_mac = memcmp(v->dev_mac, zero, 6) != 0 && memcmp(v->dev_mac, v->mac, 6) != 0;
	/* Down: the VM's MAC first, so the announcement at IFF_UP carries it. Already up
	 * (prewarmed at the wait point): the address first, so the MAC change announces it. */
	if (new_mac && !is_up)
		rc = set_mac(fd, ifname, v->mac, err, errlen);
	if (rc == 0)
		rc = addr_up(fd, ifname, v->ip, v->prefix, v->mtu, err, errlen);
	if (rc == 0 && memcmp(v->gateway, zero, 4) != 0)
		rc = default_route(fd, ifname, v->gateway, err, errlen);
	if (rc == 0 && new_mac && is_up)
		rc = set_mac(fd, ifname, v->mac, err, errlen);
	close(fd);
	if (rc == 0 && memcmp(v->gateway, zero, 4) != 0)
		greet_gateway(v->gateway);
	return rc;
}

uint64_t lv_net_stat(const char *ifname, const char *counter)
{
	char path[128], text[32];
	uint64_t v = 0;
	snprintf(path, sizeof(path), NET "/%s/statistics/%s", ifname, counter);
	if (lv_read_file(path, text, sizeof(text) - 1) <= 0)
		return 0;
	for (const char *p = text; *p >= '0' && *p <= '9'; p++)
		v = v * 10 + (uint64_t)(*p - '0');
	return v;
}
