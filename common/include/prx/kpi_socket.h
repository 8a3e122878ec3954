/*
 * Socket queries (com.apple.kpi.bsd). Follows xnu-11417.101.15 bsd/sys/kpi_socket.h.
 * sock_getpeername/sock_getsockname copy at most `len` bytes of the address.
 */
#ifndef PRX_KPI_SOCKET_H
#define PRX_KPI_SOCKET_H

#include "types.h"

struct sockaddr;

errno_t sock_getpeername(socket_t so, struct sockaddr *peername, int peernamelen);
errno_t sock_getsockname(socket_t so, struct sockaddr *sockname, int socknamelen);
errno_t sock_gettype(socket_t so, int *domain, int *type, int *protocol);
errno_t sock_getsockopt(socket_t so, int level, int optname, void *optval, int *optlen);
int     sock_isconnected(socket_t so);
int     sock_isnonblocking(socket_t so);
void    sock_retain(socket_t so);
void    sock_release(socket_t so);

#endif /* PRX_KPI_SOCKET_H */
