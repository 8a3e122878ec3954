/*
 * mbuf KPI (com.apple.kpi.bsd). Follows xnu-11417.101.15 bsd/sys/kpi_mbuf.h.
 * Ownership rules prx relies on: mbuf_pullup frees the whole chain on failure;
 * outbound checksums may still be pending until mbuf_outbound_finalize.
 */
#ifndef PRX_KPI_MBUF_H
#define PRX_KPI_MBUF_H

#include "types.h"

typedef u_int32_t mbuf_flags_t;
typedef u_int32_t mbuf_how_t;
typedef u_int32_t mbuf_tag_id_t;
typedef u_int16_t mbuf_tag_type_t;
typedef u_int32_t mbuf_csum_request_flags_t;

/* mbuf_flags_t bits (xnu: an anonymous enum). */
#define MBUF_EXT     0x0001
#define MBUF_PKTHDR  0x0002
#define MBUF_EOR     0x0004
#define MBUF_LOOP    0x0040
#define MBUF_BCAST   0x0100
#define MBUF_MCAST   0x0200

/* mbuf_csum_request_flags_t bits (xnu: an anonymous enum): checksums the
 * stack left to the interface. With REQ_TCP/REQ_UDP (and their IPv6 forms) the
 * transport checksum field holds the pseudo-header sum. */
#define MBUF_CSUM_REQ_IP      0x0001
#define MBUF_CSUM_REQ_TCP     0x0002
#define MBUF_CSUM_REQ_UDP     0x0004
#define MBUF_CSUM_REQ_TCPIPV6 0x0020
#define MBUF_CSUM_REQ_UDPIPV6 0x0040

/* mbuf_how_t values. */
#define MBUF_WAITOK   0
#define MBUF_DONTWAIT 1

void        *mbuf_data(mbuf_t mbuf);
size_t       mbuf_len(const mbuf_t mbuf);
void         mbuf_setlen(mbuf_t mbuf, size_t len);
mbuf_t       mbuf_next(const mbuf_t mbuf);
mbuf_flags_t mbuf_flags(const mbuf_t mbuf);
size_t       mbuf_pkthdr_len(const mbuf_t mbuf);
void         mbuf_pkthdr_setlen(mbuf_t mbuf, size_t len);
errno_t      mbuf_pullup(mbuf_t *mbuf, size_t len);
errno_t      mbuf_prepend(mbuf_t *mbuf, size_t len, mbuf_how_t how);
void         mbuf_adj(mbuf_t mbuf, int len);
errno_t      mbuf_dup(const mbuf_t src, mbuf_how_t how, mbuf_t *new_mbuf);
errno_t      mbuf_copydata(const mbuf_t mbuf, size_t offset, size_t length, void *out_data);
errno_t      mbuf_copyback(mbuf_t mbuf, size_t offset, size_t length, const void *data,
                 mbuf_how_t how);
void         mbuf_freem(mbuf_t mbuf);
/* A packet (pkthdr) chain whose length is packetlen; *maxchunks may be NULL. */
errno_t      mbuf_allocpacket(mbuf_how_t how, size_t packetlen, unsigned int *maxchunks,
                 mbuf_t *mbuf);
void         mbuf_inbound_modified(mbuf_t mbuf);
errno_t      mbuf_get_csum_requested(mbuf_t mbuf, mbuf_csum_request_flags_t *request,
                 u_int32_t *value);
void         mbuf_outbound_finalize(mbuf_t mbuf, u_int32_t protocol_family,
                 size_t protocol_offset);
errno_t      mbuf_tag_id_find(const char *module_string, mbuf_tag_id_t *module_id);
errno_t      mbuf_tag_allocate(mbuf_t mbuf, mbuf_tag_id_t module_id, mbuf_tag_type_t type,
                 size_t length, mbuf_how_t how, void **data_p);
errno_t      mbuf_tag_find(mbuf_t mbuf, mbuf_tag_id_t module_id, mbuf_tag_type_t type,
                 size_t *length, void **data_p);

#endif /* PRX_KPI_MBUF_H */
