// keys.cc — RocksDB key encodings of the queue.
#include "keys.h"

namespace mx::queue::keys {
namespace {

void PutBe64(std::string* out, uint64_t v) {
  for (int i = 7; i >= 0; --i) out->push_back(static_cast<char>((v >> (i * 8)) & 0xff));
}
void PutBe32(std::string* out, uint32_t v) {
  for (int i = 3; i >= 0; --i) out->push_back(static_cast<char>((v >> (i * 8)) & 0xff));
}
uint64_t GetBe(std::string_view s, int n) {
  uint64_t v = 0;
  for (int i = 0; i < n; ++i) v = (v << 8) | static_cast<unsigned char>(s[i]);
  return v;
}
// Flips the sign bit so signed order equals unsigned byte order.
uint64_t Ordered(int64_t v) {
  return static_cast<uint64_t>(v) ^ (1ULL << 63);
}

std::string OrderedKey(int64_t order, std::string_view qid, uint32_t index) {
  std::string k;
  k.reserve(8 + qid.size() + 4);
  PutBe64(&k, Ordered(order));
  k.append(qid);
  PutBe32(&k, index);
  return k;
}

}  // namespace

std::string Body(std::string_view qid) {
  return std::string(qid) + "/body";
}

std::string RcptPrefix(std::string_view qid) {
  return std::string(qid) + "/";
}

std::string Rcpt(std::string_view qid, uint32_t index) {
  std::string k = RcptPrefix(qid);
  PutBe32(&k, index);
  return k;
}

std::string Ready(int64_t priority, std::string_view qid, uint32_t index) {
  return OrderedKey(priority, qid, index);
}

std::string Sched(int64_t unix_us, std::string_view qid, uint32_t index) {
  return OrderedKey(unix_us, qid, index);
}

std::string Sched(int64_t unix_us) {
  std::string k;
  PutBe64(&k, Ordered(unix_us));
  return k;
}

bool Decode(std::string_view key, Item* out) {
  if (key.size() < 8 + 1 + 4) return false;
  out->order = static_cast<int64_t>(GetBe(key, 8) ^ (1ULL << 63));
  out->qid.assign(key.substr(8, key.size() - 12));
  out->index = static_cast<uint32_t>(GetBe(key.substr(key.size() - 4), 4));
  return true;
}

bool IsBodyKey(std::string_view msg_key) {
  return msg_key.size() > 5 && msg_key.substr(msg_key.size() - 5) == "/body";
}

}  // namespace mx::queue::keys
