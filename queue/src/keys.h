// keys.h — RocksDB key encodings of the queue (DESIGN §5 "Keys").
//
//   msg    qid                         -> Envelope
//          qid "/body"                 -> body bytes (BlobDB)
//   rcpt   qid "/" be32(index)         -> Recipient
//   ready  be64(priority^sign) qid be32(index) -> ""   (QueueSortOrder order)
//   sched  be64(unix_us) qid be32(index)       -> ""   (next attempt of a deferred recipient)
//   lease  be64(unix_us) qid be32(index)       -> ""   (lease expiry of a leased recipient)
//   stats  mailer                      -> MailerStats
//   meta   "applied" | "counts" | "stats_since"
//
// Fixed-width big-endian numbers make byte order equal numeric order.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace mx::queue::keys {

std::string Body(std::string_view qid);
std::string Rcpt(std::string_view qid, uint32_t index);
std::string RcptPrefix(std::string_view qid);
std::string Ready(int64_t priority, std::string_view qid, uint32_t index);
std::string Sched(int64_t unix_us, std::string_view qid, uint32_t index);
std::string Sched(int64_t unix_us);  // lower bound for seeks
// lease keys share the sched encoding.
inline std::string Lease(int64_t unix_us, std::string_view qid, uint32_t index) {
  return Sched(unix_us, qid, index);
}

struct Item {
  int64_t order = 0;  // priority (ready) or time (sched)
  std::string qid;
  uint32_t index = 0;
};
// Decodes a ready or sched key; false if malformed.
bool Decode(std::string_view key, Item* out);
bool IsBodyKey(std::string_view msg_key);

}  // namespace mx::queue::keys
