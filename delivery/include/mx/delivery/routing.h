// routing.h — where mail for a recipient domain goes, with which mailer, and
// under which per-destination limits.
//
// Route order (sendmail): the mailertable (FEATURE(mailertable): the domain,
// then ".parent" entries for its subdomains, then "." as catch-all), then
// delivery.smart_host (mailer "relay"), then the domain's MX hosts (mailer
// "esmtp"). A mailer is sendmail's M line: a protocol (SMTP or LMTP) and a
// largest message size (M=). Limits belong to sites (shaping.h): found once
// the MX hosts are known.
#pragma once

#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "mx/common/config.h"
#include "mx/common/result.h"
#include "mx/delivery/shaping.h"

namespace mx::delivery {

struct Relay {
  std::string host;
  uint16_t port = 25;
  bool literal = false;  // [host]: no MX lookup
};

struct Mailer {
  std::string name;
  bool lmtp = false;
  uint64_t max_message_size = 0;  // 0: none
};

struct Route {
  const Mailer* mailer = nullptr;  // never null in a Route from Routing
  std::optional<Relay> relay;      // nullopt: the domain's own MX hosts
  std::string error;               // a mailertable "error:" entry: bounce with this reply
};

class Routing {
 public:
  // Reads delivery.mailertable (relative to config_dir) and checks every
  // entry, errors naming file and line; and the shaping rules.
  static Result<Routing> Load(const DeliveryConfig& config, const std::string& config_dir);
  // The same from mailertable text (name is used in errors).
  static Result<Routing> Parse(const DeliveryConfig& config, std::string_view mailertable, const std::string& name);

  Route RouteFor(std::string_view domain) const;
  const Shaping& shaping() const { return shaping_; }
  size_t mailertable_size() const { return table_.size(); }

 private:
  static Result<Routing> Build(const DeliveryConfig& config, std::string_view mailertable, const std::string& name,
                               Shaping shaping);
  std::map<std::string, Mailer> mailers_;
  std::unordered_map<std::string, Route> table_;  // "example.com", ".example.com", "."
  std::optional<Route> smart_;
  const Mailer* esmtp_ = nullptr;
  Shaping shaping_;
};

}  // namespace mx::delivery
