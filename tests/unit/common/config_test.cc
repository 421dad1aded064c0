// config_test.cc — mx.yaml parsing: defaults, units, and precise errors.
#include <gtest/gtest.h>

#include "mx/common/config.h"

namespace mx {
namespace {

TEST(Config, EmptyYieldsDefaults) {
  auto c = ParseConfig("");
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->ingress.max_message_size, 10u * 1024 * 1024);
  EXPECT_EQ(c->ingress.queue, std::vector<std::string>{"127.0.0.1:7400"});
  EXPECT_EQ(c->delivery.smtp_port, 25);
}

TEST(Config, ParsesUnits) {
  auto c = ParseConfig(
      "ingress:\n  max_message_size: 5M\n  command_timeout: 2m\n"
      "queue:\n  min_backoff: 30s\n  max_backoff: 4h\n  group_commit_linger: 500us\n");
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->ingress.max_message_size, 5u << 20);
  EXPECT_EQ(c->ingress.command_timeout, std::chrono::seconds(120));
  EXPECT_EQ(c->queue.min_backoff, std::chrono::seconds(30));
  EXPECT_EQ(c->queue.max_backoff, std::chrono::hours(4));
  EXPECT_EQ(c->queue.group_commit_linger, std::chrono::microseconds(500));
}

TEST(Config, UnknownKeyIsNamed) {
  auto c = ParseConfig("ingress:\n  max_mesage_size: 5M\n");
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().message(), "ingress.max_mesage_size: unknown key");
}

TEST(Config, BadValuesAreNamed) {
  auto c = ParseConfig("queue:\n  min_backoff: soon\n");
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("queue.min_backoff"), std::string::npos);
  c = ParseConfig("ingress:\n  mynetworks: [10.0.0.0/33]\n");
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("ingress.mynetworks"), std::string::npos);
  c = ParseConfig("queue:\n  min_backoff: 1h\n  max_backoff: 1m\n");
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("queue.max_backoff"), std::string::npos);
  c = ParseConfig("delivery:\n  smart_host: \"[10.0.0.1]:smtp\"\n");
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("delivery.smart_host"), std::string::npos);
  c = ParseConfig("ingress: [1, 2\n");
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("YAML"), std::string::npos);
}

TEST(Config, HostPort) {
  auto hp = ParseHostPort("[::1]:25");
  ASSERT_TRUE(hp.ok());
  EXPECT_EQ(hp->host, "::1");
  EXPECT_EQ(hp->port, 25);
  EXPECT_FALSE(ParseHostPort("127.0.0.1").ok());
  EXPECT_EQ(ParseHostPort("mx.example", 25)->port, 25);
  EXPECT_FALSE(ParseHostPort("h:70000").ok());
}

}  // namespace
}  // namespace mx
