// qid.h — queue ids: 14 printable characters, ordered by creation time.
//
// Layout: 10 base-62 digits of microseconds since the Unix epoch, then 4 digits
// of a per-generator instance tag. The base-62 alphabet is in ASCII order, so
// byte order of ids is time order. Within one generator the time part is strictly
// increasing; the queue rejects a colliding id and the caller retries.
#pragma once

#include <cstdint>
#include <mutex>
#include <string>

namespace mx {

class Clock;

class QidGenerator {
 public:
  // tag: distinguishes generators (processes/nodes); only its low bits are used.
  QidGenerator(const Clock& clock, uint64_t tag);
  std::string Next();

  static constexpr size_t kLength = 14;
  // Microsecond timestamp encoded in a qid, or -1 if malformed.
  static int64_t TimeOf(const std::string& qid);

 private:
  const Clock& clock_;
  std::string tag_;
  std::mutex mu_;
  int64_t last_us_ = 0;
};

// A random tag for a process-local generator.
uint64_t RandomQidTag();

}  // namespace mx
