/*
 * errno values prx returns or checks (the kexts, and the KPI emulator in vm/). Follows xnu-11417.101.15 bsd/sys/errno.h.
 * EJUSTRETURN is kernel-only: from a filter's data hook it means "I took the mbuf".
 */
#ifndef PRX_ERRNO_H
#define PRX_ERRNO_H

#define EPERM       1
#define ENOENT      2
#define E2BIG       7
#define ENOMEM      12
#define EBUSY       16
#define EEXIST      17
#define EINVAL      22
#define EPIPE       32
#define EMSGSIZE    40
#define ENOTSUP     45
#define ENOBUFS     55
#define EISCONN     56
#define ENOTCONN    57
#define ECONNREFUSED 61
#define EHOSTUNREACH 65
#define EJUSTRETURN (-2)

/* Mach return codes: osfmk/mach/kern_return.h. */
#define KERN_SUCCESS 0
#define KERN_FAILURE 5

#endif /* PRX_ERRNO_H */
