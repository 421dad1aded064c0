// log.h — maillog-style logging: one line per event, keyed by queue id.
//
//   Nov 22 19:43:01 mx1 mxd[4242]: 0Ma3xYzQ1bR2kP: from=<a@example.com>, size=1234, ...
//
// Lines go to stderr (a container's log stream). Thread-safe; one write per line.
#pragma once

#include <string>
#include <string_view>

namespace mx::log {

enum class Level { kDebug = 0, kInfo = 1, kWarning = 2, kError = 3 };

void SetLevel(Level level);
void SetNodeName(std::string name);
bool Enabled(Level level);
// Parses "debug" | "info" | "warning" | "error"; false if unknown.
bool ParseLevel(std::string_view text, Level* out);

void Write(Level level, std::string_view qid, std::string_view text);

inline void Info(std::string_view text) {
  Write(Level::kInfo, {}, text);
}
inline void Warn(std::string_view text) {
  Write(Level::kWarning, {}, text);
}
inline void Error(std::string_view text) {
  Write(Level::kError, {}, text);
}
inline void Debug(std::string_view text) {
  if (Enabled(Level::kDebug)) Write(Level::kDebug, {}, text);
}
// A maillog line about one message.
inline void Mail(std::string_view qid, std::string_view text) {
  Write(Level::kInfo, qid, text);
}

// sendmail's delay format: [d+]HH:MM:SS
std::string FormatDelay(int64_t micros);

}  // namespace mx::log
