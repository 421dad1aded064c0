// permit_client.cc — Permit calls as awaitables, holds and their renewal.
#include "permit_client.h"

#include <boost/asio.hpp>

#include "mx/common/log.h"

namespace mx::delivery {
namespace {

namespace asio = boost::asio;
using asio::use_awaitable;

constexpr uint32_t kTtlMs = static_cast<uint32_t>(queue::kPermitTtlUs / 1000);

template <typename Token>
auto AsyncPermit(MetadataLink& link, InFlightCalls& calls, v1::PermitRequest req, Token&& token) {
  return asio::async_initiate<Token, void(PermitAnswer)>(
      [&link, &calls](auto handler, const v1::PermitRequest& r) {
        auto ex = asio::get_associated_executor(handler);
        auto h = std::make_shared<decltype(handler)>(std::move(handler));
        calls.Begin();
        link.Permit(r, [&calls, h, ex](const grpc::Status& st, const v1::PermitResponse& resp) {
          PermitAnswer a;
          a.granted = st.ok() && resp.granted();
          a.retry_after = std::chrono::milliseconds(st.ok() ? resp.retry_after_ms() : 500);
          asio::post(ex, [h, a]() mutable { (*h)(a); });
          calls.End();
        });
      },
      token, std::move(req));
}

}  // namespace

asio::awaitable<PermitAnswer> PermitClient::Ask(v1::PermitRequest req) {
  auto ask = AsyncPermit(link_, calls_, std::move(req), use_awaitable);
  PermitAnswer a = co_await std::move(ask);
  co_return a;
}

asio::awaitable<bool> PermitClient::AwaitRate(std::string key, RateLimit rate,
                                              std::chrono::steady_clock::time_point deadline) {
  for (;;) {
    v1::PermitRequest req;
    req.set_op(v1::PermitRequest::RATE);
    auto* k = req.add_holds()->add_keys();
    k->set_key(key);
    k->set_limit(rate.count);
    k->set_period_s(rate.period_s);
    auto ask = Ask(std::move(req));
    PermitAnswer pa = co_await std::move(ask);
    if (pa.granted) co_return true;
    if (std::chrono::steady_clock::now() + pa.retry_after > deadline) co_return false;
    asio::steady_timer t(co_await asio::this_coro::executor);
    t.expires_after(pa.retry_after);
    boost::system::error_code ec;
    co_await t.async_wait(asio::redirect_error(use_awaitable, ec));
  }
}

asio::awaitable<PermitAnswer> PermitClient::Acquire(std::string holder, std::vector<v1::PermitKey> keys) {
  v1::PermitRequest req;
  req.set_op(v1::PermitRequest::ACQUIRE);
  req.set_ttl_ms(kTtlMs);
  auto* h = req.add_holds();
  h->set_holder(holder);
  for (const auto& k : keys) *h->add_keys() = k;
  auto ask = Ask(std::move(req));
  PermitAnswer pa = co_await std::move(ask);
  if (pa.granted) {
    std::lock_guard lock(mu_);
    holds_[holder] = std::move(keys);
  }
  co_return pa;
}

void PermitClient::Release(const std::string& holder) {
  if (holder.empty()) return;
  {
    std::lock_guard lock(mu_);
    holds_.erase(holder);
  }
  v1::PermitRequest req;
  req.set_op(v1::PermitRequest::RELEASE);
  req.add_holds()->set_holder(holder);
  calls_.Begin();
  link_.Permit(std::move(req), [this](const grpc::Status&, const v1::PermitResponse&) { calls_.End(); });
}

void PermitClient::RenewAll() {
  v1::PermitRequest req;
  req.set_op(v1::PermitRequest::RENEW);
  req.set_ttl_ms(kTtlMs);
  {
    std::lock_guard lock(mu_);
    if (holds_.empty()) return;
    for (const auto& [holder, keys] : holds_) {
      auto* h = req.add_holds();
      h->set_holder(holder);
      for (const auto& k : keys) *h->add_keys() = k;
    }
  }
  calls_.Begin();
  link_.Permit(std::move(req), [this](const grpc::Status& st, const v1::PermitResponse&) {
    if (!st.ok()) log::Warn("renewing delivery permits failed: " + st.error_message());
    calls_.End();
  });
}

size_t PermitClient::holds() const {
  std::lock_guard lock(mu_);
  return holds_.size();
}

}  // namespace mx::delivery
