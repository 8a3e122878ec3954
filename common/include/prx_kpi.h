/*
 * prx_kpi.h — the KPI subset prx uses, declared by the project itself.
 *
 * Corresponds to: xnu-11417.101.15 (apple-oss-distributions/xnu, macOS 15.4),
 * public (non-KERNEL_PRIVATE) view, LP64 (x86_64 and arm64e kernels).
 *
 * These headers are written for prx from the facts in xnu's public headers; they
 * are not copies of them. Each file names the xnu header it follows. Only what prx
 * uses is declared; to use another KPI, add its declaration here (citing the xnu
 * header) and run `cargo xtask bindgen`, which regenerates common/src/sys/.
 *
 * The header set is self-contained: it includes no system or compiler headers, so
 * it compiles with `-nostdinc` for any target (bindgen, the layout probe).
 * Constants are plain #defines (xnu uses anonymous enums for some of them); their
 * Rust types are chosen by the generator (xtask/src/bindgen.rs).
 *
 * On a Mac, `cargo xtask bindgen --sdk .../Kernel.framework/Headers` reads Apple's
 * own headers instead, through prx_sdk.h.
 */
#ifndef PRX_KPI_H
#define PRX_KPI_H

#define PRX_KPI_XNU_VERSION "xnu-11417.101.15"

#include "prx/types.h"
#include "prx/errno.h"
#include "prx/kmod.h"
#include "prx/log.h"
#include "prx/proc.h"
#include "prx/time.h"
#include "prx/random.h"
#include "prx/locks.h"
#include "prx/osmalloc.h"
#include "prx/socket.h"
#include "prx/kpi_mbuf.h"
#include "prx/kpi_socket.h"
#include "prx/kpi_socketfilter.h"
#include "prx/kpi_ipfilter.h"
#include "prx/kern_control.h"

#endif /* PRX_KPI_H */
