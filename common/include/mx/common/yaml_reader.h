// yaml_reader.h — strict reading of YAML configuration (mx.yaml, the shaping
// file): every key must be known, values are checked, and errors name the
// key's full path ("delivery.destinations[2].max_connections: ...").
//
// The readers throw ConfigError; a file's parser catches it (and
// YAML::Exception) at its top and turns it into a Status.
#pragma once

#include <yaml-cpp/yaml.h>

#include <chrono>
#include <cstdint>
#include <limits>
#include <set>
#include <string>
#include <vector>

namespace mx::yaml {

struct ConfigError {
  std::string message;
};

[[noreturn]] void Fail(const std::string& key, const std::string& what);

// "250ms", "30s", "5m", "4h", "5d" or a bare number of seconds.
std::chrono::microseconds ParseDuration(const std::string& key, const std::string& text);
// "10485760", "10M", "512K", "1G".
uint64_t ParseBytes(const std::string& key, const std::string& text);

// One mapping; its destructor fails on keys nobody asked for.
class Reader {
 public:
  Reader(const YAML::Node& node, std::string path);
  ~Reader() noexcept(false);

  // A missing or null key is absent (undefined node).
  YAML::Node Child(const std::string& k);
  std::string Key(const std::string& k) const { return path_.empty() ? k : path_ + "." + k; }

  void Str(const std::string& k, std::string* out);
  template <typename Int>
  void Uint(const std::string& k, Int* out) {
    uint64_t v = 0;
    if (UintValue(k, static_cast<uint64_t>(std::numeric_limits<Int>::max()), &v)) *out = static_cast<Int>(v);
  }
  void Int64(const std::string& k, int64_t* out);
  void Double(const std::string& k, double* out);
  void Bytes(const std::string& k, uint64_t* out);
  template <typename Dur>
  void Duration(const std::string& k, Dur* out) {
    auto n = Child(k);
    if (!n.IsDefined()) return;
    *out = std::chrono::duration_cast<Dur>(ParseDuration(Key(k), n.as<std::string>()));
  }
  void Bool(const std::string& k, bool* out);
  void StrList(const std::string& k, std::vector<std::string>* out);

 private:
  bool UintValue(const std::string& k, uint64_t max, uint64_t* out);

  YAML::Node node_;
  std::string path_;
  std::set<std::string> seen_;
};

}  // namespace mx::yaml
