/* Preloaded by scripts/hide_avx512.sh: hides AVX-512 from every CPUID the process executes, so
 * that each library picks the kernels it would pick on an AVX2-only CPU (the gemm crate and
 * adcorre's own loops, ONNX Runtime's MLAS, TensorFlow's oneDNN).
 *
 * Linux's CPUID faulting (arch_prctl ARCH_SET_CPUID, flag cpuid_fault in /proc/cpuinfo) makes
 * every CPUID instruction of this thread, and of the threads it starts, raise SIGSEGV; the
 * handler runs the instruction with faulting switched off for a moment, clears the AVX-512 bits
 * of leaf 7 and steps over it. Any other SIGSEGV gets the default action. Faulting ends at
 * execve, where this library is preloaded again. */
#define _GNU_SOURCE
#include <cpuid.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>

#define ARCH_SET_CPUID 0x1012

/* Leaf 7, subleaf 0: AVX512F, DQ, IFMA, PF, ER, CD, BW, VL (EBX); VBMI, VBMI2, VNNI, BITALG,
 * VPOPCNTDQ (ECX); 4VNNIW, 4FMAPS, VP2INTERSECT, FP16 (EDX). Subleaf 1: BF16 (EAX). */
static const uint32_t LEAF7_EBX = (1u << 16) | (1u << 17) | (1u << 21) | (1u << 26) | (1u << 27) | (1u << 28) | (1u << 30) | (1u << 31);
static const uint32_t LEAF7_ECX = (1u << 1) | (1u << 6) | (1u << 11) | (1u << 12) | (1u << 14);
static const uint32_t LEAF7_EDX = (1u << 2) | (1u << 3) | (1u << 8) | (1u << 23);
static const uint32_t LEAF7_1_EAX = 1u << 5;

static void on_segv(int sig, siginfo_t *info, void *context) {
    (void)sig;
    greg_t *regs = ((ucontext_t *)context)->uc_mcontext.gregs;
    const uint8_t *ip = (const uint8_t *)regs[REG_RIP];
    if (info->si_code != SI_KERNEL || ip[0] != 0x0f || ip[1] != 0xa2) {
        signal(SIGSEGV, SIG_DFL);
        return;
    }
    uint32_t leaf = (uint32_t)regs[REG_RAX], subleaf = (uint32_t)regs[REG_RCX], a, b, c, d;
    syscall(SYS_arch_prctl, ARCH_SET_CPUID, 1);
    __cpuid_count(leaf, subleaf, a, b, c, d);
    syscall(SYS_arch_prctl, ARCH_SET_CPUID, 0);
    if (leaf == 7 && subleaf == 0) {
        b &= ~LEAF7_EBX;
        c &= ~LEAF7_ECX;
        d &= ~LEAF7_EDX;
    } else if (leaf == 7 && subleaf == 1) {
        a &= ~LEAF7_1_EAX;
    }
    regs[REG_RAX] = a;
    regs[REG_RBX] = b;
    regs[REG_RCX] = c;
    regs[REG_RDX] = d;
    regs[REG_RIP] += 2;
}

__attribute__((constructor)) static void hide_avx512(void) {
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_sigaction = on_segv;
    action.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigaction(SIGSEGV, &action, NULL);
    if (syscall(SYS_arch_prctl, ARCH_SET_CPUID, 0) != 0) {
        static const char message[] = "hide_avx512: CPUID faulting is not available here\n";
        if (write(2, message, sizeof message - 1) < 0) {
        }
        _exit(3);
    }
}
