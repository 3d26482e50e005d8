/*
 * xs.c - the guest half of the XenStore-style control plane (lightvm/store.py).
 *
 * When the command line has "lightvm.xs", the guest does at boot what a Xen
 * guest does through XenStore: it reads its configuration key by key (relative
 * paths, which the host relay scopes to /local/domain/<id>/) and does the
 * frontend half of the XenbusState handshake of its vif through the store:
 * Initialised, wait (a watch on the backend's state) for the backend to be
 * Connected, then Connected. Only then does start-up go on.
 *
 * The channel is COM2 (a second 16550, `-device isa-serial,iobase=0x2f8`) with a
 * unix socket chardev: the slim QEMU has no virtconsole, and a byte pipe is all
 * the xenstore wire protocol needs (Xen's own ring is a byte pipe too). Polled,
 * no interrupts. Every reply is bounds-checked; any failure is fatal.
 */
#include "base.h"

#define COM2 0x2f8
#define XS_READ 2
#define XS_WATCH 4
#define XS_WRITE 11
#define XS_WATCH_EVENT 15
#define XS_ERROR 16
#define XS_MAX 4096
#define XS_TIMEOUT_NS 2000000000ull  /* no byte for 2 s: the store is gone */

struct xs_hdr { uint32_t type, req_id, tx_id, len; };

static uint8_t xs_buf[XS_MAX + 1];
static uint32_t xs_req;

static void uart_put(uint8_t c)
{
	for (unsigned spin = 0; spin < 100000 && !(inb(COM2 + 5) & 0x20); spin++)
		cpu_pause();
	outb(COM2, c);
}

static uint8_t uart_get(void)
{
	if (inb(COM2 + 5) & 0x01)
		return inb(COM2);
	uint64_t deadline = clock_ns() + XS_TIMEOUT_NS;
	while (!(inb(COM2 + 5) & 0x01)) {
		if (clock_ns() > deadline)
			guest_fatal(NOXS_ERR_DEVICE, "xs: the store does not answer");
		cpu_pause();
	}
	return inb(COM2);
}

static void put_bytes(const void *p, size_t n)
{
	for (size_t i = 0; i < n; i++)
		uart_put(((const uint8_t *)p)[i]);
}

static void get_bytes(void *p, size_t n)
{
	for (size_t i = 0; i < n; i++)
		((uint8_t *)p)[i] = uart_get();
}

/* Read one message; its payload lands NUL-terminated in xs_buf. */
static uint32_t xs_recv(struct xs_hdr *h)
{
	get_bytes(h, sizeof(*h));
	if (h->len > XS_MAX)
		guest_fatal(NOXS_ERR_DEVICE, "xs: reply of %u bytes", h->len);
	get_bytes(xs_buf, h->len);
	xs_buf[h->len] = 0;
	return h->type;
}

/* One request (a: NUL-terminated, b: raw bytes appended); the reply's length.
 * Watch events arriving meanwhile are dropped: callers re-read what they watch. */
static uint32_t xs_call(uint32_t type, const char *a, const char *b, bool a_nul)
{
	size_t la = strlen(a) + (a_nul ? 1 : 0), lb = b ? strlen(b) : 0;
	struct xs_hdr h = { type, ++xs_req, 0, (uint32_t)(la + lb) };
	if (la + lb > XS_MAX)
		guest_fatal(NOXS_ERR_DEVICE, "xs: request too long");
	put_bytes(&h, sizeof(h));
	put_bytes(a, la);
	if (lb)
		put_bytes(b, lb);
	for (;;) {
		struct xs_hdr r;
		uint32_t t = xs_recv(&r);
		if (t == XS_WATCH_EVENT)
			continue;
		if (t == XS_ERROR)
			guest_fatal(NOXS_ERR_DEVICE, "xs: %s: %s", a, (const char *)xs_buf);
		if (t != type || r.req_id != xs_req)
			guest_fatal(NOXS_ERR_DEVICE, "xs: reply %u to request %u", t, type);
		return r.len;
	}
}

static const char *xs_read(const char *path)
{
	xs_call(XS_READ, path, 0, true);
	return (const char *)xs_buf;
}

static void xs_write(const char *path, const char *value)
{
	xs_call(XS_WRITE, path, value, true);
}

static void xs_copy(char *dst, size_t n, const char *path)
{
	const char *v = xs_read(path);
	size_t l = strnlen(v, n - 1);
	memcpy(dst, v, l);
	dst[l] = 0;
}

static bool has_flag(const char *cmdline, const char *flag)
{
	size_t n = strlen(flag);
	for (const char *p = cmdline; *p; p++)
		if ((p == cmdline || p[-1] == ' ') && !strncmp(p, flag, n) && (p[n] == 0 || p[n] == ' '))
			return true;
	return false;
}

/* Is the boot asking for the xenstore dance (lightvm.xs)? Scanned once: a shell's
 * guest asks at prepare time (noxs.c, rehearse), and its create finds the answer. */
bool xs_wanted(void)
{
	static int wanted = -1;
	if (wanted < 0)
		wanted = has_flag(boot_cmdline(), "lightvm.xs");
	return wanted;
}

void xs_boot(void)
{
	static const char *const keys[] = {
		"name", "domid", "vm", "memory/target", "memory/static-max",
		"console/port", "console/ring-ref", "store/port", "cpu/0/availability",
		"device/vif/0/mac", "device/vif/0/handle", "device/vif/0/backend-id",
	};
	char backend[96], state_path[112], watch[128];

	if (!xs_wanted())
		return;
	outb(COM2 + 1, 0x00);   /* no UART interrupts */
	outb(COM2 + 3, 0x03);   /* 8N1 */
	outb(COM2 + 2, 0x07);   /* FIFOs on: QEMU hands over up to 16 bytes per poll */
	for (unsigned i = 0; i < sizeof(keys) / sizeof(keys[0]); i++)
		xs_read(keys[i]);
	xs_copy(backend, sizeof(backend), "device/vif/0/backend");
	snprintf(state_path, sizeof(state_path), "%s/state", backend);
	xs_read(state_path);
	/* the frontend: Initialised, wait for the backend to connect, Connected */
	xs_write("device/vif/0/state", "3");
	size_t n = strlen(state_path);
	memcpy(watch, state_path, n + 1);
	memcpy(watch + n + 1, "fe", 3);
	struct xs_hdr h = { XS_WATCH, ++xs_req, 0, (uint32_t)(n + 4) };
	put_bytes(&h, sizeof(h));
	put_bytes(watch, n + 4);
	bool acked = false;
	for (;;) {
		struct xs_hdr r;
		uint32_t t = xs_recv(&r);
		if (t == XS_ERROR)
			guest_fatal(NOXS_ERR_DEVICE, "xs: watch %s: %s", state_path, (const char *)xs_buf);
		if (t == XS_WATCH && r.req_id == xs_req)
			acked = true;
		if (t != XS_WATCH_EVENT || !acked)
			continue;
		if (!strncmp(xs_read(state_path), "4", 2))
			break;
	}
	xs_write("device/vif/0/state", "4");
	console_puts("lightvm-guest: config read from the store\n");
}
