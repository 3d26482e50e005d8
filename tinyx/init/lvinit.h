/*
 * lvinit.h - the Tinyx init: PID 1 of a Linux guest on lightvm. It does for a
 * Linux guest what images/base/noxs.c does for a unikernel: find the NoXS page,
 * validate it (noxs-virtio/lib/noxs_validate.c), keep the boot record, bring up
 * the NICs the page describes, start the application from /etc/tinyx/app.conf,
 * say READY when it accepts connections, and act on the host's sysctl requests.
 *
 * The pieces that need no guest (app.conf parsing, page -> configuration) are in
 * their own files and reachable from the command line (--check-conf,
 * --dump-page), so the host's unit tests run the very code the guest runs.
 */
#ifndef LVINIT_H
#define LVINIT_H

#include <stddef.h>
#include <stdint.h>

#include "noxs_validate.h"

#define LV_CONF_PATH       "/etc/tinyx/app.conf"
#define LV_CONF_MAX_BYTES  65536u
#define LV_CONF_MAX_LINE   4096u
#define LV_CONF_MAX_ARGS   256u
#define LV_CONF_MAX_ENV    256u
#define LV_STOP_MAX_MS     600000u   /* stop_timeout_ms bound: 10 minutes */
#define LV_STOP_DEFAULT_MS 5000u
#define LV_ENV_DEFAULTS    3u        /* PATH, HOME, TERM */

/* isa-debug-exit values, as images/base/platform.c writes them: QEMU exits
 * with (value << 1) | 1, i.e. 1 for a clean poweroff and 3 for a fatal error. */
#define LV_EXIT_CLEAN 0u
#define LV_EXIT_FATAL 1u
#define LV_DEBUG_EXIT_PORT 0xf4u

/* ---- app.conf (appconf.c) ---- */

struct lv_app {
	char name[NOXS_APP_LEN];       /* NUL-terminated, 1..15 bytes */
	unsigned port;                 /* 0: READY as soon as the exec succeeded */
	unsigned stop_timeout_ms;
	unsigned prestart;             /* 1: a pool shell starts the app at its wait point */
	const char *cwd;               /* NULL: "/" */
	const char *probe_send;        /* NULL, or unescaped: the request a prestart rehearses */
	const char *probe_expect;      /* what its answer holds (non-empty) */
	unsigned argc, envc;
	char *argv[LV_CONF_MAX_ARGS + 1];  /* NULL-terminated; point into buf */
	char *env[LV_CONF_MAX_ENV + 1];    /* "KEY=VALUE" */
	char buf[LV_CONF_MAX_BYTES + 1];
};

/* Parse len bytes of app.conf text. 0, or -1 with a one-line err naming the line. */
int lv_conf_parse(struct lv_app *app, const char *text, size_t len, char *err, size_t errlen);
/* Read and parse a file. 0, or -1 with err. */
int lv_conf_load(struct lv_app *app, const char *path, char *err, size_t errlen);
/* The app's environment: its env= lines plus PATH, HOME=/ and TERM unless it
 * sets them. out must hold LV_CONF_MAX_ENV + LV_ENV_DEFAULTS + 1 pointers. */
void lv_conf_envp(const struct lv_app *app, char **out);

/* ---- the NoXS page (page.c) ---- */

struct lv_vif {
	uint32_t id, offset;           /* offset: of its control page in the region */
	uint8_t mac[6], ip[4], gateway[4], prefix;
	uint16_t mtu;
	uint8_t dev_mac[6];            /* the NIC's own MAC if not mac (a pooled shell's); else 0 */
};

struct lv_page {
	struct noxs_device_page snap;  /* the validated private copy */
	struct noxs_layout layout;
	struct lv_vif vif[NOXS_MAX_DEVICES];
	uint64_t tsc_at_read;
};

/* One consistent, validated read of region (bytes long) through the
 * generation seqlock, as images/base/noxs.c reads it; gives up after
 * timeout_ms of an odd or moving generation. 0, or -1 with err. */
int lv_page_read(const volatile uint8_t *region, uint64_t bytes, struct lv_page *out,
                 unsigned timeout_ms, char *err, size_t errlen);
uint64_t lv_page_generation(const volatile uint8_t *region);
/* The VM name as a hostname: 0 and out (NUL-terminated) if it is one, else -1. */
int lv_page_hostname(const struct lv_page *pg, char out[NOXS_NAME_LEN + 1]);
/* The page's TSC rate hint, 0 if it has none. */
uint64_t lv_page_tsc_hz(const struct lv_page *pg);
void lv_format_ip(const uint8_t ip[4], char out[16]);
void lv_format_mac(const uint8_t mac[6], char out[18]);
void lv_prefix_mask(unsigned prefix, uint8_t out[4]);

/* ---- the guest-written half of the page (record.c) ---- */

struct lv_noxs {
	volatile uint8_t *region;      /* NULL until the device is mapped */
	uint64_t bytes;
	struct lv_page page;
	volatile struct noxs_sysctl_ctrl *sys;  /* NULL until the page is valid */
};

void lv_rec_attach(struct lv_noxs *n);
void lv_rec_fe(volatile struct noxs_ctrl_hdr *hdr, uint32_t state);
volatile struct noxs_vif_ctrl *lv_rec_vif(struct lv_noxs *n, unsigned i);
void lv_rec_fe_devices(struct lv_noxs *n, uint32_t state);   /* every vif and vbd */
void lv_rec_state(struct lv_noxs *n, uint32_t state);
void lv_rec_booting(struct lv_noxs *n, const char *app, uint64_t tsc_entry, uint64_t tsc_hz,
                    uint32_t tsc_source);
void lv_rec_devices_up(struct lv_noxs *n, uint64_t tsc);
void lv_rec_ready(struct lv_noxs *n, const char *app, uint64_t tsc);
void lv_rec_error(struct lv_noxs *n, uint32_t code, const char *msg);
void lv_rec_heartbeat(struct lv_noxs *n);
void lv_rec_ack(struct lv_noxs *n, uint32_t bits);
uint32_t lv_rec_requests(struct lv_noxs *n);
uint32_t lv_rec_generation_seen(struct lv_noxs *n);
void lv_rec_generation(struct lv_noxs *n, uint64_t generation);

/* ---- NICs (netif.c) ---- */

/* 127.0.0.1/8 on lo, up. 0, or -1 with err. */
int lv_net_loopback(char *err, size_t errlen);
/* The interface whose MAC is mac, waiting up to timeout_ms for it to appear.
 * 0 and ifname, or -1. */
int lv_net_find(const uint8_t mac[6], char ifname[16], unsigned timeout_ms);
/* A pool shell's NIC at its wait point: the interface whose MAC is mac (waiting up to
 * timeout_ms), up without an address, so that the driver's open (and QEMU translating
 * it) is done before a create. 0 and ifname, or -1 with err. */
int lv_net_prewarm(const uint8_t mac[6], char ifname[16], unsigned timeout_ms, char *err, size_t errlen);
/* The vif's MAC (if the NIC was found by dev_mac), MTU, address/prefix, up,
 * default route via the gateway if non-zero; is_up: lv_net_prewarm did it already.
 * Announced by a gratuitous ARP (arp_notify). 0, or -1 with err. */
int lv_net_configure(const char *ifname, const struct lv_vif *vif, int is_up, char *err, size_t errlen);
/* An up NIC configured as ``was`` takes ``vif``'s address, gateway, MTU and MAC (a page
 * rewritten for a VM started from a snapshot). 0, or -1 with err. */
int lv_net_reconfigure(const char *ifname, const struct lv_vif *was, const struct lv_vif *vif, char *err,
                       size_t errlen);
/* A counter from /sys/class/net/IFNAME/statistics/ (0 if unreadable). */
uint64_t lv_net_stat(const char *ifname, const char *counter);

/* ---- the application (app.c) ---- */

/* fork + execve in a new session, stdin /dev/null, stdout/stderr inherited.
 * Returns the pid once the exec succeeded, or -1 with err. */
int lv_app_start(const struct lv_app *app, char *err, size_t errlen);
/* 1 if 127.0.0.1:port accepts a connection (within timeout_ms), else 0. */
int lv_app_accepts(unsigned port, unsigned timeout_ms);
/* One exchange with 127.0.0.1:port: send, then read until the answer holds expect,
 * EOF or timeout_ms. 1 if it did, else 0. */
int lv_app_rehearse(unsigned port, const char *send, const char *expect, unsigned timeout_ms);
/* "exited with status N" / "killed by signal N" for a waitpid status. */
void lv_app_describe(int status, char *out, size_t outlen);

/* ---- small helpers (util.c) ---- */

void lv_say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void lv_out(int fd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int lv_write_all(int fd, const void *buf, size_t len);
/* Read at most cap bytes of path into buf (NUL-terminated, so cap + 1 bytes
 * must fit). Bytes read, or -1 with errno. -2: the file has more than cap. */
long lv_read_file(const char *path, char *buf, size_t cap);
uint64_t lv_now_ns(void);
uint64_t lv_now_ms(void);
void lv_sleep_ms(unsigned ms);

static inline uint64_t lv_rdtsc(void)
{
	return __builtin_ia32_rdtsc();
}

#define lv_barrier() __asm__ volatile("" ::: "memory")

/* ---- the command-line modes (cli.c) ---- */

int lv_cli(int argc, char **argv);

#endif /* LVINIT_H */
