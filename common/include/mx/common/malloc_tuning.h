// malloc_tuning.h — glibc allocator settings for a process that moves
// message bodies around.
#pragma once

#include <malloc.h>

namespace mx {

// A message body (100 KB and more) is built, copied into a protobuf, sent and
// freed for every message. With glibc's defaults such a buffer comes from
// mmap or from the top of the heap, which free() trims right away, so every
// message pays page faults and brk/munmap calls (20x the cost of the SMTP
// session's own work for 100 KB bodies: bench/micro BM_SessionTransaction).
// Keep buffers up to 64 MiB (above the 48 MiB message size limit) on the
// heap, and keep up to 128 MiB of free heap before returning it to the OS.
inline void TuneMalloc() {
  // Called first thing in main, before any thread: mallopt is safe then.
  mallopt(M_MMAP_THRESHOLD, 64 << 20);   // NOLINT(concurrency-mt-unsafe)
  mallopt(M_TRIM_THRESHOLD, 128 << 20);  // NOLINT(concurrency-mt-unsafe)
}

}  // namespace mx
