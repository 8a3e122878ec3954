/*
 * The kernel's random generator (com.apple.kpi.mach). Follows xnu-11417.101.15
 * bsd/sys/random.h (KERNEL): read_random fills a buffer from the kernel's
 * cryptographic generator and never blocks. Used by the IP filter to key the
 * hash of its NAT tables at start (so remote hosts cannot aim flows at one bucket).
 */
#ifndef PRX_RANDOM_H
#define PRX_RANDOM_H

void read_random(void *buffer, unsigned int numBytes);

#endif /* PRX_RANDOM_H */
