// resolver_test.cc — the c-ares resolver's IP-literal shortcut: a smart host
// given as an address is answered at once, on the caller's thread, without
// asking DNS (the server configured here does not answer: a query fails).
#include <gtest/gtest.h>

#include <chrono>
#include <future>
#include <optional>

#include "mx/delivery/resolver.h"

namespace mx::delivery {
namespace {

using namespace std::chrono_literals;

// Port 9 (discard) on loopback: nothing answers DNS there.
std::unique_ptr<Resolver> Silent(ResolverOptions options = {}) {
  auto r = MakeAresResolver({"127.0.0.1:9"}, 300ms, options);
  EXPECT_TRUE(r.ok()) << r.status().ToString();
  return std::move(r).value();
}

MxAnswer Host(Resolver& r, const std::string& host) {
  std::promise<MxAnswer> p;
  auto f = p.get_future();
  r.ResolveHost(host, [&p](MxAnswer a) { p.set_value(std::move(a)); });
  EXPECT_EQ(f.wait_for(10s), std::future_status::ready);
  return f.get();
}

// Answered before ResolveHost returns: no hop through the resolver thread.
MxAnswer AtOnce(Resolver& r, const std::string& host) {
  std::optional<MxAnswer> got;
  r.ResolveHost(host, [&got](MxAnswer a) { got = std::move(a); });
  EXPECT_TRUE(got.has_value()) << host << " went through the resolver thread";
  return got.value_or(MxAnswer{});
}

TEST(AresResolverTest, AnIpLiteralHostIsAnsweredAtOnceWithoutDns) {
  auto r = Silent();
  MxAnswer v4 = AtOnce(*r, "192.0.2.7");
  ASSERT_EQ(v4.kind, MxAnswer::Kind::kOk) << v4.error;
  ASSERT_EQ(v4.hosts.size(), 1u);
  EXPECT_EQ(v4.hosts[0].addrs, std::vector<std::string>{"192.0.2.7"});
  MxAnswer v6 = AtOnce(*r, "2001:db8::25");
  ASSERT_EQ(v6.kind, MxAnswer::Kind::kOk) << v6.error;
  EXPECT_EQ(v6.hosts[0].addrs, std::vector<std::string>{"2001:db8::25"});
}

TEST(AresResolverTest, ANameAsksTheServerWhichHereFailsTemporarily) {
  auto r = Silent();
  MxAnswer a = Host(*r, "relay.example.test");
  EXPECT_EQ(a.kind, MxAnswer::Kind::kTempFail);
  EXPECT_TRUE(a.hosts.empty());
}

TEST(AresResolverTest, ALiteralOfAFamilyNotInUseIsNotDeliverable) {
  ResolverOptions v4only;
  v4only.ipv6 = false;
  auto r = Silent(v4only);
  MxAnswer a = Host(*r, "2001:db8::25");
  EXPECT_NE(a.kind, MxAnswer::Kind::kOk);
  EXPECT_TRUE(a.hosts.empty());
}

}  // namespace
}  // namespace mx::delivery
