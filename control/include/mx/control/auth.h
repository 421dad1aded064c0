// auth.h — who may call the Admin service (the cluster's restrictmailq and
// restrictqrun): bearer tokens from a secret file, each with a role.
//
// Token file (control.admin_tokens_file), one token per line, '#' comments:
//
//   <name>  <role>  <token>
//
// role `read` may list (mailq, mailstats, hoststat, inspect, cluster status,
// policy test); role `operator` may also change things (qrun, hold, release,
// delete, bounce, purgestat, replicas). Tokens are at least 20 characters;
// names and tokens are unique. Clients send "authorization: Bearer <token>".
// Health checking and reflection stay open (they are separate services).
#pragma once

#include <grpcpp/server_context.h>
#include <grpcpp/support/status.h>

#include <string>
#include <string_view>
#include <vector>

#include "mx/common/config.h"
#include "mx/common/result.h"

namespace mx::control {

enum class Role { kRead = 1, kOperator = 2 };

class AdminAuth {
 public:
  // control.auth: "tokens" reads control.admin_tokens_file (relative to
  // config_dir); "none" lets every caller do everything.
  static Result<AdminAuth> Load(const ControlConfig& config, const std::string& config_dir);
  static Result<AdminAuth> Parse(std::string_view text, const std::string& name);
  static AdminAuth Open();

  // OK with the caller's name in *who; UNAUTHENTICATED without a known token;
  // PERMISSION_DENIED when the token's role is below need. Refusals are
  // logged and counted (mx_control_auth_failures_total{reason}).
  grpc::Status Check(const grpc::ServerContextBase& ctx, Role need, const char* method, std::string* who) const;

  bool open() const { return open_; }
  size_t size() const { return tokens_.size(); }

 private:
  struct Token {
    std::string name;
    Role role = Role::kRead;
    std::string secret;
  };
  bool open_ = false;
  std::vector<Token> tokens_;
};

}  // namespace mx::control
