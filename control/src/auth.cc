// auth.cc — bearer tokens with roles for the Admin service.
#include "mx/control/auth.h"

#include <openssl/crypto.h>

#include "mx/common/address.h"
#include "mx/common/log.h"
#include "mx/common/map_file.h"
#include "probe.h"

namespace mx::control {
namespace {

constexpr size_t kMinTokenLength = 20;

// Compares in time independent of where the strings differ.
bool SameSecret(std::string_view a, std::string_view b) {
  return a.size() == b.size() && CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

}  // namespace

AdminAuth AdminAuth::Open() {
  AdminAuth a;
  a.open_ = true;
  return a;
}

Result<AdminAuth> AdminAuth::Load(const ControlConfig& config, const std::string& config_dir) {
  if (config.auth == "none") return Open();
  if (config.admin_tokens_file.empty()) {
    return Status(Code::kInvalidArgument,
                  "control.admin_tokens_file is required (or control.auth: none to leave the admin API open)");
  }
  std::string path = config.admin_tokens_file;
  if (path.front() != '/') path = config_dir + "/" + path;
  auto text = ReadMapFile(path);
  if (!text.ok()) return Status(text.status().code(), "control.admin_tokens_file: " + text.status().message());
  return Parse(*text, path);
}

Result<AdminAuth> AdminAuth::Parse(std::string_view text, const std::string& name) {
  AdminAuth a;
  Status st = ForEachMapLine(text, [&](int n, std::string_view line) -> Status {
    if (IsMapComment(line)) return Status::Ok();
    auto [who, rest] = SplitMapKey(line);
    auto [role, secret] = SplitMapKey(rest);
    if (secret.empty()) return MapError(name, n, "expected '<name> <role> <token>'");
    if (secret.find_first_of(" \t") != std::string_view::npos) return MapError(name, n, "a token has no spaces");
    Token t{std::string(who), Role::kRead, std::string(secret)};
    if (role == "operator") {
      t.role = Role::kOperator;
    } else if (role != "read") {
      return MapError(name, n, "unknown role '" + std::string(role) + "' (read or operator)");
    }
    if (t.secret.size() < kMinTokenLength) {
      return MapError(name, n, "token of '" + t.name + "' is shorter than " + std::to_string(kMinTokenLength));
    }
    for (const auto& o : a.tokens_) {
      if (o.name == t.name) return MapError(name, n, "duplicate name '" + t.name + "'");
      if (o.secret == t.secret) return MapError(name, n, "token of '" + t.name + "' is also '" + o.name + "''s");
    }
    a.tokens_.push_back(std::move(t));
    return Status::Ok();
  });
  if (!st.ok()) return st;
  if (a.tokens_.empty()) return Status(Code::kInvalidArgument, name + ": no tokens");
  return a;
}

grpc::Status AdminAuth::Check(const grpc::ServerContextBase& ctx, Role need, const char* method,
                              std::string* who) const {
  Probe::Get().Request(method);
  if (open_) {
    *who = "anonymous";
    return grpc::Status::OK;
  }
  auto refuse = [&](grpc::StatusCode code, const char* reason, const std::string& text) {
    Probe::Get().AuthFailure(reason);
    log::Warn("admin: " + std::string(method) + " from " + ctx.peer() + " refused: " + text);
    return grpc::Status(code, text);
  };
  const auto& md = ctx.client_metadata();
  auto it = md.find("authorization");
  if (it == md.end()) {
    return refuse(grpc::StatusCode::UNAUTHENTICATED, "unauthenticated",
                  "admin calls need a token (authorization: Bearer <token>; mxctl --token-file)");
  }
  std::string_view value(it->second.data(), it->second.size());
  constexpr std::string_view kBearer = "Bearer ";
  if (value.size() <= kBearer.size() || ToLower(value.substr(0, kBearer.size())) != "bearer ") {
    return refuse(grpc::StatusCode::UNAUTHENTICATED, "unauthenticated", "authorization must be 'Bearer <token>'");
  }
  value.remove_prefix(kBearer.size());
  const Token* found = nullptr;
  for (const auto& t : tokens_) {
    if (SameSecret(t.secret, value)) found = &t;  // no early exit: the time does not tell which
  }
  if (!found) return refuse(grpc::StatusCode::UNAUTHENTICATED, "unauthenticated", "unknown token");
  if (found->role < need) {
    return refuse(grpc::StatusCode::PERMISSION_DENIED, "forbidden",
                  "'" + found->name + "' has role read; " + method + " needs operator");
  }
  *who = found->name;
  return grpc::Status::OK;
}

}  // namespace mx::control
