/* vCPU entry. The VMM sets RSP (this vCPU's stack top), RDI (vCPU index), RSI (hypercall page),
 * RDX (boot-info page) and jumps here in 64-bit mode. */
    .section .text.start, "ax"
    .globl _start
_start:
    xor %rbp, %rbp
    and $-16, %rsp
    call ks_rt_entry
1:  jmp 1b
    .section .note.GNU-stack, "", @progbits
