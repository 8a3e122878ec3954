/*
 * The current process, and sleeping on a channel. Follows xnu-11417.101.15
 * bsd/sys/proc.h (KERNEL).
 * proc_name writes at most `size` bytes, NUL-terminated, into `buf`.
 * msleep sleeps on `chan` until a wakeup names it; with `mtx` non-NULL (held by
 * the caller) it drops the mutex atomically with going to sleep and holds it
 * again when it returns (unless `pri` has PDROP). `pri` without PCATCH sleeps
 * uninterruptibly; `ts` NULL sleeps without a timeout. wakeup_one wakes one
 * thread sleeping on `chan`, wakeup all of them.
 */
#ifndef PRX_PROC_H
#define PRX_PROC_H

#include "locks.h"
#include "time.h"

int  proc_selfpid(void);
void proc_name(int pid, char *buf, int size);

int  msleep(void *chan, lck_mtx_t *mtx, int pri, const char *wmesg, struct timespec *ts);
void wakeup(void *chan);
void wakeup_one(char *chan);

#endif /* PRX_PROC_H */
