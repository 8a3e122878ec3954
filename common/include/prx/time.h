/*
 * Uptime clock (com.apple.kpi.bsd). Follows xnu-11417.101.15 bsd/sys/time.h
 * (nanouptime, KERNEL) and bsd/sys/_types/_timespec.h (LP64: two longs, 16 bytes).
 * Used by the IP filter for NAT flow expiry; never blocks.
 */
#ifndef PRX_TIME_H
#define PRX_TIME_H

struct timespec {
	long tv_sec;
	long tv_nsec;
};

void nanouptime(struct timespec *ts);

#endif /* PRX_TIME_H */
