/*
 * Kernel logging. printf: xnu-11417.101.15 bsd/libkern/libkern.h (exported in
 * com.apple.kpi.libkern); IOLog: iokit/IOKit/IOLib.h (com.apple.kpi.iokit).
 * Both write to the system log; neither retains its arguments.
 */
#ifndef PRX_LOG_H
#define PRX_LOG_H

int  printf(const char *format, ...) __attribute__((format(printf, 1, 2)));
void IOLog(const char *format, ...) __attribute__((format(printf, 1, 2)));

#endif /* PRX_LOG_H */
