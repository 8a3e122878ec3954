/*
 * IP filter KPI (com.apple.kpi.bsd). Follows xnu-11417.101.15
 * bsd/netinet/kpi_ipfilter.h.
 *
 * struct ipf_filter is 40 bytes, struct ipf_pktopts 24 (LP64). ipf_remove may
 * call ipf_detach later; ipf_inject_output always consumes `data`.
 */
#ifndef PRX_KPI_IPFILTER_H
#define PRX_KPI_IPFILTER_H

#include "types.h"

/* ipf_pktopts.ippo_flags. */
#define IPPOF_MCAST_OPTS 0x1

struct ipf_pktopts {
	u_int32_t ippo_flags;
	ifnet_t   ippo_mcast_ifnet;
	int       ippo_mcast_loop;
	u_int8_t  ippo_mcast_ttl;
};
typedef struct ipf_pktopts *ipf_pktopts_t;

typedef errno_t (*ipf_input_func)(void *cookie, mbuf_t *data, int offset, u_int8_t protocol);
typedef errno_t (*ipf_output_func)(void *cookie, mbuf_t *data, ipf_pktopts_t options);
typedef void    (*ipf_detach_func)(void *cookie);

struct ipf_filter {
	void            *cookie;
	const char      *name;
	ipf_input_func   ipf_input;
	ipf_output_func  ipf_output;
	ipf_detach_func  ipf_detach;
};

/* The handle ipf_addv4/ipf_addv6 return. */
typedef struct opaque_ipfilter *ipfilter_t;

errno_t ipf_addv4(const struct ipf_filter *filter, ipfilter_t *filter_ref);
errno_t ipf_addv6(const struct ipf_filter *filter, ipfilter_t *filter_ref);
errno_t ipf_remove(ipfilter_t filter_ref);
errno_t ipf_inject_input(mbuf_t data, ipfilter_t filter_ref);
errno_t ipf_inject_output(mbuf_t data, ipfilter_t filter_ref, ipf_pktopts_t options);

#endif /* PRX_KPI_IPFILTER_H */
