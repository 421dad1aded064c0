// dsn_test.cc — RFC 3464 bounces as golden files; when no DSN is due.
#include <gtest/gtest.h>

#include "../golden.h"
#include "mx/delivery/dsn.h"

namespace mx::delivery {
namespace {

DsnInput Input() {
  DsnInput in;
  in.original.set_qid("0Ab3xYzQ1bR2kP");
  in.original.set_sender("alice@example.test");
  in.original.set_arrival_unix_us(1'800'000'000'000'000);
  in.original.set_client_addr("192.0.2.7");
  in.original.set_client_name("client.example.test");
  in.original_body = "Received: from x\r\nSubject: hello\r\nMessage-ID: <m1@example.test>\r\n\r\nHi Bob.\r\n";
  in.failed.push_back(FailedRecipient{"bob@remote.test", "", "5.1.1", "mx1.remote.test. [127.0.0.2]",
                                      "550 5.1.1 <bob@remote.test>: Recipient address rejected"});
  in.reporting_mta = "mx.example.test";
  in.dsn_qid = "0Ab3xYzQ2cS3lQ";
  in.now_unix_us = 1'800'000'060'000'000;
  return in;
}

TEST(Dsn, FullReturn) {
  v1::NewMessage m;
  ASSERT_TRUE(BuildDsn(Input(), &m));
  EXPECT_EQ(m.envelope().sender(), "");
  EXPECT_TRUE(m.envelope().is_dsn());
  ASSERT_EQ(m.recipients_size(), 1);
  EXPECT_EQ(m.recipients(0).address(), "alice@example.test");
  EXPECT_EQ(m.envelope().size(), m.body().size());
  test::ExpectGolden("delivery/golden/dsn_full.ref", m.body());
}

TEST(Dsn, BulkPrecedenceReturnsHeadersOnly) {
  auto in = Input();
  in.original.set_precedence_class(-60);
  v1::NewMessage m;
  ASSERT_TRUE(BuildDsn(in, &m));
  EXPECT_NE(m.body().find("text/rfc822-headers"), std::string::npos);
  EXPECT_EQ(m.body().find("Hi Bob."), std::string::npos);
  test::ExpectGolden("delivery/golden/dsn_headers.ref", m.body());
}

TEST(Dsn, NeverToTheNullSenderOrForADsn) {
  auto in = Input();
  in.original.set_sender("");
  v1::NewMessage m;
  EXPECT_FALSE(BuildDsn(in, &m));
  in = Input();
  in.original.set_is_dsn(true);
  EXPECT_FALSE(BuildDsn(in, &m));
}

}  // namespace
}  // namespace mx::delivery
