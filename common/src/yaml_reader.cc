// yaml_reader.cc — strict YAML configuration readers.
#include "mx/common/yaml_reader.h"

#include <cctype>
#include <charconv>
#include <cstdlib>
#include <exception>

namespace mx::yaml {

void Fail(const std::string& key, const std::string& what) {
  throw ConfigError{key + ": " + what};
}

std::chrono::microseconds ParseDuration(const std::string& key, const std::string& text) {
  size_t i = 0;
  while (i < text.size() && std::isdigit(static_cast<unsigned char>(text[i]))) ++i;
  if (i == 0) Fail(key, "expected a duration like 30s, 5m, 4h, got '" + text + "'");
  uint64_t n = 0;
  std::from_chars(text.data(), text.data() + i, n);
  std::string unit = text.substr(i);
  uint64_t mult;
  if (unit.empty() || unit == "s")
    mult = 1'000'000;
  else if (unit == "ms")
    mult = 1'000;
  else if (unit == "us")
    mult = 1;
  else if (unit == "m")
    mult = 60'000'000;
  else if (unit == "h")
    mult = 3'600'000'000ULL;
  else if (unit == "d")
    mult = 86'400'000'000ULL;
  else
    Fail(key, "unknown duration unit '" + unit + "' (use ms, s, m, h, d)");
  return std::chrono::microseconds(n * mult);
}

uint64_t ParseBytes(const std::string& key, const std::string& text) {
  size_t i = 0;
  while (i < text.size() && std::isdigit(static_cast<unsigned char>(text[i]))) ++i;
  if (i == 0) Fail(key, "expected a byte count like 10485760 or 10M, got '" + text + "'");
  uint64_t n = 0;
  std::from_chars(text.data(), text.data() + i, n);
  std::string unit = text.substr(i);
  if (unit.empty() || unit == "B") return n;
  if (unit == "K" || unit == "KiB") return n << 10;
  if (unit == "M" || unit == "MiB") return n << 20;
  if (unit == "G" || unit == "GiB") return n << 30;
  Fail(key, "unknown size unit '" + unit + "' (use K, M, G)");
}

Reader::Reader(const YAML::Node& node, std::string path) : node_(node), path_(std::move(path)) {
  if (node_.IsDefined() && !node_.IsNull() && !node_.IsMap()) Fail(path_, "expected a mapping");
}

Reader::~Reader() noexcept(false) {
  if (!node_.IsDefined() || !node_.IsMap() || std::uncaught_exceptions() > 0) return;
  for (const auto& kv : node_) {
    auto k = kv.first.as<std::string>();
    if (!seen_.count(k)) Fail(Key(k), "unknown key");
  }
}

YAML::Node Reader::Child(const std::string& k) {
  seen_.insert(k);
  if (!node_ || !node_.IsMap()) return YAML::Node(YAML::NodeType::Undefined);
  const YAML::Node& map = node_;  // const lookup: the non-const operator[] would insert the key
  YAML::Node n = map[k];
  if (!n.IsDefined() || n.IsNull()) return YAML::Node(YAML::NodeType::Undefined);
  return n;
}

void Reader::Str(const std::string& k, std::string* out) {
  auto n = Child(k);
  if (!n.IsDefined()) return;
  if (!n.IsScalar()) Fail(Key(k), "expected a string");
  *out = n.as<std::string>();
}

bool Reader::UintValue(const std::string& k, uint64_t max, uint64_t* out) {
  auto n = Child(k);
  if (!n.IsDefined()) return false;
  if (!n.IsScalar()) Fail(Key(k), "expected a number");
  auto s = n.as<std::string>();
  uint64_t v = 0;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || p != s.data() + s.size() || v > max) {
    Fail(Key(k), "expected a non-negative integer, got '" + s + "'");
  }
  *out = v;
  return true;
}

void Reader::Int64(const std::string& k, int64_t* out) {
  auto n = Child(k);
  if (!n.IsDefined()) return;
  auto s = n.as<std::string>();
  int64_t v = 0;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || p != s.data() + s.size()) Fail(Key(k), "expected an integer, got '" + s + "'");
  *out = v;
}

void Reader::Double(const std::string& k, double* out) {
  auto n = Child(k);
  if (!n.IsDefined()) return;
  auto s = n.as<std::string>();
  char* end = nullptr;
  double v = std::strtod(s.c_str(), &end);
  if (s.empty() || *end != '\0' || v < 0) Fail(Key(k), "expected a non-negative number, got '" + s + "'");
  *out = v;
}

void Reader::Bytes(const std::string& k, uint64_t* out) {
  auto n = Child(k);
  if (!n.IsDefined()) return;
  *out = ParseBytes(Key(k), n.as<std::string>());
}

void Reader::Bool(const std::string& k, bool* out) {
  auto n = Child(k);
  if (!n.IsDefined()) return;
  auto v = n.as<std::string>();
  if (v == "true" || v == "yes" || v == "on")
    *out = true;
  else if (v == "false" || v == "no" || v == "off")
    *out = false;
  else
    Fail(Key(k), "expected true or false, got '" + v + "'");
}

void Reader::StrList(const std::string& k, std::vector<std::string>* out) {
  auto n = Child(k);
  if (!n.IsDefined()) return;
  out->clear();
  if (n.IsScalar()) {
    out->push_back(n.as<std::string>());
    return;
  }
  if (!n.IsSequence()) Fail(Key(k), "expected a list of strings");
  for (const auto& e : n) out->push_back(e.as<std::string>());
}

}  // namespace mx::yaml
