/*
 * platform.c - boot information (PVH start_info), virtio-mmio discovery,
 * the C entry point, power off and fatal errors.
 */
#include "base.h"

#define HVM_START_MAGIC 0x336ec578u
#define CMDLINE_MAX 2048

struct hvm_start_info {
	uint32_t magic, version, flags, nr_modules;
	uint64_t modlist_paddr, cmdline_paddr, rsdp_paddr;
};

static char cmdline[CMDLINE_MAX];

/* Copy the command line out of start_info (bounded: we trust no length). */
void cmdline_init(void)
{
	uint64_t si_addr = boot_start_info;
	if (!si_addr || si_addr >= 0x100000000ull - sizeof(struct hvm_start_info))
		return;
	const struct hvm_start_info *si = (const void *)(uintptr_t)si_addr;
	if (si->magic != HVM_START_MAGIC || !si->cmdline_paddr ||
	    si->cmdline_paddr >= 0x100000000ull - CMDLINE_MAX)
		return;
	const char *src = (const char *)(uintptr_t)si->cmdline_paddr;
	size_t n = strnlen(src, CMDLINE_MAX - 1);
	memcpy(cmdline, src, n);
	cmdline[n] = '\0';
}

const char *boot_cmdline(void)
{
	return cmdline;
}

/* ---- virtio-mmio: "virtio_mmio.device=SIZE@ADDR:IRQ[:ID]" ---- */

static bool parse_num(const char **p, uint64_t *out)
{
	const char *s = *p;
	uint64_t v = 0;
	unsigned base = 10;
	if (s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) {
		base = 16;
		s += 2;
	}
	const char *start = s;
	for (;; s++) {
		unsigned d;
		if (*s >= '0' && *s <= '9')
			d = (unsigned)(*s - '0');
		else if (base == 16 && *s >= 'a' && *s <= 'f')
			d = (unsigned)(*s - 'a' + 10);
		else if (base == 16 && *s >= 'A' && *s <= 'F')
			d = (unsigned)(*s - 'A' + 10);
		else
			break;
		if (v > (UINT64_MAX - d) / base)
			return false;
		v = v * base + d;
	}
	if (s == start)
		return false;
	*p = s;
	*out = v;
	return true;
}

static int virtio_mmio_from_cmdline(unsigned n, uint64_t *base, unsigned *gsi)
{
	static const char key[] = "virtio_mmio.device=";
	const size_t klen = sizeof(key) - 1;
	unsigned found = 0;
	for (const char *p = cmdline; *p;) {
		while (*p == ' ')
			p++;
		const char *word = p;
		while (*p && *p != ' ')
			p++;
		if ((size_t)(p - word) <= klen || strncmp(word, key, klen) != 0)
			continue;
		const char *s = word + klen;
		uint64_t size, addr, irq;
		if (!parse_num(&s, &size))
			continue;
		if (*s == 'K' || *s == 'k')
			size <<= 10, s++;
		else if (*s == 'M' || *s == 'm')
			size <<= 20, s++;
		if (*s++ != '@' || !parse_num(&s, &addr) || *s++ != ':' || !parse_num(&s, &irq))
			continue;
		/* Only what our identity map covers, and a sane IRQ. */
		if (size < 0x100 || addr >= 0x100000000ull || addr + size > 0x100000000ull || irq > 255)
			continue;
		if (found++ == n) {
			*base = addr;
			*gsi = (unsigned)irq;
			return 0;
		}
	}
	return found ? -1 : -2;   /* -2: the command line names no device at all */
}

/*
 * QEMU 7.2's microvm appends "virtio_mmio.device=512@ADDR:IRQ" to the
 * command line only when its ACPI is off, and `pcie=on` (which NoXS needs)
 * requires ACPI. With ACPI on, the transports are described in the DSDT
 * only; their layout is fixed by hw/i386/microvm.c: 512-byte transports
 * from 0xfeb00000, 24 of them on GSI 24.. when the second IO-APIC exists
 * (ioapic2=auto, the default), else 8 on GSI 16... We probe that layout
 * (magic "virt", DeviceID != 0: an empty transport reads DeviceID 0).
 */
#define VIRTIO_MMIO_BASE  0xfeb00000ull
#define VIRTIO_MMIO_MAGIC 0x74726976u

int virtio_mmio_find(unsigned n, uint64_t *base, unsigned *gsi)
{
	int rc = virtio_mmio_from_cmdline(n, base, gsi);
	if (rc != -2)
		return rc;
	bool two = apic_ioapic_count() > 1;
	unsigned transports = two ? 24 : 8, irq_base = two ? 24 : 16, found = 0;
	for (unsigned i = 0; i < transports; i++) {
		uint64_t a = VIRTIO_MMIO_BASE + 512ull * i;
		if (mmio_read32(a) != VIRTIO_MMIO_MAGIC || mmio_read32(a + 8) == 0)
			continue;
		if (found++ == n) {
			*base = a;
			*gsi = irq_base + i;
			return 0;
		}
	}
	return -1;
}

/* ---- power ---- */

/* isa-debug-exit at 0xf4: QEMU exits with status (value << 1) | 1. If the
 * device is missing, a triple fault ends the VM (QEMU runs -no-reboot). */
void power_exit(unsigned code)
{
	cpu_cli();
	outl(0xf4, code);
	struct {
		uint16_t limit;
		uint64_t base;
	} __attribute__((packed)) none = { 0, 0 };
	__asm__ volatile("lidt %0; int3" : : "m"(none));
	for (;;)
		__asm__ volatile("hlt");
}

void guest_poweroff(void)
{
	cpu_cli();
	noxs_set_stopping();
	noxs_close_all();
	noxs_set_halted();
	console_puts("POWEROFF\n");
	power_exit(0);   /* QEMU exit status 1 */
}

void guest_fatal(uint32_t err, const char *fmt, ...)
{
	static volatile int in_fatal;
	cpu_cli();
	if (in_fatal++)
		power_exit(1);   /* fatal while failing: do not trust anything */
	char msg[160];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	console_puts("FATAL: ");
	console_puts(msg);
	console_puts("\n");
	noxs_fatal_record(err, msg);
	power_exit(1);   /* QEMU exit status 3 */
}

/* ---- entry ---- */

void guest_start(void);
void xs_boot(void);   /* xs.c: config from the store when the cmdline says lightvm.xs */
void guest_start(void)
{
	console_init();
	console_puts("lightvm-guest: ");
	console_puts(guest_app_name);
	console_puts(" booting\n");
	trap_init();
	cmdline_init();
	apic_init();
	noxs_init();
	clock_init();
	noxs_clock_ready();
	xs_boot();
	cpu_sti();
	app_main();
	guest_poweroff();
}
