// config_test.cc — mx.yaml parsing: defaults, units, and precise errors.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "mx/common/config.h"

namespace mx {
namespace {

TEST(Config, EmptyYieldsDefaults) {
  auto c = ParseConfig("");
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->ingress.max_message_size, 10u * 1024 * 1024);
  EXPECT_EQ(c->ingress.queue, std::vector<std::string>{"127.0.0.1:7400"});
  EXPECT_EQ(c->delivery.smtp_port, 25);
  EXPECT_EQ(c->delivery.connection_cache_size, c->delivery.concurrency);  // every session in use may stay
  c = ParseConfig("delivery:\n  concurrency: 200\n");
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->delivery.connection_cache_size, 200u);
  c = ParseConfig("delivery:\n  connection_cache_size: 0\n");
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->delivery.connection_cache_size, 0u);  // off
}

TEST(Config, ParsesUnits) {
  auto c = ParseConfig(
      "ingress:\n  max_message_size: 5M\n  command_timeout: 2m\n"
      "queue:\n  min_backoff: 30s\n  max_backoff: 4h\n  group_commit_linger: 500us\n  raft_segment_size: 16M\n");
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->ingress.max_message_size, 5u << 20);
  EXPECT_EQ(c->ingress.command_timeout, std::chrono::seconds(120));
  EXPECT_EQ(c->queue.min_backoff, std::chrono::seconds(30));
  EXPECT_EQ(c->queue.max_backoff, std::chrono::hours(4));
  EXPECT_EQ(c->queue.group_commit_linger, std::chrono::microseconds(500));
  EXPECT_TRUE(c->queue.group_commit_tuned);
  EXPECT_EQ(c->queue.raft_segment_size, 16u << 20);
}

TEST(Config, GroupCommitIsTunedOnlyWhenLingerOrInflightIsSet) {
  auto plain = ParseConfig("queue:\n  group_commit_max_commands: 64\n");
  ASSERT_TRUE(plain.ok()) << plain.status().ToString();
  EXPECT_FALSE(plain->queue.group_commit_tuned);
  auto inflight = ParseConfig("queue:\n  max_inflight_entries: 2\n");
  ASSERT_TRUE(inflight.ok()) << inflight.status().ToString();
  EXPECT_TRUE(inflight->queue.group_commit_tuned);
}

TEST(Config, OverridesSetKeysBeforeValidation) {
  const std::string file =
      "node_name: from-file\nqueue:\n  peers:\n"
      "    - {id: 1, grpc: \"q-0.peers:7400\", raft: \"q-0.peers:7500\"}\n"
      "    - {id: 2, grpc: \"q-1.peers:7400\", raft: \"q-1.peers:7500\"}\n";
  auto c = ParseConfig(file, {"node_name=mx-queue-1", "queue.node_id=2", "ingress.mynetworks=[10.0.0.0/8]",
                              "delivery.smart_host=\"[relay.test]:2525\""});
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->node_name, "mx-queue-1");
  EXPECT_EQ(c->queue.node_id, 2u);
  EXPECT_EQ(c->ingress.mynetworks, std::vector<std::string>{"10.0.0.0/8"});
  EXPECT_EQ(c->delivery.smart_host, "[relay.test]:2525");
  EXPECT_EQ(c->queue.peers.size(), 2u);
  // Overridden values are validated like the file's.
  auto bad = ParseConfig(file, {"queue.node_id=zero"});
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("queue.node_id"), std::string::npos) << bad.status().message();
  bad = ParseConfig(file, {"queue.nodeid=2"});
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("queue.nodeid: unknown key"), std::string::npos) << bad.status().message();
  bad = ParseConfig(file, {"node_name.x=1"});
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("node_name is not a map"), std::string::npos) << bad.status().message();
  bad = ParseConfig(file, {"no-equals-sign"});
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("expected key.path=value"), std::string::npos) << bad.status().message();
}

TEST(Config, PeerMarkedJoinDoesNotBootstrapAndMakesItsNodeJoin) {
  const std::string file =
      "queue:\n  peers:\n"
      "    - {id: 1, grpc: \"a:7400\", raft: \"a:7500\"}\n"
      "    - {id: 4, grpc: \"d:7400\", raft: \"d:7500\", join: true}\n";
  auto founder = ParseConfig(file, {"queue.node_id=1"});
  ASSERT_TRUE(founder.ok()) << founder.status().ToString();
  EXPECT_FALSE(founder->queue.join);
  EXPECT_TRUE(founder->queue.peers[1].join);
  auto joiner = ParseConfig(file, {"queue.node_id=4"});
  ASSERT_TRUE(joiner.ok()) << joiner.status().ToString();
  EXPECT_TRUE(joiner->queue.join);
  auto none = ParseConfig("queue:\n  peers:\n    - {id: 1, grpc: \"a:7400\", raft: \"a:7500\", join: true}\n");
  ASSERT_FALSE(none.ok());
  EXPECT_NE(none.status().message().find("every peer has join: true"), std::string::npos);
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
  c = ParseConfig("queue:\n  raft_segment_size: 64K\n");  // below libraft's sensible minimum
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("queue.raft_segment_size"), std::string::npos);
  c = ParseConfig("ingress: [1, 2\n");
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("YAML"), std::string::npos);
}

TEST(Config, DkimKeysAreCheckedAndTheirPathsFollowTheConfigFile) {
  auto c = ParseConfig(
      "ingress:\n  dkim:\n    keys:\n      - {domain: example.com, selector: s1, key_file: k.pem}\n"
      "    signature_ttl: 7d\n");
  ASSERT_TRUE(c.ok()) << c.status().message();
  ASSERT_EQ(c->ingress.dkim.keys.size(), 1u);
  EXPECT_EQ(c->ingress.dkim.signature_ttl, std::chrono::hours(24 * 7));
  EXPECT_TRUE(c->ingress.dkim.oversign);
  for (const auto& [yaml, key] : std::vector<std::pair<std::string, std::string>>{
           {"{domain: example.com, key_file: k.pem}", "ingress.dkim.keys[0]: needs domain, selector and key_file"},
           {"{domain: example.com, selector: 's 1', key_file: k.pem}", "ingress.dkim.keys[0].selector"},
           {"{domain: 'ex ample.com', selector: s, key_file: k.pem}", "ingress.dkim.keys[0].domain"},
           {"{domain: example.com, selector: s, key_file: k.pem, algorithm: rsa}",
            "ingress.dkim.keys[0].algorithm: unknown key"}}) {
    auto bad = ParseConfig("ingress:\n  dkim:\n    keys:\n      - " + yaml + "\n");
    ASSERT_FALSE(bad.ok()) << yaml;
    EXPECT_NE(bad.status().message().find(key), std::string::npos) << bad.status().message();
  }
  // A relative key file is relative to mx.yaml, not to where mxd runs.
  const std::string dir = testing::TempDir() + "mx-config-dkim";
  std::filesystem::create_directories(dir);
  std::ofstream(dir + "/mx.yaml") << "ingress:\n  dkim:\n    keys:\n"
                                     "      - {domain: example.com, selector: s1, key_file: keys/k.pem}\n"
                                     "      - {domain: example.com, selector: s2, key_file: /etc/k.pem}\n";
  auto loaded = LoadConfig(dir + "/mx.yaml");
  ASSERT_TRUE(loaded.ok()) << loaded.status().message();
  EXPECT_EQ(loaded->ingress.dkim.keys[0].key_file, dir + "/keys/k.pem");
  EXPECT_EQ(loaded->ingress.dkim.keys[1].key_file, "/etc/k.pem");
  std::filesystem::remove_all(dir);
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
