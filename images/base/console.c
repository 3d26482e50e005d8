/*
 * console.c - COM1 serial output. Every byte is an I/O exit, so the fast
 * path prints as little as possible.
 */
#include "base.h"

#define COM1 0x3f8

void console_init(void)
{
	outb(COM1 + 1, 0x00);   /* no UART interrupts */
	outb(COM1 + 3, 0x03);   /* 8N1 */
}

/*
 * The console bell (NOXS_FEAT_CONSOLE_BELL): a prepared shell's guest sleeps at its
 * wait point until the host writes a byte to the console's input. The handler only
 * drains the receiver: waking from hlt is the point.
 */
#define COM1_GSI 4   /* ISA IRQ 4, identity-mapped on the first IO-APIC */

static void bell_rang(void *ctx)
{
	(void)ctx;
	for (unsigned n = 0; n < 64 && (inb(COM1 + 5) & 0x01); n++)
		(void)inb(COM1);
}

bool console_bell_on(void)
{
	if (apic_ioapic_count() == 0 || irq_attach_gsi(COM1_GSI, bell_rang, NULL) != 0)
		return false;
	bell_rang(NULL);        /* nothing stale */
	outb(COM1 + 4, 0x08);   /* MCR OUT2: gates the UART's interrupt line on a PC */
	outb(COM1 + 1, 0x01);   /* IER: received data available */
	return true;
}

void console_bell_off(void)
{
	outb(COM1 + 1, 0x00);
	irq_mask_gsi(COM1_GSI);
	bell_rang(NULL);
}

static void serial_putc(char c)
{
	/* QEMU's UART is always ready; bound the wait for a real one. */
	for (unsigned spin = 0; spin < 100000 && !(inb(COM1 + 5) & 0x20); spin++)
		cpu_pause();
	outb(COM1, (uint8_t)c);
}

void console_write(const char *s, size_t n)
{
	/* "\n" only, no "\r": fewer exits, and exact lines for the host's grep. */
	for (size_t i = 0; i < n; i++)
		serial_putc(s[i]);
}

void console_puts(const char *s)
{
	console_write(s, strlen(s));
}

int printf(const char *fmt, ...)
{
	char buf[256];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	console_write(buf, n < (int)sizeof(buf) ? (size_t)n : sizeof(buf) - 1);
	return n;
}
