/*
 * Socket addresses and the constants prx matches on.
 * Follows xnu-11417.101.15 bsd/sys/socket.h (sockaddr, AF_*, SOCK_*),
 * bsd/netinet/in.h (sockaddr_in, IPPROTO_*), bsd/netinet6/in6.h (sockaddr_in6),
 * bsd/sys/sys_domain.h (SYSPROTO_CONTROL, AF_SYS_CONTROL).
 * BSD addresses start with a length byte; ports and addresses are big-endian.
 */
#ifndef PRX_SOCKET_H
#define PRX_SOCKET_H

#include "types.h"

typedef uint8_t  sa_family_t;
typedef uint16_t in_port_t;
typedef uint32_t in_addr_t;

#define AF_INET           2
#define AF_INET6          30
#define AF_SYSTEM         32
#define PF_INET           AF_INET
#define PF_INET6          AF_INET6
#define PF_SYSTEM         AF_SYSTEM

#define SOCK_STREAM       1
#define SOCK_DGRAM        2

#define IPPROTO_ICMP      1
#define IPPROTO_TCP       6
#define IPPROTO_UDP       17

#define SYSPROTO_CONTROL  2
#define AF_SYS_CONTROL    2

struct sockaddr {
	uint8_t     sa_len;
	sa_family_t sa_family;
	char        sa_data[14];
};

struct in_addr {
	in_addr_t s_addr;
};

struct sockaddr_in {
	uint8_t        sin_len;
	sa_family_t    sin_family;
	in_port_t      sin_port;
	struct in_addr sin_addr;
	char           sin_zero[8];
};

/*
 * xnu declares the address as a union of byte, 16-bit and 32-bit arrays; the
 * union is named here so that every type has a C name the layout probe can use.
 * Its 32-bit member gives the structure its 4-byte alignment.
 */
union in6_addr_words {
	uint8_t  __u6_addr8[16];
	uint16_t __u6_addr16[8];
	uint32_t __u6_addr32[4];
};

struct in6_addr {
	union in6_addr_words __u6_addr;
};

struct sockaddr_in6 {
	uint8_t         sin6_len;
	sa_family_t     sin6_family;
	in_port_t       sin6_port;
	uint32_t        sin6_flowinfo;
	struct in6_addr sin6_addr;
	uint32_t        sin6_scope_id;
};

#endif /* PRX_SOCKET_H */
