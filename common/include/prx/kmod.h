/*
 * The kext's loader record. Follows xnu-11417.101.15 osfmk/mach/kmod.h.
 *
 * Both structures are declared under 4-byte packing, as xnu declares them:
 * kmod_info is 196 bytes on LP64, `start` at offset 180 and `stop` at 188.
 * Every kext exports one kmod_info_t as the symbol `_kmod_info`; the loader fills
 * in id, address, size and hdr_size, and calls start/stop.
 */
#ifndef PRX_KMOD_H
#define PRX_KMOD_H

#include "types.h"

/* Length of the NUL-padded name (bundle identifier) and version fields. */
#define KMOD_MAX_NAME     64
/* Value of kmod_info.info_version. */
#define KMOD_INFO_VERSION 1

struct kmod_info;

/* The start and stop routines: function types (not pointer types), as in xnu. */
typedef kern_return_t kmod_start_func_t(struct kmod_info *ki, void *data);
typedef kern_return_t kmod_stop_func_t(struct kmod_info *ki, void *data);

#pragma pack(push, 4)

/* A link in the list of kexts this one depends on; written by the loader. */
typedef struct kmod_reference {
	struct kmod_reference *next;
	struct kmod_info      *info;
} kmod_reference_t;

typedef struct kmod_info {
	struct kmod_info  *next;            /* loader-owned list link */
	int32_t            info_version;    /* KMOD_INFO_VERSION */
	uint32_t           id;              /* assigned by the loader; ~0 in the binary */
	char               name[KMOD_MAX_NAME];    /* bundle identifier */
	char               version[KMOD_MAX_NAME]; /* bundle version */
	int32_t            reference_count; /* -1 in the binary */
	kmod_reference_t  *reference_list;  /* loader-owned */
	vm_address_t       address;         /* load address */
	vm_size_t          size;            /* mapped size */
	vm_size_t          hdr_size;        /* unwired header size */
	kmod_start_func_t *start;
	kmod_stop_func_t  *stop;
} kmod_info_t;

#pragma pack(pop)

#endif /* PRX_KMOD_H */
