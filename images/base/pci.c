/*
 * pci.c - PCI configuration access and BAR mapping.
 *
 * `-M microvm,pcie=on` has ECAM at 0xe0000000 and no 0xCF8 ports, and no
 * firmware assigns BARs: pci_bar_map() sizes a BAR and places it in the
 * 32-bit window 0xc0000000-0xdfffffff. On pc/q35 SeaBIOS assigned the BARs
 * and port 0xCF8 works. We detect which by whether 0xCF8 latches a value.
 */
#include "base.h"

#define ECAM_BASE   0xe0000000ull
#define WINDOW_BASE 0xc0000000ull
#define WINDOW_END  0xe0000000ull
#define MAX_DEPTH   8

static int mode;                 /* 0 = not probed, 1 = port 0xCF8, 2 = ECAM */
static uint64_t window_next = WINDOW_BASE;

static inline void outw(uint16_t port, uint16_t v) { __asm__ volatile("outw %0, %1" : : "a"(v), "Nd"(port)); }
static inline uint16_t inw(uint16_t port)
{
	uint16_t v;
	__asm__ volatile("inw %1, %0" : "=a"(v) : "Nd"(port));
	return v;
}

static void probe(void)
{
	if (mode)
		return;
	uint32_t saved = inl(0xcf8);
	outl(0xcf8, 0x80000000u);
	mode = inl(0xcf8) == 0x80000000u ? 1 : 2;
	if (mode == 1)
		outl(0xcf8, saved);
}

static uint32_t cf8_addr(const struct pci_dev *d, unsigned off)
{
	return 0x80000000u | ((uint32_t)d->bus << 16) | ((uint32_t)(d->slot & 31) << 11) |
	       ((uint32_t)(d->func & 7) << 8) | (off & 0xfc);
}

static volatile void *ecam(const struct pci_dev *d, unsigned off)
{
	return (volatile void *)(uintptr_t)(ECAM_BASE + ((uint64_t)d->bus << 20) +
	                                    ((uint64_t)(d->slot & 31) << 15) +
	                                    ((uint64_t)(d->func & 7) << 12) + (off & 0xfff));
}

/* One config access of `size` bytes; always inlined into the boot path
 * (scan, bar_map): every call/return is a TCG block boundary, and each
 * block costs a few microseconds to translate on first use. */
#define INLINE static inline __attribute__((always_inline))

INLINE uint32_t cfg_read(const struct pci_dev *d, unsigned off, unsigned size)
{
	if (mode == 1) {
		outl(0xcf8, cf8_addr(d, off));
		uint16_t port = (uint16_t)(0xcfc + (off & 3));
		return size == 4 ? inl(port) : size == 2 ? inw(port) : inb(port);
	}
	volatile void *p = ecam(d, off);
	return size == 4 ? *(volatile uint32_t *)p : size == 2 ? *(volatile uint16_t *)p
	                                                         : *(volatile uint8_t *)p;
}

INLINE void cfg_write(const struct pci_dev *d, unsigned off, unsigned size, uint32_t val)
{
	if (mode == 1) {
		outl(0xcf8, cf8_addr(d, off));
		uint16_t port = (uint16_t)(0xcfc + (off & 3));
		if (size == 4)
			outl(port, val);
		else
			outw(port, (uint16_t)val);
		return;
	}
	volatile void *p = ecam(d, off);
	if (size == 4)
		*(volatile uint32_t *)p = val;
	else
		*(volatile uint16_t *)p = (uint16_t)val;
}

uint32_t pci_cfg_read32(const struct pci_dev *d, unsigned off)
{
	probe();
	return cfg_read(d, off & ~3u, 4);
}

void pci_cfg_write32(const struct pci_dev *d, unsigned off, uint32_t val)
{
	probe();
	cfg_write(d, off & ~3u, 4, val);
}

uint16_t pci_cfg_read16(const struct pci_dev *d, unsigned off)
{
	probe();
	return (uint16_t)cfg_read(d, off & ~1u, 2);
}

void pci_cfg_write16(const struct pci_dev *d, unsigned off, uint16_t val)
{
	probe();
	cfg_write(d, off & ~1u, 2, val);
}

uint8_t pci_cfg_read8(const struct pci_dev *d, unsigned off)
{
	probe();
	return (uint8_t)cfg_read(d, off, 1);
}

/* Depth-first scan from `bus`, following bridges that have a secondary bus
 * number (firmware-less microvm leaves bridges unnumbered: bus 0 only). */
static int scan(uint8_t bus, unsigned depth, uint16_t vendor, uint16_t device, unsigned *n,
                struct pci_dev *out)
{
	for (unsigned slot = 0; slot < 32; slot++) {
		struct pci_dev d = { bus, (uint8_t)slot, 0, 0, 0 };
		uint16_t v0 = (uint16_t)cfg_read(&d, 0, 2);
		if (v0 == 0xffff || v0 == 0)
			continue;
		unsigned nfunc = ((uint8_t)cfg_read(&d, 0x0e, 1) & 0x80) ? 8 : 1;
		for (unsigned f = 0; f < nfunc; f++) {
			d.func = (uint8_t)f;
			uint32_t id = cfg_read(&d, 0, 4);
			d.vendor = (uint16_t)id;
			d.device = (uint16_t)(id >> 16);
			if (d.vendor == 0xffff || d.vendor == 0)
				continue;
			if (d.vendor == vendor && d.device == device && (*n)-- == 0) {
				*out = d;
				return 0;
			}
			if (((uint8_t)cfg_read(&d, 0x0e, 1) & 0x7f) == 1 && depth < MAX_DEPTH) {
				uint8_t sec = (uint8_t)cfg_read(&d, 0x19, 1);
				if (sec > bus && scan(sec, depth + 1, vendor, device, n, out) == 0)
					return 0;
			}
		}
	}
	return -1;
}

int pci_find(uint16_t vendor, uint16_t device, unsigned n, struct pci_dev *out)
{
	probe();
	return scan(0, 0, vendor, device, &n, out);
}

static uint64_t bar_map(const struct pci_dev *d, unsigned bar, uint64_t *size, uint16_t enable)
{
	if (bar > 5)
		return 0;
	probe();
	unsigned off = 0x10 + 4 * bar;
	uint32_t lo = cfg_read(d, off, 4);
	if (lo & 1)
		return 0;                       /* an I/O BAR */
	bool is64 = ((lo >> 1) & 3) == 2;
	if (is64 && bar == 5)
		return 0;
	uint16_t cmd = (uint16_t)cfg_read(d, 4, 2);
	cfg_write(d, 4, 2, cmd & (uint16_t)~3u);    /* no decoding while sizing */

	cfg_write(d, off, 4, 0xffffffffu);
	uint32_t mlo = cfg_read(d, off, 4) & ~0xfu;
	cfg_write(d, off, 4, lo);
	uint32_t hi = 0, mhi = 0xffffffffu;
	if (is64) {
		hi = cfg_read(d, off + 4, 4);
		cfg_write(d, off + 4, 4, 0xffffffffu);
		mhi = cfg_read(d, off + 4, 4);
		cfg_write(d, off + 4, 4, hi);
	}
	uint64_t mask = ((uint64_t)mhi << 32) | mlo;
	uint64_t sz = ~mask + 1;
	if (!mlo || !sz || (sz & (sz - 1))) {
		cfg_write(d, 4, 2, cmd);
		return 0;                       /* no such BAR */
	}
	uint64_t addr = ((uint64_t)hi << 32) | (lo & ~0xfu);
	if (!addr || addr + sz > 0x100000000ull || addr + sz < addr) {
		/* Unassigned (no firmware), or beyond our 4 GiB identity map. */
		uint64_t align = sz < 4096 ? 4096 : sz;
		uint64_t a = (window_next + align - 1) & ~(align - 1);
		if (a + sz > WINDOW_END || a + sz < a) {
			cfg_write(d, 4, 2, cmd);
			return 0;
		}
		window_next = a + sz;
		addr = a;
		cfg_write(d, off, 4, (uint32_t)a | (lo & 0xfu));
		if (is64)
			cfg_write(d, off + 4, 4, 0);
	}
	cfg_write(d, 4, 2, cmd | enable);
	*size = sz;
	return addr;
}

uint64_t pci_bar_map(const struct pci_dev *d, unsigned bar, uint64_t *size)
{
	return bar_map(d, bar, size, 0x6);   /* memory decode + bus master */
}

/* For devices that never DMA (ivshmem): enabling bus mastering costs QEMU a
 * second memory-map rebuild (~0.2 ms under TCG) for nothing. */
uint64_t pci_bar_map_nodma(const struct pci_dev *d, unsigned bar, uint64_t *size)
{
	return bar_map(d, bar, size, 0x2);
}
