// inject.h — the gRPC injection API (proto/mx/v1/inject.proto) for applications.
//
// A request is held to the SMTP acceptance policy as an authenticated
// client: access From:/To:, aliases and virtusertable, header rules, the
// suppression list, the size limit; accepted mail is DKIM-signed like SMTP
// submissions and queued with the same Enqueue (never OK before the
// quorum commit). Templates render {{name}} from the request's and each
// recipient's variables into one message per recipient. Errors are gRPC
// statuses naming the field; policy refusals are per recipient, with the
// SMTP reply RCPT would have got.
#pragma once

#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>

#include "mx/common/clock.h"
#include "mx/common/qid.h"
#include "mx/common/result.h"
#include "mx/ingress/enqueue_backend.h"
#include "mx/ingress/policy.h"
#include "mx/v1/inject.pb.h"
#include "session.h"
#include "suppressions.h"

namespace grpc {
class Service;
}

namespace mx::ingress {

// ingress.inject_tokens_file: "<name> <token>" lines ('#' comments), tokens
// of at least 20 characters, names and tokens unique. token -> name.
Result<std::map<std::string, std::string>> ParseInjectTokens(std::string_view text, const std::string& origin);

// {{name}} replaced by vars[name] (spaces inside the braces allowed); an
// unknown name is an error naming it.
Result<std::string> RenderTemplate(std::string_view text, const std::map<std::string, std::string>& vars);

// The RFC 5322 message a template makes for one recipient (vars already
// merged, "to" among them): From, To, Subject (RFC 2047 when not ASCII),
// Date, MIME-Version, the template's headers, then text/plain or
// multipart/alternative with text/html. Errors name the template field.
Result<std::string> BuildTemplateMessage(const v1::InjectTemplate& t, const std::map<std::string, std::string>& vars,
                                         const std::string& boundary, int64_t now_unix_us);

struct InjectContext {
  std::function<std::shared_ptr<const Policy>()> policy;  // the policy in force
  std::shared_ptr<EnqueueBackend> backend;
  const SuppressionSet* suppressions = nullptr;
  const Clock* clock = nullptr;
  QidGenerator* qids = nullptr;
  SessionObserver* observer = nullptr;  // rejections, DKIM and discards, as for SMTP
  std::string node_name, hostname;
  std::map<std::string, std::string> tokens;  // token -> name
  std::chrono::milliseconds enqueue_timeout{30000};
};

std::unique_ptr<grpc::Service> MakeInjectService(InjectContext context);

}  // namespace mx::ingress
