// log.cc — maillog-style line writer.
#include "mx/common/log.h"

#include <sys/time.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <ctime>
#include <mutex>
#include <string_view>

namespace mx::log {
namespace {

std::atomic<int> g_level{static_cast<int>(Level::kInfo)};
std::mutex g_mu;
std::string g_node;  // node_name; "" until SetNode: "mx"

}  // namespace

void SetLevel(Level level) {
  g_level = static_cast<int>(level);
}

void SetNodeName(std::string name) {
  std::lock_guard lock(g_mu);
  g_node = std::move(name);
}

bool Enabled(Level level) {
  return static_cast<int>(level) >= g_level.load(std::memory_order_relaxed);
}

bool ParseLevel(std::string_view text, Level* out) {
  if (text == "debug")
    *out = Level::kDebug;
  else if (text == "info")
    *out = Level::kInfo;
  else if (text == "warning" || text == "warn")
    *out = Level::kWarning;
  else if (text == "error")
    *out = Level::kError;
  else
    return false;
  return true;
}

void Write(Level level, std::string_view qid, std::string_view text) {
  if (!Enabled(level)) return;
  timeval tv{};
  gettimeofday(&tv, nullptr);
  tm tm{};
  localtime_r(&tv.tv_sec, &tm);
  char stamp[32];
  strftime(stamp, sizeof stamp, "%b %e %H:%M:%S", &tm);
  static const char* const kTags[] = {"debug: ", "", "warning: ", "error: "};
  std::string line;
  line.reserve(64 + qid.size() + text.size());
  std::lock_guard lock(g_mu);
  line.append(stamp)
      .append(" ")
      .append(g_node.empty() ? std::string_view("mx") : std::string_view(g_node))
      .append(" mxd[")
      .append(std::to_string(getpid()))
      .append("]: ");
  if (!qid.empty()) line.append(qid).append(": ");
  line.append(kTags[static_cast<int>(level)]).append(text).push_back('\n');
  fwrite(line.data(), 1, line.size(), stderr);
}

std::string FormatDelay(int64_t micros) {
  if (micros < 0) micros = 0;
  int64_t s = micros / 1'000'000;
  int64_t days = s / 86400;
  s %= 86400;
  char buf[48];
  if (days > 0) {
    snprintf(buf, sizeof buf, "%lld+%02lld:%02lld:%02lld", static_cast<long long>(days),
             static_cast<long long>(s / 3600), static_cast<long long>(s / 60 % 60), static_cast<long long>(s % 60));
  } else {
    snprintf(buf, sizeof buf, "%02lld:%02lld:%02lld", static_cast<long long>(s / 3600),
             static_cast<long long>(s / 60 % 60), static_cast<long long>(s % 60));
  }
  return buf;
}

}  // namespace mx::log
