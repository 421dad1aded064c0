// qid.cc — time-ordered queue id generation.
#include "mx/common/qid.h"

#include <random>

#include "mx/common/clock.h"

namespace mx {
namespace {

constexpr char kDigits[] = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
constexpr int kTimeDigits = 10;
constexpr int kTagDigits = 4;

std::string Base62(uint64_t v, int width) {
  std::string out(width, '0');
  for (int i = width - 1; i >= 0; --i) {
    out[i] = kDigits[v % 62];
    v /= 62;
  }
  return out;
}

int DigitValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'A' && c <= 'Z') return c - 'A' + 10;
  if (c >= 'a' && c <= 'z') return c - 'a' + 36;
  return -1;
}

}  // namespace

QidGenerator::QidGenerator(const Clock& clock, uint64_t tag)
    : clock_(clock), tag_(Base62(tag % (62ULL * 62 * 62 * 62), kTagDigits)) {}

std::string QidGenerator::Next() {
  int64_t now = clock_.NowUnixMicros();
  int64_t t;
  {
    std::lock_guard lock(mu_);
    t = now > last_us_ ? now : last_us_ + 1;
    last_us_ = t;
  }
  return Base62(static_cast<uint64_t>(t), kTimeDigits) + tag_;
}

int64_t QidGenerator::TimeOf(const std::string& qid) {
  if (qid.size() != kLength) return -1;
  int64_t v = 0;
  for (int i = 0; i < kTimeDigits; ++i) {
    int d = DigitValue(qid[i]);
    if (d < 0) return -1;
    v = v * 62 + d;
  }
  for (size_t i = kTimeDigits; i < qid.size(); ++i) {
    if (DigitValue(qid[i]) < 0) return -1;
  }
  return v;
}

uint64_t RandomQidTag() {
  std::random_device rd;
  return (static_cast<uint64_t>(rd()) << 32) ^ rd();
}

}  // namespace mx
