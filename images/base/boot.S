/*
 * boot.S - PVH entry, long mode, and the interrupt entry stubs.
 *
 * QEMU loads the ELF and enters pvh_start32 in 32-bit protected mode with
 * paging off, %ebx = struct hvm_start_info. We record the TSC first (the
 * boot record's tsc_entry), build an identity map of the low 4 GiB with
 * 2 MiB pages (MMIO windows up to the LAPIC at 0xfee00000 included; the
 * top GiB is mapped uncached), enter long mode and call guest_start().
 */
#define XEN_ELFNOTE_PHYS32_ENTRY 18
#define SEL_CODE64 0x08
#define SEL_DATA   0x10
#define STACK_SIZE 16384

	.section .note.Xen, "a"
	.p2align 2
	.long 4                       /* namesz */
	.long 8                       /* descsz: ELF64 -> QEMU reads 8 bytes */
	.long XEN_ELFNOTE_PHYS32_ENTRY
	.asciz "Xen"
	.p2align 2
	.quad pvh_start32

	.section .text.boot, "ax"
	.code32
	.globl pvh_start32
pvh_start32:
	cli
	cld
	movl %ebx, %esi
	rdtsc
	movl %eax, boot_tsc_entry
	movl %edx, boot_tsc_entry + 4
	movl %esi, boot_start_info

	lgdt gdt_desc32

	/* zero .bss (page tables and stack live there); TCG runs each
	 * iteration of a rep string op separately: 4 bytes at a time */
	movl $__bss_start, %edi
	movl $__bss_end, %ecx
	subl %edi, %ecx
	shrl $2, %ecx
	xorl %eax, %eax
	rep stosl

	movl $pml4, %eax
	movl %eax, %cr3
	movl %cr4, %eax
	orl $(1 << 5), %eax           /* PAE */
	movl %eax, %cr4
	movl $0xc0000080, %ecx        /* EFER */
	rdmsr
	orl $(1 << 8), %eax           /* LME */
	wrmsr
	movl %cr0, %eax
	orl $0x80010001, %eax         /* PG | WP | PE */
	movl %eax, %cr0
	ljmp $SEL_CODE64, $start64

	.code64
start64:
	movl $SEL_DATA, %eax
	movl %eax, %ds
	movl %eax, %es
	movl %eax, %ss
	xorl %eax, %eax
	movl %eax, %fs
	movl %eax, %gs
	leaq boot_stack_top(%rip), %rsp
	lgdt gdt_desc64(%rip)
	call guest_start
3:	cli
	hlt
	jmp 3b

/*
 * idle_halt: called with IF=0. Halts unless an NMI doorbell is pending.
 * The NMI handler moves an NMI that lands inside [idle_window_start,
 * idle_window_end) to idle_window_end, so a doorbell rung between the
 * check and the hlt is never slept through.
 */
	.text
	.globl idle_halt, idle_window_start, idle_window_end
idle_halt:
idle_window_start:
	cmpb $0, nmi_pending(%rip)
	jne idle_window_end
	sti
	hlt
idle_window_end:
	sti
	ret

/* 256 entry stubs, 16 bytes apart: push a dummy error code where the CPU
 * pushes none, push the vector, jump to the common path. */
	.p2align 4
	.globl isr_stubs
isr_stubs:
	.set vec, 0
	.rept 256
	.p2align 4
	.if (vec == 8) || ((vec >= 10) && (vec <= 14)) || (vec == 17) || (vec == 21) || (vec == 29) || (vec == 30)
	.else
	pushq $0
	.endif
	pushq $vec
	jmp isr_common
	.set vec, vec + 1
	.endr

isr_common:
	pushq %rax
	pushq %rbx
	pushq %rcx
	pushq %rdx
	pushq %rsi
	pushq %rdi
	pushq %rbp
	pushq %r8
	pushq %r9
	pushq %r10
	pushq %r11
	pushq %r12
	pushq %r13
	pushq %r14
	pushq %r15
	movq %rsp, %rdi
	cld
	call trap_entry
	popq %r15
	popq %r14
	popq %r13
	popq %r12
	popq %r11
	popq %r10
	popq %r9
	popq %r8
	popq %rbp
	popq %rdi
	popq %rsi
	popq %rdx
	popq %rcx
	popq %rbx
	popq %rax
	addq $16, %rsp
	iretq

	.data
	.p2align 3
	.globl boot_tsc_entry, boot_start_info
boot_tsc_entry:  .quad 0
boot_start_info: .quad 0
gdt:
	.quad 0
	.quad 0x00af9a000000ffff      /* 0x08 64-bit code */
	.quad 0x00cf92000000ffff      /* 0x10 data */
gdt_end:
gdt_desc32:
	.word gdt_end - gdt - 1
	.long gdt
	.p2align 3
gdt_desc64:
	.word gdt_end - gdt - 1
	.quad gdt

/* The identity map of the low 4 GiB, 2 MiB pages, built by the assembler
 * (a loop filling 2048 entries costs ~40 us of TCG time at every boot).
 * 3 GiB and up is MMIO: mapped uncached. */
	.section .data.pagetables, "aw"
	.p2align 12
pml4:	.quad pdpt + 0x3
	.fill 511, 8, 0
pdpt:	.quad pd + 0x3, pd + 0x1003, pd + 0x2003, pd + 0x3003
	.fill 508, 8, 0
pd:
	.set i, 0
	.rept 2048
	.quad (i << 21) | 0x83 | ((i >= 1536) & 0x18)
	.set i, i + 1
	.endr

	.bss
	.p2align 4
boot_stack:
	.skip STACK_SIZE
	.globl boot_stack_top
boot_stack_top:

	.section .note.GNU-stack, "", @progbits
