/*
 * Socket filter KPI (com.apple.kpi.bsd). Follows xnu-11417.101.15
 * bsd/sys/kpi_socketfilter.h.
 *
 * struct sflt_filter is 192 bytes on LP64: eighteen members, then the sf_ext
 * extension (set SFLT_EXTENDED and sf_ext.sf_ext_len). The kernel copies the
 * structure at registration. sf_attach and sf_detach are mandatory; sf_handle is
 * non-zero and unique. sock_inject_data_{in,out} always consume `data`.
 */
#ifndef PRX_KPI_SOCKETFILTER_H
#define PRX_KPI_SOCKETFILTER_H

#include "types.h"

struct sockaddr;

/* sflt_filter.sf_flags (xnu: an anonymous enum). */
#define SFLT_GLOBAL            0x01
#define SFLT_PROG              0x02
#define SFLT_EXTENDED          0x04
#define SFLT_EXTENDED_REGISTRY 0x08

typedef u_int32_t sflt_flags;
typedef u_int32_t sflt_handle;

/* sflt_event_t values passed to sf_notify (xnu: an anonymous enum). */
typedef u_int32_t sflt_event_t;
#define sock_evt_connecting    1
#define sock_evt_connected     2
#define sock_evt_disconnecting 3
#define sock_evt_disconnected  4
#define sock_evt_flush_read    5
#define sock_evt_shutdown      6
#define sock_evt_cantrecvmore  7
#define sock_evt_cantsendmore  8
#define sock_evt_closing       9
#define sock_evt_bound         10

/* sflt_data_flag_t bits passed to the data hooks. */
typedef u_int32_t sflt_data_flag_t;
#define sock_data_filt_flag_oob    1
#define sock_data_filt_flag_record 2

/* Callbacks, in the order of the structure below. */
typedef void    (*sf_unregistered_func)(sflt_handle handle);
typedef errno_t (*sf_attach_func)(void **cookie, socket_t so);
typedef void    (*sf_detach_func)(void *cookie, socket_t so);
typedef void    (*sf_notify_func)(void *cookie, socket_t so, sflt_event_t event, void *param);
typedef int     (*sf_getpeername_func)(void *cookie, socket_t so, struct sockaddr **sa);
typedef int     (*sf_getsockname_func)(void *cookie, socket_t so, struct sockaddr **sa);
typedef errno_t (*sf_data_in_func)(void *cookie, socket_t so, const struct sockaddr *from,
                    mbuf_t *data, mbuf_t *control, sflt_data_flag_t flags);
typedef errno_t (*sf_data_out_func)(void *cookie, socket_t so, const struct sockaddr *to,
                    mbuf_t *data, mbuf_t *control, sflt_data_flag_t flags);
typedef errno_t (*sf_connect_in_func)(void *cookie, socket_t so, const struct sockaddr *from);
/* `to` may be rewritten in place; the kernel copies it back (since xnu-3789). */
typedef errno_t (*sf_connect_out_func)(void *cookie, socket_t so, const struct sockaddr *to);
typedef errno_t (*sf_bind_func)(void *cookie, socket_t so, const struct sockaddr *to);
typedef errno_t (*sf_setoption_func)(void *cookie, socket_t so, sockopt_t opt);
typedef errno_t (*sf_getoption_func)(void *cookie, socket_t so, sockopt_t opt);
typedef errno_t (*sf_listen_func)(void *cookie, socket_t so);
typedef errno_t (*sf_ioctl_func)(void *cookie, socket_t so, unsigned long request,
                    const char *argp);
typedef errno_t (*sf_accept_func)(void *cookie, socket_t so_listen, socket_t so,
                    const struct sockaddr *local, const struct sockaddr *remote);

/* The extension at the end of sflt_filter; the reserved words must be zero. */
struct sflt_filter_ext {
	unsigned int   sf_ext_len;
	sf_accept_func sf_ext_accept;
	void          *sf_ext_rsvd[5];
};

struct sflt_filter {
	sflt_handle          sf_handle;
	int                  sf_flags;
	char                *sf_name;
	sf_unregistered_func sf_unregistered;
	sf_attach_func       sf_attach;
	sf_detach_func       sf_detach;
	sf_notify_func       sf_notify;
	sf_getpeername_func  sf_getpeername;
	sf_getsockname_func  sf_getsockname;
	sf_data_in_func      sf_data_in;
	sf_data_out_func     sf_data_out;
	sf_connect_in_func   sf_connect_in;
	sf_connect_out_func  sf_connect_out;
	sf_bind_func         sf_bind;
	sf_setoption_func    sf_setoption;
	sf_getoption_func    sf_getoption;
	sf_listen_func       sf_listen;
	sf_ioctl_func        sf_ioctl;
	struct sflt_filter_ext sf_ext;
};

errno_t sflt_register(const struct sflt_filter *filter, int domain, int type, int protocol);
errno_t sflt_unregister(sflt_handle handle);
errno_t sock_inject_data_in(socket_t so, const struct sockaddr *from, mbuf_t data,
            mbuf_t control, sflt_data_flag_t flags);
errno_t sock_inject_data_out(socket_t so, const struct sockaddr *to, mbuf_t data,
            mbuf_t control, sflt_data_flag_t flags);

#endif /* PRX_KPI_SOCKETFILTER_H */
