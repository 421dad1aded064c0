// probe.h — every metric the control role exports, in one place.
#pragma once

#include <prometheus/counter.h>
#include <prometheus/family.h>

#include <string>

namespace mx::control {

class Probe {
 public:
  static Probe& Get();

  // An Admin call by RPC name (a fixed set), before its token is checked.
  void Request(const char* method) { requests_->Add({{"method", method}}).Increment(); }
  // reason: unauthenticated (no or unknown token) | forbidden (role too low).
  void AuthFailure(const char* reason) { auth_failures_->Add({{"reason", reason}}).Increment(); }

 private:
  Probe();
  prometheus::Family<prometheus::Counter>* requests_;
  prometheus::Family<prometheus::Counter>* auth_failures_;
};

}  // namespace mx::control
