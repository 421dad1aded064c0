// disk_budget.h — MinFreeBlocks for a queue node: new mail is refused
// (RESOURCE_EXHAUSTED → 452 4.3.1) while the queue's file system would have
// less than min_free bytes free once what the node has already taken is on disk.
//
// statvfs alone is not enough: the state machine writes without a WAL, so a
// message's body sits in a RocksDB memtable (up to db_write_buffer_size) until
// a flush writes it to a blob file, and at thousands of messages a second a
// once-a-second statvfs lags by a second of ingest. The budget is therefore
// statvfs's free space, less the node's unflushed memtable bytes (at each
// refresh), less every body admitted since that refresh. Refreshed once a
// second while accepting and every 100 ms while refusing, so service resumes
// quickly when space returns. Thread-safe; shared by a node's shards.
#pragma once

#include <cstdint>
#include <functional>
#include <mutex>
#include <string>

#include "mx/common/clock.h"
#include "mx/common/result.h"

namespace mx::queue {

class DiskBudget {
 public:
  // free_bytes(dir) returns the file system's free bytes for an unprivileged
  // writer (nullopt-like: UINT64_MAX when it cannot tell); unflushed() the
  // bytes the node holds in memory that a flush will write.
  using FreeBytes = std::function<uint64_t(const std::string& dir)>;
  using Unflushed = std::function<uint64_t()>;

  DiskBudget(std::string dir, uint64_t min_free, const Clock& clock, Unflushed unflushed,
             FreeBytes free_bytes = StatvfsFree);

  // OK, counting `bytes` as taken; or RESOURCE_EXHAUSTED naming the shortfall.
  Status Admit(uint64_t bytes);

  // The current estimate of free bytes (for logs and tests).
  uint64_t estimate() const;

  static uint64_t StatvfsFree(const std::string& dir);

 private:
  void RefreshLocked(int64_t now_us);

  const std::string dir_;
  const uint64_t min_free_;
  const Clock& clock_;
  Unflushed unflushed_;
  FreeBytes free_bytes_;
  mutable std::mutex mu_;
  int64_t refreshed_us_ = 0;
  bool refusing_ = false;
  uint64_t free_ = UINT64_MAX;  // statvfs at the last refresh, less unflushed bytes
  uint64_t taken_ = 0;          // admitted since the last refresh
};

}  // namespace mx::queue
