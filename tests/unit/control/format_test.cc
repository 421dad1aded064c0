// format_test.cc — mailq and mailstats output as golden files.
#include <gtest/gtest.h>

#include "../golden.h"
#include "format.h"

namespace mx::control {
namespace {

TEST(Format, EmptyQueue) {
  EXPECT_EQ(FormatMailq(v1::MailqResponse()), "Mail queue is empty\n");
}

TEST(Format, Mailq) {
  v1::MailqResponse resp;
  resp.set_matched(2);
  auto* m = resp.add_messages();
  m->mutable_envelope()->set_qid("0Ab3xYzQ1bR2kP");
  m->mutable_envelope()->set_size(1234);
  m->mutable_envelope()->set_arrival_unix_us(1'800'000'000'000'000);
  m->mutable_envelope()->set_sender("alice@example.test");
  auto* r = m->add_recipients();
  r->set_address("bob@remote.test");
  r->set_status(v1::RCPT_DEFERRED);
  r->set_last_reply("451 4.7.1 Greylisted, try again later");
  r = m->add_recipients();
  r->set_address("carol@remote.test");
  r->set_status(v1::RCPT_DEFERRED);
  r->set_last_reply("451 4.7.1 Greylisted, try again later");
  m = resp.add_messages();
  m->mutable_envelope()->set_qid("0Ab3xYzQ2cS3lQ");
  m->mutable_envelope()->set_size(99);
  m->mutable_envelope()->set_arrival_unix_us(1'800'000'100'000'000);
  r = m->add_recipients();
  r->set_address("alice@example.test");
  r->set_status(v1::RCPT_LEASED);
  test::ExpectGolden("control/mailq.ref", FormatMailq(resp));
}

TEST(Format, Mailstats) {
  v1::MailstatsResponse resp;
  resp.set_since_unix_us(1'800'000'000'000'000);
  auto* s = resp.add_mailers();
  s->set_mailer("esmtp");
  s->set_msgsfr(10);
  s->set_bytes_from(40960);
  s->set_msgsto(9);
  s->set_bytes_to(36864);
  s->set_msgsrej(2);
  s = resp.add_mailers();
  s->set_mailer("local");
  s->set_msgsfr(1);
  s->set_bytes_from(2000);
  test::ExpectGolden("control/mailstats.ref", FormatMailstats(resp));
}

TEST(Format, PolicyTest) {
  v1::PolicyTestResponse resp;
  auto step = [&](const char* stage, const char* subject, const char* result, const char* reply, const char* why) {
    auto* s = resp.add_steps();
    s->set_stage(stage);
    s->set_subject(subject);
    s->set_result(result);
    s->set_reply(reply);
    s->set_why(why);
    return s;
  };
  step("dnsbl", "bl.test", "listed", "", "127.0.0.2");
  step("connect", "unknown [192.0.2.9]", "reject", "554 5.7.1 Service unavailable", "dnsbl bl.test listed (127.0.0.2)");
  step("mail", "<a@sender.test>", "reject", "554 5.7.1 Service unavailable", "dnsbl bl.test listed (127.0.0.2)");
  auto* r = step("rcpt", "<team@corp.test>", "ok", "", "aliases:2");
  r->add_addresses("alice@example.test");
  r->add_addresses("bob@example.test");
  step("rcpt", "<x@relay.test>", "relay", "", "relay domain relay.test")->add_addresses("x@relay.test");
  step("data", "1 header(s)", "pass", "", "no rule matched");
  resp.set_outcome("reject");
  resp.set_reply("554 5.7.1 Service unavailable");
  resp.set_policy("local_domains=2 relay_domains=1 header_checks=0");
  test::ExpectGolden("control/policy_test.ref", FormatPolicyTest(resp));
}

TEST(Format, Inspect) {
  v1::InspectResponse resp;
  resp.set_shard(2);
  resp.set_body_bytes(2048);
  resp.set_headers("Received: from client.example.test\r\n\tby mx1.example.test\r\nSubject: hello\r\n");
  auto* e = resp.mutable_message()->mutable_envelope();
  e->set_qid("0Ab3xYzQ1bR2kP");
  e->set_sender("alice@example.test");
  e->set_arrival_unix_us(1'800'000'000'000'000);
  e->set_received_by("mx1");
  e->set_body_type("8BITMIME");
  e->set_priority(32048);
  e->set_client_name("client.example.test");
  e->set_client_addr("192.0.2.7");
  e->set_helo("client.example.test");
  e->set_envid("ENV1");
  e->set_ret("HDRS");
  e->set_msgid("<m1@example.test>");
  auto* r = resp.mutable_message()->add_recipients();
  r->set_address("bob@remote.test");
  r->set_status(v1::RCPT_DEFERRED);
  r->set_attempts(3);
  r->set_next_attempt_unix_us(1'800'003'600'000'000);
  r->set_last_attempt_unix_us(1'800'001'800'000'000);
  r->set_last_reply("451 4.7.1 Greylisted, try again later");
  r = resp.mutable_message()->add_recipients();
  r->set_address("carol@remote.test");
  r->set_status(v1::RCPT_DELIVERED);
  r->set_attempts(1);
  r->set_last_attempt_unix_us(1'800'000'060'000'000);
  r->set_last_reply("250 2.0.0 Ok: queued");
  r = resp.mutable_message()->add_recipients();
  r->set_address("dave@remote.test");
  r->set_status(v1::RCPT_READY);
  r->set_operator_bounce(true);
  test::ExpectGolden("control/inspect.ref", FormatInspect(resp));
}

TEST(Format, PolicyShow) {
  v1::PolicyShowResponse resp;
  EXPECT_EQ(FormatPolicyShow(resp),
            "No policy pushed: every node runs its own files (ingress section of its mx.yaml).\n"
            "node          policy            state\n");
  auto* c = resp.mutable_current();
  c->set_version("v3-1a2b3c4d");
  c->set_applied_unix_us(1'800'000'000'000'000);
  c->set_applied_by("alice");
  (*c->mutable_files())["maps/access"] = "";
  (*c->mutable_files())["maps/aliases"] = "";
  auto node = [&](const std::string& name, const std::string& version, const std::string& error) {
    auto* n = resp.add_nodes();
    n->set_name(name);
    n->set_policy_version(version);
    n->set_policy_error(error);
  };
  node("mx1", "v3-1a2b3c4d", "");
  node("mx2", "v2-99999999", "");
  node("mx3", "v2-99999999", "maps/access:2: unknown action 'MAYBE'");
  node("queue-1", "", "");  // runs no policy: not listed
  test::ExpectGolden("control/policy_show.ref", FormatPolicyShow(resp));
}

TEST(Format, PartialAnswersSayWhichShardsAreMissing) {
  v1::MailqResponse empty;
  auto* f = empty.add_failed_shards();
  f->set_shard(1);
  f->set_error("Deadline Exceeded");
  EXPECT_EQ(FormatMailq(empty), "Mail queue is empty (partial: some shards did not answer)\n");
  EXPECT_EQ(FormatPartial(empty.failed_shards()), "partial answer: shard 1 did not answer (Deadline Exceeded)\n");
  *empty.add_failed_shards() = *f;
  empty.mutable_failed_shards(1)->set_shard(3);
  EXPECT_EQ(FormatPartial(empty.failed_shards()),
            "partial answer: shard 1 did not answer (Deadline Exceeded); shard 3 did not answer (Deadline Exceeded)\n");

  v1::MailstatsResponse stats;
  stats.add_mailers()->set_mailer("esmtp");
  *stats.add_failed_shards() = *f;
  const std::string text = FormatMailstats(stats);
  EXPECT_NE(text.find(" (partial: the sums leave out shard 1, which did not answer)\n"), std::string::npos) << text;

  v1::HostStatusResponse hosts;
  EXPECT_EQ(FormatHostStatus(hosts), "Host status is empty\n");
  *hosts.add_failed_shards() = *f;
  EXPECT_EQ(FormatHostStatus(hosts), "Host status is empty (partial: some shards did not answer)\n");
}

}  // namespace
}  // namespace mx::control
