// server.h — the SMTP listener: Boost.Asio C++20 coroutines, one io_context
// served by `threads` threads. Parsing and policy live in Session; this file
// only moves bytes, enforces timeouts and awaits the queue.
#pragma once

#include <memory>

#include "mx/common/clock.h"
#include "mx/common/config.h"
#include "mx/common/result.h"
#include "mx/ingress/enqueue_backend.h"
#include "mx/v1/types.pb.h"

namespace mx::ingress {

class IngressServer {
 public:
  virtual ~IngressServer() = default;
  // Stops accepting and closes sessions; returns when the threads have ended.
  virtual void Stop() = 0;
  // The bound port (useful when listening on port 0).
  virtual uint16_t port() const = 0;
  // SIGHUP: rebuilds the policy (maps, limits, TLS certificate, AUTH users)
  // from config and swaps it in whole; on error the old policy stays and the
  // error (with file:line) is returned. Sessions keep the policy they began with.
  virtual Status Reload(const Config& config) = 0;
  // mxctl drain: new connections get 421 4.3.2 and are closed; sessions in
  // progress finish. false: accept again.
  virtual void SetDraining(bool draining) = 0;
  // A pushed policy (mxctl policy apply) replaces the running one whole, or
  // not at all (the error is returned). TLS settings stay local.
  virtual Status ApplyBundle(const v1::PolicyBundle& bundle) = 0;
  virtual std::string PolicyVersion() const = 0;
  virtual uint64_t Sessions() const = 0;  // open SMTP sessions
};

Result<std::unique_ptr<IngressServer>> StartIngress(const Config& config, std::shared_ptr<EnqueueBackend> backend,
                                                    const Clock& clock);

// Loads the STARTTLS certificate chain and key as the server would (a key
// that does not match its certificate is an error): mxd --check.
Status CheckTls(const IngressConfig& config, const std::string& config_dir);

}  // namespace mx::ingress
