/*
 * Lock groups, mutexes and read-write locks (com.apple.kpi.libkern).
 * Follows xnu-11417.101.15 osfmk/kern/lock_group.h, lock_attr.h, lock_mtx.h,
 * lock_rw.h and osfmk/{i386,arm}/locks.h (the opaque public spelling of lck_mtx_t).
 * Locks are only ever handled by pointer: allocate with *_alloc_init, free with
 * *_free and the same group. A NULL attribute means the defaults.
 */
#ifndef PRX_LOCKS_H
#define PRX_LOCKS_H

#include "types.h"

typedef struct _lck_grp_        lck_grp_t;
typedef struct _lck_grp_attr_   lck_grp_attr_t;
typedef struct __lck_attr__     lck_attr_t;
typedef struct __lck_mtx_t__    lck_mtx_t;
typedef struct __lck_rw_t__     lck_rw_t;

lck_grp_t *lck_grp_alloc_init(const char *grp_name, lck_grp_attr_t *attr);
void       lck_grp_free(lck_grp_t *grp);

lck_mtx_t *lck_mtx_alloc_init(lck_grp_t *grp, lck_attr_t *attr);
void       lck_mtx_free(lck_mtx_t *lck, lck_grp_t *grp);
void       lck_mtx_lock(lck_mtx_t *lck);
void       lck_mtx_unlock(lck_mtx_t *lck);
boolean_t  lck_mtx_try_lock(lck_mtx_t *lck);

lck_rw_t  *lck_rw_alloc_init(lck_grp_t *grp, lck_attr_t *attr);
void       lck_rw_free(lck_rw_t *lck, lck_grp_t *grp);
void       lck_rw_lock_shared(lck_rw_t *lck);
void       lck_rw_unlock_shared(lck_rw_t *lck);
void       lck_rw_lock_exclusive(lck_rw_t *lck);
void       lck_rw_unlock_exclusive(lck_rw_t *lck);

#endif /* PRX_LOCKS_H */
