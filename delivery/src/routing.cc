// routing.cc — mailertable and mailers; the shaping rules are loaded with them.
#include "mx/delivery/routing.h"

#include <cctype>

#include "mx/common/address.h"
#include "mx/common/map_file.h"

namespace mx::delivery {
namespace {

constexpr uint16_t kLmtpPort = 24;

bool ValidDomainKey(std::string_view k) {
  if (k == ".") return true;
  if (k.empty() || k.back() == '.' || k.find("..") != std::string_view::npos) return false;
  for (unsigned char c : k) {
    if (!std::isalnum(c) && c != '-' && c != '.' && c != '_') return false;
  }
  return true;
}

// "NNN text" or "D.S.N:NNN text" (sendmail's error mailer) → "NNN D.S.N text".
Result<std::string> ErrorReply(std::string_view v) {
  std::string dsn;
  if (auto colon = v.find(':'); colon != std::string_view::npos && v.substr(0, colon).find(' ') == std::string::npos) {
    dsn = std::string(v.substr(0, colon));
    v = v.substr(colon + 1);
  }
  if (v.size() < 5 || !std::isdigit(static_cast<unsigned char>(v[0])) || (v[0] != '4' && v[0] != '5') ||
      !std::isdigit(static_cast<unsigned char>(v[1])) || !std::isdigit(static_cast<unsigned char>(v[2])) ||
      v[3] != ' ') {
    return Status(Code::kInvalidArgument,
                  "error: entries need a 4xx or 5xx reply, e.g. error:5.1.2:550 No such domain");
  }
  std::string code(v.substr(0, 3));
  std::string text(Trim(v.substr(4)));
  if (dsn.empty()) {
    dsn = std::string(1, code[0]) + ".0.0";
    if (text.size() > 5 && text[1] == '.' && text[0] == code[0]) {  // "550 5.1.2 text"
      auto sp = text.find(' ');
      dsn = text.substr(0, sp);
      text = sp == std::string::npos ? "" : text.substr(sp + 1);
    }
  }
  if (dsn.size() < 5 || dsn[0] != code[0] || dsn[1] != '.') {
    return Status(Code::kInvalidArgument, "enhanced status " + dsn + " does not match reply " + code);
  }
  return code + " " + dsn + " " + text;
}

}  // namespace

Result<Routing> Routing::Load(const DeliveryConfig& config, const std::string& config_dir) {
  std::string text, path = "mailertable";
  if (!config.mailertable.empty()) {
    path = config.mailertable;
    if (path.front() != '/') path = config_dir + "/" + path;
    auto t = ReadMapFile(path);
    if (!t.ok()) return Status(t.status().code(), "delivery.mailertable: " + t.status().message());
    text = std::move(t).value();
  }
  auto shaping = Shaping::Load(config, config_dir);  // the built-in rules and the operator's file
  if (!shaping.ok()) return shaping.status();
  return Build(config, text, path, std::move(shaping).value());
}

Result<Routing> Routing::Parse(const DeliveryConfig& config, std::string_view text, const std::string& name) {
  std::vector<std::pair<std::string, std::string>> layers;
  if (config.shaping_defaults)
    layers.emplace_back("built-in shaping defaults", std::string(Shaping::ShippedDefaults()));
  auto shaping = Shaping::Parse(config, layers);
  if (!shaping.ok()) return shaping.status();
  return Build(config, text, name, std::move(shaping).value());
}

Result<Routing> Routing::Build(const DeliveryConfig& config, std::string_view text, const std::string& name,
                               Shaping shaping) {
  for (const auto& src : config.sources) {  // egress sources' warm-up rates
    if (src.max_message_rate.empty()) continue;
    if (auto rate = ParseRate(src.max_message_rate); !rate.ok()) {
      return Status(Code::kInvalidArgument,
                    "delivery.sources." + src.name + ".max_message_rate: " + rate.status().message());
    }
  }
  Routing r;
  r.shaping_ = std::move(shaping);
  for (const char* n : {"esmtp", "smtp", "relay"}) r.mailers_[n] = Mailer{n, false, 0};
  r.mailers_["lmtp"] = Mailer{"lmtp", true, 0};
  for (const auto& m : config.mailers) r.mailers_[m.name] = Mailer{m.name, m.protocol == "lmtp", m.max_message_size};
  r.esmtp_ = &r.mailers_.at("esmtp");
  if (!config.smart_host.empty()) {
    auto hp = ParseHostPort(config.smart_host, config.smtp_port);
    if (!hp.ok()) return Status(Code::kInvalidArgument, "delivery.smart_host: " + hp.status().message());
    r.smart_ = Route{&r.mailers_.at("relay"), Relay{hp->host, hp->port, config.smart_host.front() == '['}, ""};
  }
  std::unordered_map<std::string, int> lines;
  Status st = ForEachMapLine(text, [&](int n, std::string_view line) -> Status {
    if (IsMapComment(line)) return Status::Ok();
    auto [raw_key, value] = SplitMapKey(line);
    std::string key = ToLower(raw_key);
    if (!ValidDomainKey(key)) return MapError(name, n, "bad domain '" + std::string(raw_key) + "'");
    if (value.empty()) return MapError(name, n, "missing mailer:host for '" + key + "'");
    if (auto it = lines.find(key); it != lines.end()) {
      return MapError(name, n, "duplicate key '" + key + "' (first at line " + std::to_string(it->second) + ")");
    }
    lines[key] = n;
    auto colon = value.find(':');
    if (colon == std::string_view::npos)
      return MapError(name, n, "expected mailer:host, got '" + std::string(value) + "'");
    std::string mailer = ToLower(value.substr(0, colon));
    std::string_view host = Trim(value.substr(colon + 1));
    Route route;
    if (mailer == "error") {
      auto reply = ErrorReply(host);
      if (!reply.ok()) return MapError(name, n, reply.status().message());
      route.mailer = r.esmtp_;
      route.error = *reply;
    } else {
      auto it = r.mailers_.find(mailer);
      if (it == r.mailers_.end()) {
        return MapError(name, n,
                        "unknown mailer '" + mailer + "' (esmtp, smtp, relay, lmtp, error or delivery.mailers)");
      }
      route.mailer = &it->second;
      if (host.empty()) return MapError(name, n, "missing host after '" + mailer + ":'");
      auto hp = ParseHostPort(std::string(host), route.mailer->lmtp ? kLmtpPort : config.smtp_port);
      if (!hp.ok()) return MapError(name, n, hp.status().message());
      route.relay = Relay{hp->host, hp->port, host.front() == '['};
    }
    r.table_[key] = std::move(route);
    return Status::Ok();
  });
  if (!st.ok()) return st;
  return r;
}

Route Routing::RouteFor(std::string_view domain) const {
  if (!table_.empty()) {
    std::string d = ToLower(domain);
    if (auto it = table_.find(d); it != table_.end()) return it->second;
    // ".example.com" covers every subdomain of example.com; the closest wins.
    for (size_t dot = d.find('.'); dot != std::string::npos; dot = d.find('.', dot + 1)) {
      if (auto it = table_.find(d.substr(dot)); it != table_.end()) return it->second;
    }
    if (auto it = table_.find("."); it != table_.end()) return it->second;
  }
  if (smart_) return *smart_;
  return Route{esmtp_, std::nullopt, ""};
}

}  // namespace mx::delivery
