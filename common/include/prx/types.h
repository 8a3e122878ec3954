/*
 * Basic types, with Darwin's LP64 definitions.
 * Follows xnu-11417.101.15: bsd/sys/_types/_{u_,}int*_t.h, _uintptr_t.h,
 * _size_t.h (via __darwin_size_t), _errno_t.h, osfmk/mach/{i386,arm}/kern_return.h,
 * osfmk/mach/{i386,arm}/boolean.h (int inside the kernel on both architectures),
 * osfmk/mach/{i386,arm}/vm_types.h (vm_offset_t/vm_size_t are uintptr_t on LP64),
 * bsd/sys/kernel_types.h (opaque KPI handles, public spelling).
 */
#ifndef PRX_TYPES_H
#define PRX_TYPES_H

#if !defined(__LP64__)
#error "prx's KPI header set describes the LP64 kernels (x86_64, arm64e) only"
#endif

/* Fixed-width integers (Darwin: int64_t is `long long`, not `long`). */
typedef signed char        int8_t;
typedef short              int16_t;
typedef int                int32_t;
typedef long long          int64_t;
typedef unsigned char      uint8_t;
typedef unsigned short     uint16_t;
typedef unsigned int       uint32_t;
typedef unsigned long long uint64_t;

/* BSD spellings used by the KPI headers. */
typedef unsigned char      u_char;
typedef unsigned char      u_int8_t;
typedef unsigned short     u_int16_t;
typedef unsigned int       u_int32_t;
typedef unsigned long long u_int64_t;

typedef unsigned long      uintptr_t;
typedef unsigned long      size_t;

/* errno values returned by the BSD KPIs (see errno.h). */
typedef int                errno_t;
/* Mach return codes (KERN_SUCCESS, ...). */
typedef int                kern_return_t;
/* Mach boolean: `int` inside the kernel on x86_64 and arm64. */
typedef int                boolean_t;
/* Kernel virtual addresses and sizes. */
typedef uintptr_t          vm_offset_t;
typedef vm_offset_t        vm_address_t;
typedef uintptr_t          vm_size_t;

/* Opaque handles of the BSD KPIs; the kernel's structures are never visible. */
typedef struct __mbuf   *mbuf_t;
typedef struct __socket *socket_t;
typedef struct __sockopt *sockopt_t;
typedef struct __ifnet  *ifnet_t;

#endif /* PRX_TYPES_H */
