/*
 * The current process. Follows xnu-11417.101.15 bsd/sys/proc.h.
 * proc_name writes at most `size` bytes, NUL-terminated, into `buf`.
 */
#ifndef PRX_PROC_H
#define PRX_PROC_H

int  proc_selfpid(void);
void proc_name(int pid, char *buf, int size);

#endif /* PRX_PROC_H */
