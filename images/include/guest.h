/*
 * guest.h - the API the guest base library gives to drivers and apps.
 *
 * The base (images/base/) owns the platform: PVH entry, long mode, the IDT,
 * the serial console, the clock, interrupts and idle, PCI, power, and the
 * NoXS front-end. Drivers (images/net/virtio_net.c) and apps (images/apps/)
 * use only what is declared here and in net.h. About twenty functions, on
 * purpose: keep it that small.
 *
 * Freestanding C11, no libc: the few libc-like helpers below are ours.
 */
#ifndef GUEST_H
#define GUEST_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "noxs_abi.h"

/* ---- libc-like helpers (base/lib.c) ---- */
void *memset(void *dst, int c, size_t n);
void *memcpy(void *dst, const void *src, size_t n);
void *memmove(void *dst, const void *src, size_t n);
int memcmp(const void *a, const void *b, size_t n);
size_t strlen(const char *s);
size_t strnlen(const char *s, size_t max);
int strncmp(const char *a, const char *b, size_t n);
/* printf subset: %c %s %d %i %u %x %X %p, with l/ll/z, width, '0' and '-'. */
int vsnprintf(char *buf, size_t size, const char *fmt, va_list ap);
int snprintf(char *buf, size_t size, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* ---- console (serial COM1) ---- */
void console_write(const char *s, size_t n);
int printf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* ---- time ---- */
uint64_t tsc_read(void);
uint64_t tsc_hz(void);
uint64_t clock_ns(void);      /* monotonic, ns since guest entry */
uint64_t wallclock_ns(void);  /* Unix epoch ns: NoXS host_time_ns + TSC delta,
                                 re-based when the page generation changes */

/* ---- interrupts and idle ---- */
typedef void (*irq_handler_t)(void *ctx);
/* Route IO-APIC input `gsi` (edge, active high) to `fn`. 0 on success. */
int irq_attach_gsi(unsigned gsi, irq_handler_t fn, void *ctx);
void irq_mask_gsi(unsigned gsi);
/* Allocate an IDT vector for `fn` (for MSI/MSI-X); returns the vector
 * (>= 32) or -1. msi_address()/msi_data() give what to program. */
int irq_alloc_vector(irq_handler_t fn, void *ctx);
uint64_t msi_address(void);
uint32_t msi_data(int vector);
/* Sleep (hlt) until an interrupt arrives or clock_ns() >= deadline_ns,
 * whichever is first; also services NoXS sysctl requests (a poweroff
 * request powers the guest off from here and never returns). */
void idle_until(uint64_t deadline_ns);

/* ---- boot information ---- */
const char *boot_cmdline(void);   /* PVH start_info command line, "" if none */

/* ---- PCI (ECAM on microvm pcie=on, port 0xCF8 on pc/q35) ---- */
struct pci_dev {
	uint8_t bus, slot, func;
	uint16_t vendor, device;
};
/* Find the n-th function with this vendor/device. 0 on success. */
int pci_find(uint16_t vendor, uint16_t device, unsigned n, struct pci_dev *out);
uint32_t pci_cfg_read32(const struct pci_dev *d, unsigned off);
void pci_cfg_write32(const struct pci_dev *d, unsigned off, uint32_t val);
uint16_t pci_cfg_read16(const struct pci_dev *d, unsigned off);
void pci_cfg_write16(const struct pci_dev *d, unsigned off, uint16_t val);
uint8_t pci_cfg_read8(const struct pci_dev *d, unsigned off);
/* Return the physical (= virtual, identity-mapped) address of memory BAR
 * `bar`, assigning one from the PCI window if firmware left it unset, and
 * enable memory decoding and bus mastering. *size gets its size. 0 on error. */
uint64_t pci_bar_map(const struct pci_dev *d, unsigned bar, uint64_t *size);

/* ---- virtio-mmio (microvm) ---- */
/* The n-th virtio-mmio device found on the command line
 * ("virtio_mmio.device=SIZE@ADDR:IRQ" entries that QEMU's microvm appends).
 * 0 on success. */
int virtio_mmio_find(unsigned n, uint64_t *base, unsigned *gsi);

/* ---- NoXS front-end ---- */
/* Validated snapshot of one vif's configuration (copied from the page). */
struct noxs_vif_info {
	unsigned id;
	uint8_t mac[6];      /* the vif's address: what the stack sends and answers as */
	uint8_t dev_mac[6];  /* the virtio-net device to use: dev_mac from the page, else mac */
	uint16_t mtu;
	uint8_t ip[4];
	uint8_t gateway[4];
	uint8_t prefix;
	volatile struct noxs_vif_ctrl *ctrl;  /* for fe_state and counters */
};
unsigned noxs_vif_count(void);
/* Bring vif's device up at a prepared shell's wait point (weak: the network apps'). */
void noxs_vif_prewarm(const struct noxs_vif_info *vif);
const struct noxs_vif_info *noxs_vif(unsigned i);
/* Validated snapshot of one vbd's configuration, read when asked. */
struct noxs_vbd_info {
	unsigned id;
	uint64_t sectors;
	uint32_t sector_size;
	bool read_only;
	volatile struct noxs_vbd_ctrl *ctrl;  /* for fe_state and counters */
};
unsigned noxs_vbd_count(void);
/* 0 on success; -1 if there is no vbd i or its page fails validation. */
int noxs_vbd(unsigned i, struct noxs_vbd_info *out);
/* Xenbus frontend state of a device's control page (bumps fe_events). */
void noxs_set_fe_state(volatile struct noxs_ctrl_hdr *hdr, uint32_t state);
/* Boot record milestones: record the TSC, set the state, print a line. */
void noxs_devices_up(void);
void noxs_ready(const char *app);
void noxs_count(uint64_t app_counter);
const volatile struct noxs_device_page *noxs_page(void);

/* ---- power and errors ---- */
/* Clean poweroff: devices Closed, boot record HALTED, "POWEROFF" on the
 * console, then QEMU exits. */
__attribute__((noreturn)) void guest_poweroff(void);
/* Fatal error: message on the console and in the boot record (ERROR, err),
 * then poweroff. Never returns, never touches memory it cannot trust. */
__attribute__((noreturn, format(printf, 2, 3)))
void guest_fatal(uint32_t err, const char *fmt, ...);

/* ---- the app ---- */
/* Called by the base once the platform and the NoXS page are up. */
void app_main(void);

#endif /* GUEST_H */
