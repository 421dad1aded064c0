// client_lookup_test.cc — ClientLookup's cache: a client whose reverse DNS and
// DNSBL answers are cached is looked up on the caller's thread, at once, with
// no query and no hop through the DNS thread.
#include "mx/ingress/client_lookup.h"

#include <ares.h>
#include <arpa/nameser.h>
#include <gtest/gtest.h>

#include <optional>

#include "mx/common/clock.h"

namespace mx::ingress {
namespace {

// Answers every query at once: the name does not exist. Posted work is held.
class FakeDns final : public DnsChannel {
 public:
  explicit FakeDns(int* queries, int* posts) : queries_(queries), posts_(posts) {}
  void Query(const std::string&, int, Done done) override {
    ++*queries_;
    done(ARES_ENOTFOUND, nullptr, 0);
  }
  void Post(std::function<void()> fn) override {
    ++*posts_;
    held_.push_back(std::move(fn));
  }

 private:
  int* queries_;
  int* posts_;
  std::vector<std::function<void()>> held_;
};

TEST(ClientLookupTest, ACachedClientIsAnsweredAtOnceWithoutTheDnsThread) {
  int queries = 0, posts = 0;
  ClientLookup lookup(std::make_unique<FakeDns>(&queries, &posts), SystemClock::Instance());
  const std::vector<std::string> zones{"zen.example.test"};
  std::optional<ClientFacts> first;
  lookup.Lookup("192.0.2.9", /*reverse=*/true, zones, [&](ClientFacts f) { first = std::move(f); });
  ASSERT_TRUE(first.has_value());
  EXPECT_EQ(queries, 2);  // PTR and the DNSBL zone; NXDOMAIN is cached
  EXPECT_EQ(first->name, "unknown");
  ASSERT_EQ(first->dnsbl.size(), 1u);
  EXPECT_EQ(first->dnsbl[0].kind, DnsblAnswer::Kind::kNotListed);

  std::optional<ClientFacts> again;
  lookup.Lookup("192.0.2.9", true, zones, [&](ClientFacts f) { again = std::move(f); });
  ASSERT_TRUE(again.has_value()) << "a cached lookup waited for the DNS thread";
  EXPECT_EQ(queries, 2);
  EXPECT_EQ(posts, 0);
  EXPECT_EQ(again->dnsbl[0].kind, DnsblAnswer::Kind::kNotListed);
}

}  // namespace
}  // namespace mx::ingress
