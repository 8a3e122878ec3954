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
