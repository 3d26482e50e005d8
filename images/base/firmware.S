/*
 * firmware.S - lvfw, a minimal firmware for our PVH guests (QEMU -bios).
 *
 * `-M microvm,pcie=on` needs ACPI, and with ACPI microvm boots SeaBIOS
 * (bios-microvm.bin); under TCG it spends ~2.3 ms before the guest's first
 * instruction (qboot.rom is no faster). QEMU has already loaded the PVH ELF
 * into RAM (load_elfboot: rom blobs) and left the entry point and the
 * command line in fw_cfg, so a firmware for our guests only has to:
 *
 *   reset (real mode) -> flat 32-bit protected mode -> read FW_CFG_KERNEL_ENTRY
 *   and the command line from fw_cfg (ports 0x510/0x511) -> write an
 *   hvm_start_info (v1, no modules, no memory map) at 0x6000 with the command
 *   line at 0x6100 -> jump to the PVH entry with %ebx = start_info.
 *
 * It does no ACPI, no PCI, no e820: our guests need none of it (they size
 * and place BARs themselves). Not for Linux guests: use QEMU's default.
 * Linked at 0 and padded to 64 KiB; QEMU maps it at 0xffff0000 (and its
 * copy at 0xf0000), the CPU resets to 0xfffffff0 with CS.base 0xffff0000.
 */
#define FW_BASE        0xffff0000
#define FW_CFG_SEL     0x510
#define FW_CFG_DATA    0x511
#define FW_CFG_SIGNATURE     0x00
#define FW_CFG_RAM_SIZE      0x03
#define FW_CFG_KERNEL_ENTRY  0x10
#define FW_CFG_CMDLINE_SIZE  0x14
#define FW_CFG_CMDLINE_DATA  0x15
#define START_INFO     0x6000
#define CMDLINE        0x6100
#define CMDLINE_MAX    0x0f00
#define HVM_START_MAGIC 0x336ec578

	.code16
	.section .text, "ax"
	.globl fw_start16
fw_start16:
	cli
	cld
	lgdtl %cs:gdt_desc
	movl %cr0, %eax
	orl $1, %eax
	movl %eax, %cr0
	ljmpl $0x08, $(FW_BASE + fw_start32)

	.code32
fw_start32:
	movl $0x10, %eax
	movl %eax, %ds
	movl %eax, %es
	movl %eax, %ss
	movl %eax, %fs
	movl %eax, %gs

	/* fw_cfg present? ("QEMU" signature) */
	movw $FW_CFG_SIGNATURE, %ax
	movw $FW_CFG_SEL, %dx
	outw %ax, %dx
	call fw_cfg_read32
	cmpl $0x554d4551, %eax
	jne fail

	movw $FW_CFG_KERNEL_ENTRY, %ax
	movw $FW_CFG_SEL, %dx
	outw %ax, %dx
	call fw_cfg_read32
	testl %eax, %eax
	jz fail
	movl %eax, %ebp                 /* PVH entry */

	/* The kernel must have landed in RAM (with -m 1M QEMU silently drops
	 * the ELF loaded at 1 MiB and we would jump into nothing). */
	movw $FW_CFG_RAM_SIZE, %ax
	movw $FW_CFG_SEL, %dx
	outw %ax, %dx
	call fw_cfg_read32
	movl %eax, %esi                 /* low 32 bits of the RAM size */
	call fw_cfg_read32
	testl %eax, %eax
	jnz 4f                          /* >= 4 GiB: the entry is below it */
	cmpl %esi, %ebp
	jae fail_ram
4:

	movw $FW_CFG_CMDLINE_SIZE, %ax
	movw $FW_CFG_SEL, %dx
	outw %ax, %dx
	call fw_cfg_read32
	movl %eax, %ecx
	cmpl $CMDLINE_MAX - 1, %ecx
	jbe 1f
	movl $CMDLINE_MAX - 1, %ecx
1:	movw $FW_CFG_CMDLINE_DATA, %ax
	movw $FW_CFG_SEL, %dx
	outw %ax, %dx
	movl $CMDLINE, %edi
	movw $FW_CFG_DATA, %dx
	rep insb
	movb $0, (%edi)                 /* terminate, whatever fw_cfg said */

	/* struct hvm_start_info, version 1 */
	movl $START_INFO, %edi
	xorl %eax, %eax
	movl $16, %ecx
	rep stosl                       /* 64 bytes of zeros */
	movl $HVM_START_MAGIC, START_INFO + 0
	movl $1, START_INFO + 4         /* version */
	movl $CMDLINE, START_INFO + 24  /* cmdline_paddr (low half) */

	movl $START_INFO, %ebx
	xorl %eax, %eax
	jmp *%ebp

/* %eax = next 4 bytes of the selected fw_cfg item, little-endian */
fw_cfg_read32:
	movw $FW_CFG_DATA, %dx
	movl $4, %ecx
2:	inb %dx, %al
	rorl $8, %eax
	loop 2b
	ret

/* No kernel to run: say why on COM1, leave through isa-debug-exit
 * (QEMU exit status 3), else halt. */
fail_ram:
	movl $(FW_BASE + msg_ram), %esi
	jmp 5f
fail:
	movl $(FW_BASE + msg_nokernel), %esi
5:	movw $0x3f8, %dx
6:	lodsb
	testb %al, %al
	jz 7f
	outb %al, %dx
	jmp 6b
7:
	movw $0xf4, %dx
	movl $1, %eax
	outl %eax, %dx
3:	hlt
	jmp 3b

msg_ram:
	.asciz "FATAL: lvfw: the kernel entry point is not in RAM (more -m needed)\n"
msg_nokernel:
	.asciz "FATAL: lvfw: no PVH kernel in fw_cfg (use -kernel with a PVH ELF)\n"

	.p2align 3
gdt:
	.quad 0
	.quad 0x00cf9a000000ffff        /* 0x08 flat 32-bit code */
	.quad 0x00cf92000000ffff        /* 0x10 flat data */
gdt_end:
gdt_desc:
	.word gdt_end - gdt - 1
	.long FW_BASE + gdt

	/* The reset vector: 16 bytes below 4 GiB = offset 0xfff0 of the image. */
	.section .reset, "ax"
	.code16
reset_vector:
	jmp fw_start16
	.p2align 4, 0xf4
