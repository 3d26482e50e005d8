/*
 * base.h - internals shared by the files of the base library (not for apps).
 */
#ifndef BASE_H
#define BASE_H

#include "guest.h"

/* ---- CPU primitives ---- */
static inline void outb(uint16_t port, uint8_t v) { __asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port)); }
static inline void outl(uint16_t port, uint32_t v) { __asm__ volatile("outl %0, %1" : : "a"(v), "Nd"(port)); }
static inline uint8_t inb(uint16_t port)
{
	uint8_t v;
	__asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port));
	return v;
}
static inline uint32_t inl(uint16_t port)
{
	uint32_t v;
	__asm__ volatile("inl %1, %0" : "=a"(v) : "Nd"(port));
	return v;
}
static inline void cpu_cli(void) { __asm__ volatile("cli" ::: "memory"); }
static inline void cpu_sti(void) { __asm__ volatile("sti" ::: "memory"); }
static inline void cpu_pause(void) { __asm__ volatile("pause" ::: "memory"); }
static inline void barrier(void) { __asm__ volatile("" ::: "memory"); }
static inline void cpuid(uint32_t leaf, uint32_t sub, uint32_t r[4])
{
	__asm__ volatile("cpuid" : "=a"(r[0]), "=b"(r[1]), "=c"(r[2]), "=d"(r[3]) : "a"(leaf), "c"(sub));
}
static inline uint64_t read_cr2(void)
{
	uint64_t v;
	__asm__ volatile("mov %%cr2, %0" : "=r"(v));
	return v;
}
static inline uint32_t mmio_read32(uint64_t addr) { return *(volatile uint32_t *)(uintptr_t)addr; }
static inline void mmio_write32(uint64_t addr, uint32_t v) { *(volatile uint32_t *)(uintptr_t)addr = v; }

/* ---- boot.S ---- */
extern uint64_t boot_tsc_entry;
extern uint64_t boot_start_info;
extern const char isr_stubs[];
extern volatile uint8_t nmi_pending;
void idle_halt(void);
extern const char idle_window_start[], idle_window_end[];

/* The register frame isr_common builds. */
struct trap_frame {
	uint64_t r15, r14, r13, r12, r11, r10, r9, r8;
	uint64_t rbp, rdi, rsi, rdx, rcx, rbx, rax;
	uint64_t vector, error;
	uint64_t rip, cs, rflags, rsp, ss;
};
void trap_entry(struct trap_frame *f);

/* ---- per-file init and internals ---- */
extern const char guest_app_name[];
void console_init(void);
void console_puts(const char *s);
bool console_bell_on(void);   /* false: no IO-APIC, spin instead */
void console_bell_off(void);
void trap_init(void);
void apic_init(void);
void apic_timer_arm(uint64_t ns);
void apic_timer_stop(void);
void apic_eoi(void);
unsigned apic_ioapic_count(void);
void clock_init(void);
void clock_pit_quiesce(void);
uint32_t clock_source(void);
void clock_rebase_wall(uint64_t host_time_ns, uint64_t tsc);
void cmdline_init(void);
void noxs_init(void);
bool xs_wanted(void);   /* xs.c */
uint64_t pci_bar_map_nodma(const struct pci_dev *d, unsigned bar, uint64_t *size);
void noxs_service(void);
void noxs_follow(void);   /* a new page generation: re-base the wall clock */
uint64_t noxs_tsc_hint(void);
void noxs_clock_ready(void);
void noxs_heartbeat(void);
bool noxs_doorbell(void);
void noxs_fatal_record(uint32_t err, const char *msg);
void noxs_close_all(void);
void noxs_set_stopping(void);
void noxs_set_halted(void);
__attribute__((noreturn)) void power_exit(unsigned code);

#define TIMER_VECTOR    0x20
#define SPURIOUS_VECTOR 0xff

#endif /* BASE_H */
