/*
 * trap.c - the IDT: CPU exceptions (dump and die), the NMI doorbell, and
 * dispatch of device vectors to the handlers drivers registered.
 */
#include "base.h"

struct idt_entry {
	uint16_t off_lo, sel;
	uint8_t ist, type;
	uint16_t off_mid;
	uint32_t off_hi, zero;
} __attribute__((packed));

static struct idt_entry idt[256] __attribute__((aligned(16)));

struct vec_handler {
	irq_handler_t fn;
	void *ctx;
};
static struct vec_handler handlers[256];
static unsigned next_vector = 0x30;

volatile uint8_t nmi_pending;
volatile uint64_t irq_seq;   /* bumped by every device interrupt */

static const char *const exc_names[32] = {
	"divide error", "debug", "NMI", "breakpoint", "overflow", "bound range",
	"invalid opcode", "device not available", "double fault", "coprocessor overrun",
	"invalid TSS", "segment not present", "stack fault", "general protection",
	"page fault", "reserved", "x87 FP", "alignment check", "machine check",
	"SIMD FP", "virtualization", "control protection",
};

void trap_init(void)
{
	uint64_t base = (uintptr_t)isr_stubs;
	for (unsigned v = 0; v < 256; v++) {
		uint64_t a = base + 16u * v;
		idt[v] = (struct idt_entry){
			.off_lo = (uint16_t)a, .sel = 0x08, .ist = 0,
			.type = 0x8e,  /* present, ring 0, 64-bit interrupt gate */
			.off_mid = (uint16_t)(a >> 16), .off_hi = (uint32_t)(a >> 32),
		};
	}
	struct {
		uint16_t limit;
		uint64_t base;
	} __attribute__((packed)) desc = { sizeof(idt) - 1, (uintptr_t)idt };
	__asm__ volatile("lidt %0" : : "m"(desc));
}

int irq_alloc_vector(irq_handler_t fn, void *ctx)
{
	if (!fn)
		return -1;
	uint64_t flags;
	__asm__ volatile("pushfq; popq %0; cli" : "=r"(flags) : : "memory");
	int v = -1;
	if (next_vector < SPURIOUS_VECTOR) {
		v = (int)next_vector++;
		handlers[v] = (struct vec_handler){ fn, ctx };
	}
	if (flags & (1u << 9))
		cpu_sti();
	return v;
}

static void dump_and_die(const struct trap_frame *f)
{
	unsigned v = (unsigned)f->vector;
	const char *name = v < 32 && exc_names[v] ? exc_names[v] : "reserved";
	typedef unsigned long long ull;
	/* printf formats into 256 bytes: one call per line */
	printf("exception %u (%s) error=0x%llx cr2=%016llx\n", v, name, (ull)f->error, (ull)read_cr2());
	printf(" rip=%016llx cs=%llx rflags=%016llx rsp=%016llx ss=%llx\n", (ull)f->rip, (ull)f->cs,
	       (ull)f->rflags, (ull)f->rsp, (ull)f->ss);
	printf(" rax=%016llx rbx=%016llx rcx=%016llx rdx=%016llx\n", (ull)f->rax, (ull)f->rbx,
	       (ull)f->rcx, (ull)f->rdx);
	printf(" rsi=%016llx rdi=%016llx rbp=%016llx r8 =%016llx\n", (ull)f->rsi, (ull)f->rdi,
	       (ull)f->rbp, (ull)f->r8);
	printf(" r9 =%016llx r10=%016llx r11=%016llx r12=%016llx\n", (ull)f->r9, (ull)f->r10,
	       (ull)f->r11, (ull)f->r12);
	printf(" r13=%016llx r14=%016llx r15=%016llx\n", (ull)f->r13, (ull)f->r14, (ull)f->r15);
	guest_fatal(NOXS_ERR_EXCEPTION, "exception %u (%s) at rip=0x%llx error=0x%llx", v, name,
	            (ull)f->rip, (ull)f->error);
}

void trap_entry(struct trap_frame *f)
{
	unsigned v = (unsigned)f->vector;
	if (v == 2) {
		/* NMI doorbell: note it, and never let idle_halt sleep through it. */
		nmi_pending = 1;
		noxs_heartbeat();
		if (f->rip >= (uintptr_t)idle_window_start && f->rip < (uintptr_t)idle_window_end)
			f->rip = (uintptr_t)idle_window_end;
		return;
	}
	if (v < 32)
		dump_and_die(f);
	if (v == SPURIOUS_VECTOR)
		return;
	noxs_heartbeat();
	if (v != TIMER_VECTOR) {   /* the timer only ends an idle_until() sleep */
		irq_seq++;
		if (handlers[v].fn)
			handlers[v].fn(handlers[v].ctx);
	}
	apic_eoi();
}
