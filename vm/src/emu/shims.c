/* Variadic KPIs of the emulated kernel (printf, IOLog, snprintf...), which Rust
 * cannot define. Each formats with the host's vsnprintf (the kernel's formats
 * used by kexts — %s %d %u %x %p %ll… %zu %c — mean the same there) and hands
 * the text to the emulator's log. Built by vm/build.rs with the cc crate.
 * macOS x86_64 and Linux x86_64 share the System V ABI, including for varargs. */
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>

/* Defined in Rust (vm::emu::abi): appends formatted text to the run's log. */
extern void prx_emu_log_text(const char *text, size_t len, int source);

static int emit(int source, const char *fmt, va_list ap) {
    char buf[1024];
    int n = vsnprintf(buf, sizeof buf, fmt, ap);
    if (n < 0) {
        return n;
    }
    size_t len = (size_t)n < sizeof buf ? (size_t)n : sizeof buf - 1;
    prx_emu_log_text(buf, len, source);
    return n;
}

#if defined(__aarch64__)
/* Darwin arm64 (the arm64e kext's caller) passes every variadic argument on the
 * stack, in 8-byte slots, and its va_list is a plain pointer to those slots;
 * AAPCS64 on Linux passes them in x1..x7 first and uses a five-field va_list.
 * Naming all eight argument registers leaves va_start's __gr_offs at 0, so
 * va_arg reads the caller's stack slots — Darwin's layout (kernel formats take
 * integers and pointers only; no floating point in the kernel). A Darwin
 * va_list becomes a Linux one with no register area left. */
#define DARWIN_VA(ap, p)                                                       \
    do {                                                                       \
        (ap).__stack = (p);                                                    \
        (ap).__gr_top = 0;                                                     \
        (ap).__vr_top = 0;                                                     \
        (ap).__gr_offs = 0;                                                    \
        (ap).__vr_offs = 0;                                                    \
    } while (0)

int prx_emu_printf(const char *fmt, long r1, long r2, long r3, long r4, long r5,
                   long r6, long r7, ...) {
    (void)r1, (void)r2, (void)r3, (void)r4, (void)r5, (void)r6;
    va_list ap;
    va_start(ap, r7);
    int n = emit(0, fmt, ap);
    va_end(ap);
    return n;
}

void prx_emu_IOLog(const char *fmt, long r1, long r2, long r3, long r4, long r5,
                   long r6, long r7, ...) {
    (void)r1, (void)r2, (void)r3, (void)r4, (void)r5, (void)r6;
    va_list ap;
    va_start(ap, r7);
    emit(1, fmt, ap);
    va_end(ap);
}

void prx_emu_IOLogv(const char *fmt, void *darwin_ap) {
    va_list ap;
    DARWIN_VA(ap, darwin_ap);
    emit(1, fmt, ap);
}

int prx_emu_vprintf(const char *fmt, void *darwin_ap) {
    va_list ap;
    DARWIN_VA(ap, darwin_ap);
    return emit(0, fmt, ap);
}

int prx_emu_snprintf(char *out, size_t size, const char *fmt, long r3, long r4,
                     long r5, long r6, long r7, ...) {
    (void)r3, (void)r4, (void)r5, (void)r6;
    va_list ap;
    va_start(ap, r7);
    int n = vsnprintf(out, size, fmt, ap);
    va_end(ap);
    return n;
}

int prx_emu_vsnprintf(char *out, size_t size, const char *fmt, void *darwin_ap) {
    va_list ap;
    DARWIN_VA(ap, darwin_ap);
    return vsnprintf(out, size, fmt, ap);
}
#else
int prx_emu_printf(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int n = emit(0, fmt, ap);
    va_end(ap);
    return n;
}

void prx_emu_IOLog(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    emit(1, fmt, ap);
    va_end(ap);
}

void prx_emu_IOLogv(const char *fmt, va_list ap) {
    emit(1, fmt, ap);
}

int prx_emu_vprintf(const char *fmt, va_list ap) {
    return emit(0, fmt, ap);
}

int prx_emu_snprintf(char *out, size_t size, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(out, size, fmt, ap);
    va_end(ap);
    return n;
}

int prx_emu_vsnprintf(char *out, size_t size, const char *fmt, va_list ap) {
    return vsnprintf(out, size, fmt, ap);
}
#endif
