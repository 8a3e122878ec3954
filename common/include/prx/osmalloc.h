/*
 * Tagged kernel allocation (com.apple.kpi.libkern). Follows xnu-11417.101.15
 * libkern/libkern/OSMalloc.h. OSFree must be given the size that was allocated.
 * OSMalloc_noblock never blocks and may return NULL (usable in filter callbacks).
 */
#ifndef PRX_OSMALLOC_H
#define PRX_OSMALLOC_H

#include "types.h"

/* OSMalloc_Tagalloc flags. */
#define OSMT_DEFAULT 0x00
#define OSMT_PAGEABLE 0x01

typedef struct __OSMallocTag__ *OSMallocTag;

OSMallocTag OSMalloc_Tagalloc(const char *name, uint32_t flags);
void        OSMalloc_Tagfree(OSMallocTag tag);
void       *OSMalloc(uint32_t size, OSMallocTag tag);
void       *OSMalloc_noblock(uint32_t size, OSMallocTag tag);
void        OSFree(void *addr, uint32_t size, OSMallocTag tag);

#endif /* PRX_OSMALLOC_H */
