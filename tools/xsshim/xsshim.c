/*
 * xsshim: an LD_PRELOAD library that lets Debian's real C xenstored
 * (xen-utils-4.17, /usr/lib/xen-4.17/bin/xenstored) run on a host with no Xen
 * hypervisor, as the XenStore-style control-plane baseline of `lightvm bench boot`.
 *
 * Why a shim and not our own store: a real baseline beats a home-made one. The
 * daemon's store, transactions, watches, permissions and per-domain accounting
 * are all Xen's own code; only the hypervisor interfaces below are faked:
 *
 *  - libxenctrl:   xc_interface_open succeeds; xc_domain_getinfo reports every
 *                  domid below DOMID_FIRST_RESERVED as alive and running (lightvm,
 *                  not the hypervisor, decides when a domain goes: XS_RELEASE).
 *  - libxengnttab: mapping a domain's xenstore ring grant maps the shared file
 *                  $XSSHIM_DIR/ring-<domid> (one page, created zeroed): the host
 *                  relay (lightvm/bench/xenstore/guest.py) carries the guest's bytes through
 *                  it, so the daemon serves the guest as domain <domid> itself.
 *  - libxenevtchn: ports are numbers handed out in order. The event fd is the FIFO
 *                  $XSSHIM_DIR/evtchn: the relay writes a 4-byte port to wake the
 *                  daemon (it then scans every domain's ring, as it does in Xen).
 *                  notify(port) writes the port's 4-byte domid to the FIFO
 *                  $XSSHIM_DIR/notify for the relay. Without XSSHIM_DIR: a pipe
 *                  that never fires, anonymous ring pages.
 *  - /proc/xen/xsd_port and /proc/xen/xsd_kva (read by the daemon to introduce
 *    dom0) are redirected to files in $XSSHIM_DIR (written by lightvm/store.py).
 *
 *  - With XSSHIM_PDEATHSIG=1 the daemon gets SIGTERM when the process that started
 *    it dies (prctl PR_SET_PDEATHSIG), so a killed benchmark leaves no xenstored.
 *
 * Only the entry points that xenstored 4.17 imports are defined (nm -D).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <unistd.h>

#define DOMID_FIRST_RESERVED 0x7FF0U
#define PAGE 4096

__attribute__((constructor)) static void die_with_parent(void)
{
    const char *want = getenv("XSSHIM_PDEATHSIG");
    if (!want || strcmp(want, "1") != 0)
        return;
    pid_t parent = getppid();
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (getppid() != parent) /* the parent died before the prctl took effect */
        raise(SIGTERM);
}

/* ---- /proc/xen redirection ------------------------------------------------ */

static const char *redirect(const char *path, char *buf, size_t len)
{
    const char *dir = getenv("XSSHIM_DIR");
    if (!dir || !path || strncmp(path, "/proc/xen/", 10) != 0)
        return path;
    if (strcmp(path + 10, "xsd_port") != 0 && strcmp(path + 10, "xsd_kva") != 0)
        return path;
    snprintf(buf, len, "%s/%s", dir, path + 10);
    return buf;
}

typedef int (*open_fn)(const char *, int, ...);
typedef int (*openat_fn)(int, const char *, int, ...);

static int call_open(const char *sym, const char *path, int flags, va_list ap)
{
    char buf[4096];
    mode_t mode = (flags & (O_CREAT | O_TMPFILE)) ? va_arg(ap, mode_t) : 0;
    open_fn real = (open_fn)dlsym(RTLD_NEXT, sym);
    if (!real) {
        errno = ENOSYS;
        return -1;
    }
    return real(redirect(path, buf, sizeof(buf)), flags, mode);
}

int open(const char *path, int flags, ...)
{
    va_list ap;
    va_start(ap, flags);
    int fd = call_open("open", path, flags, ap);
    va_end(ap);
    return fd;
}

int open64(const char *path, int flags, ...)
{
    va_list ap;
    va_start(ap, flags);
    int fd = call_open("open64", path, flags, ap);
    va_end(ap);
    return fd;
}

int openat(int dirfd, const char *path, int flags, ...)
{
    char buf[4096];
    va_list ap;
    va_start(ap, flags);
    mode_t mode = (flags & (O_CREAT | O_TMPFILE)) ? va_arg(ap, mode_t) : 0;
    va_end(ap);
    openat_fn real = (openat_fn)dlsym(RTLD_NEXT, "openat");
    if (!real) {
        errno = ENOSYS;
        return -1;
    }
    return real(dirfd, redirect(path, buf, sizeof(buf)), flags, mode);
}

/* ---- libxenctrl ------------------------------------------------------------ */

static int dummy_handle;

void *xc_interface_open(void *logger, void *dombuild_logger, unsigned open_flags)
{
    (void)logger, (void)dombuild_logger, (void)open_flags;
    return &dummy_handle;
}

int xc_interface_close(void *xch)
{
    (void)xch;
    return 0;
}

/*
 * xc_dominfo_t starts with uint32_t domid, uint32_t ssidref, then a word of
 * bit-fields (dying, crashed, shutdown, paused, blocked, running, ...). The
 * daemon reads only domid and those flags, so only they are written: the
 * rest of the caller's struct is left alone (its full layout is not ours).
 */
int xc_domain_getinfo(void *xch, uint32_t first_domid, unsigned int max_doms, void *info)
{
    (void)xch;
    if (max_doms == 0 || first_domid >= DOMID_FIRST_RESERVED)
        return 0;
    uint32_t *words = info;
    words[0] = first_domid;
    words[1] = 0;
    words[2] = 1U << 5; /* running; not dying, crashed or shut down */
    return 1;
}

/* ---- libxengnttab ---------------------------------------------------------- */

void *xengnttab_open(void *logger, unsigned open_flags)
{
    (void)logger, (void)open_flags;
    return &dummy_handle;
}

int xengnttab_close(void *xgt)
{
    (void)xgt;
    return 0;
}

int xengnttab_set_max_grants(void *xgt, uint32_t nr_grants)
{
    (void)xgt, (void)nr_grants;
    return 0;
}

void *xengnttab_map_grant_ref(void *xgt, uint32_t domid, uint32_t ref, int prot)
{
    (void)xgt, (void)ref;
    const char *dir = getenv("XSSHIM_DIR");
    if (!dir) {
        void *p = mmap(NULL, PAGE, prot | PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        return p == MAP_FAILED ? NULL : p;
    }
    char path[4096];
    snprintf(path, sizeof(path), "%s/ring-%u", dir, domid);
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0)
        return NULL;
    void *p = MAP_FAILED;
    if (ftruncate(fd, PAGE) == 0)
        p = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    return p == MAP_FAILED ? NULL : p;
}

int xengnttab_unmap(void *xgt, void *start_address, uint32_t count)
{
    (void)xgt;
    return munmap(start_address, (size_t)count * PAGE);
}

/* ---- libxenevtchn ---------------------------------------------------------- */

static int evt_fd = -1, notify_fd = -1;
static int next_port = 1;
#define MAX_PORTS 65536
static uint32_t port_domid[MAX_PORTS]; /* local port -> domid + 1 (0: not a domain's) */

static int open_fifo(const char *dir, const char *name)
{
    char path[4096];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    if (mkfifo(path, 0600) < 0 && errno != EEXIST)
        return -1;
    /* O_RDWR: we hold both ends, so the FIFO never reads EOF nor blocks the relay's open */
    return open(path, O_RDWR | O_NONBLOCK | O_CLOEXEC);
}

static void *evt_open(void)
{
    if (evt_fd >= 0)
        return &evt_fd;
    const char *dir = getenv("XSSHIM_DIR");
    if (dir) {
        evt_fd = open_fifo(dir, "evtchn");
        notify_fd = open_fifo(dir, "notify");
        if (evt_fd < 0 || notify_fd < 0)
            return NULL;
    } else {
        int p[2];
        if (pipe2(p, O_CLOEXEC) < 0)
            return NULL;
        evt_fd = p[0]; /* the write end stays open and unused: never readable */
    }
    return &evt_fd;
}

void *xenevtchn_open(void *logger, unsigned open_flags)
{
    (void)logger, (void)open_flags;
    return evt_open();
}

void *xenevtchn_fdopen(void *logger, int fd, unsigned open_flags)
{
    (void)logger, (void)fd, (void)open_flags;
    return evt_open();
}

int xenevtchn_fd(void *xce)
{
    (void)xce;
    return evt_fd;
}

int xenevtchn_bind_interdomain(void *xce, uint32_t domid, uint32_t remote_port)
{
    (void)xce, (void)remote_port;
    if (next_port >= MAX_PORTS) {
        errno = ENOSPC;
        return -1;
    }
    port_domid[next_port] = domid + 1;
    return next_port++;
}

int xenevtchn_bind_virq(void *xce, unsigned int virq)
{
    (void)xce, (void)virq;
    return next_port++;
}

int xenevtchn_unbind(void *xce, uint32_t port)
{
    (void)xce;
    if (port < MAX_PORTS)
        port_domid[port] = 0;
    return 0;
}

int xenevtchn_notify(void *xce, uint32_t port)
{
    (void)xce;
    if (notify_fd >= 0 && port < MAX_PORTS && port_domid[port]) {
        uint32_t domid = port_domid[port] - 1;
        /* a full FIFO drops it: the relay also scans every ring when it wakes */
        if (write(notify_fd, &domid, sizeof(domid)) < 0 && errno != EAGAIN)
            return -1;
    }
    return 0;
}

/* Called only when the event fd is readable: one 4-byte port the relay wrote. */
int xenevtchn_pending(void *xce)
{
    (void)xce;
    uint32_t port;
    if (read(evt_fd, &port, sizeof(port)) != (ssize_t)sizeof(port)) {
        errno = EAGAIN;
        return -1;
    }
    return (int)port;
}

int xenevtchn_unmask(void *xce, uint32_t port)
{
    (void)xce, (void)port;
    return 0;
}
