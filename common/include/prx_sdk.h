/*
 * prx_sdk.h — what `cargo xtask bindgen --sdk PATH` parses instead of prx_kpi.h:
 * the Apple headers (Kernel.framework/Headers of a macOS SDK, or an xnu /
 * MacKernelSDK header tree) that declare the same KPI subset. The generator's
 * allowlist is the same in both modes, so the two outputs can be compared.
 */
#ifndef PRX_SDK_H
#define PRX_SDK_H

#include <sys/types.h>
#include <sys/errno.h>
#include <mach/kern_return.h>
#include <mach/kmod.h>
#include <libkern/libkern.h>
#include <libkern/OSMalloc.h>
#include <kern/locks.h>
#include <sys/proc.h>
#include <sys/time.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/sys_domain.h>
#include <netinet/in.h>
#include <sys/kpi_mbuf.h>
#include <sys/kpi_socket.h>
#include <sys/kpi_socketfilter.h>
#include <netinet/kpi_ipfilter.h>
#include <sys/kern_control.h>
#include <IOKit/IOLib.h>

#endif /* PRX_SDK_H */
