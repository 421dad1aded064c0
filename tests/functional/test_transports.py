"""Delivery transports and limits against real peers (aiosmtpd SMTP and LMTP):
the connection cache, messages per connection, SingleThreadDelivery and
max connections held across two delivery processes, mailertable routes (LMTP,
a mailer's M= size, error: entries), mxctl bounce, and AAAA handling
(WorkAroundBrokenAAAA, delivery over IPv6) with a DNS server that fails AAAA."""
import re
import smtplib

import pytest

from conftest import MX_DOWN, MX_GOOD, MX_GOOD2, MX_SENDER
from mxtest import ExtraDelivery, Sink, TinyDns, free_port, metric_value, wait_for


def send(node, rcpts, n=1, sender="a@sender.test", size=0):
    with smtplib.SMTP("127.0.0.1", node.smtp_port) as s:
        for i in range(n):
            body = f"Subject: m{i}\r\n\r\nx\r\n" + ("y" * 70 + "\r\n") * (size // 72)
            s.sendmail(sender, rcpts, body.encode())


def test_connection_cache_reuses_sessions_with_rset(dns, sinks, mxd_factory):
    port = free_port(MX_GOOD)
    d = dns(port)
    sink = sinks(MX_GOOD, port)
    node = mxd_factory(delivery__dns_servers=[d.server], delivery__smtp_port=port, delivery__concurrency=4,
                       delivery__connection_cache_size=4)
    send(node, ["bob@implicit.test"], n=100)
    wait_for(lambda: sink.count() == 100, timeout=60, what="100 messages")
    connections, _, rsets = sink.stats()
    assert connections <= 4, sink.stats()
    assert rsets == 100 - connections  # RSET before every reuse
    cached = metric_value(node.metrics(), "mx_delivery_connections_total", {"connection": "cached"})
    assert cached == 100 - connections


def test_messages_per_connection_limit(dns, sinks, mxd_factory):
    port = free_port(MX_GOOD)
    d = dns(port)
    sink = sinks(MX_GOOD, port)
    node = mxd_factory(delivery__dns_servers=[d.server], delivery__smtp_port=port, delivery__concurrency=1,
                       delivery__destinations=[{"domains": ["implicit.test"], "max_messages_per_connection": 3}])
    send(node, ["bob@implicit.test"], n=10)
    wait_for(lambda: sink.count() == 10, timeout=60, what="10 messages")
    connections, max_open, rsets = sink.stats()
    assert (connections, max_open) == (4, 1), sink.stats()  # 3 + 3 + 3 + 1
    assert rsets == 6


@pytest.mark.parametrize("limits,most", [
    ({"single_thread_delivery": True}, 1),
    ({"destinations": [{"domains": ["implicit.test"], "max_connections": 2}]}, 2),
], ids=["single_thread_delivery", "max_connections"])
def test_connection_limits_hold_across_delivery_processes(dns, sinks, mxd_factory, tmp_path, limits, most):
    port = free_port(MX_GOOD)
    d = dns(port)
    sink = sinks(MX_GOOD, port, slow_data=1000, data_delay=0.2)  # every DATA takes a while
    overrides = {f"delivery__{k}": v for k, v in limits.items()}
    node = mxd_factory(delivery__dns_servers=[d.server], delivery__smtp_port=port, delivery__concurrency=8,
                       delivery__connection_cache_timeout="1s", **overrides)
    second = ExtraDelivery(node, tmp_path)
    try:
        send(node, [f"u@implicit.test"], n=30)
        wait_for(lambda: sink.count() == 30, timeout=120, what="30 messages under the limit")
        _, max_open, _ = sink.stats()
        assert max_open <= most, sink.stats()
        # The limit was contended, and both workers delivered under it.
        refused = metric_value(node.metrics(), "mx_queue_permits_total", {"op": "acquire", "result": "refused"})
        assert refused and refused > 0
        assert "stat=Sent" in node.logtext() and "stat=Sent" in second.logtext()
    finally:
        second.stop()
    wait_for(lambda: "Mail queue is empty" in node.mxctl("mailq"), what="the queue to drain")


def test_mailertable_lmtp_mailer_size_and_error_entries(dns, sinks, mxd_factory, tmp_path):
    port = free_port(MX_GOOD)
    d = dns(port)
    lmtp_port = free_port(MX_GOOD)
    lmtp = sinks(MX_GOOD, lmtp_port, lmtp=True, data_replies={"full@lmtp.test": "552 5.2.2 Mailbox full"})
    small = sinks(MX_GOOD2, port)
    senders = sinks(MX_SENDER, port)  # sender.test: where the DSNs go
    table = tmp_path / "mailertable"
    table.write_text(f"lmtp.test   lmtp:[{MX_GOOD}]:{lmtp_port}\n"
                     f"small.test  small:[{MX_GOOD2}]\n"
                     "gone.test   error:5.1.2:550 gone.test does not receive mail\n")
    node = mxd_factory(delivery__dns_servers=[d.server], delivery__smtp_port=port, delivery__mailertable=str(table),
                       delivery__mailers={"small": {"protocol": "smtp", "max_message_size": "2K"}})
    send(node, ["ok@lmtp.test", "full@lmtp.test"])
    wait_for(lambda: lmtp.count() == 1, what="the LMTP delivery")
    assert lmtp.messages[0][1] == ["ok@lmtp.test"]
    wait_for(lambda: senders.count() == 1, what="the DSN for the full mailbox")
    dsn = senders.messages[0][2].decode()
    assert "Final-Recipient: rfc822; full@lmtp.test" in dsn and "Status: 5.2.2" in dsn, dsn

    send(node, ["x@small.test"], size=4000)  # over the small mailer's M=2K
    send(node, ["y@small.test"])
    wait_for(lambda: small.count() == 1 and senders.count() == 2, what="the small delivery and the size bounce")
    assert small.messages[0][1] == ["y@small.test"]
    assert "Message is too large for mailer small" in senders.messages[1][2].decode()

    send(node, ["z@gone.test"])
    wait_for(lambda: senders.count() == 3, what="the error: entry's bounce")
    assert "550 5.1.2 gone.test does not receive mail" in senders.messages[2][2].decode()
    log = node.logtext()
    assert "to=<ok@lmtp.test>" in log and "mailer=lmtp" in log
    # Bounce classification: in the log line and the metrics.
    assert re.search(r"to=<full@lmtp.test>.*class=quota, stat=", log), log
    assert re.search(r"to=<z@gone.test>.*class=bad_domain, stat=", log), log
    assert metric_value(node.metrics(), "mx_delivery_reply_classes_total", {"class": "quota", "result": "bounced"}) == 1
    wait_for(lambda: "Mail queue is empty" in node.mxctl("mailq"), what="the queue to drain")
    rows = {l.split()[-1]: l.split() for l in node.mxctl("mailstats").splitlines() if l.strip()[:1].isdigit()}
    assert rows["lmtp"][3] == "1" and rows["small"][3] == "1", rows  # msgsto per mailer


def test_mxctl_bounce_returns_deferred_mail_with_a_dsn(dns, sinks, mxd_factory):
    port = free_port(MX_GOOD)
    d = dns(port)
    senders = sinks(MX_SENDER, port)
    node = mxd_factory(delivery__dns_servers=[d.server], delivery__smtp_port=port,
                       queue__min_backoff="1h", queue__max_backoff="2h")
    send(node, ["stuck@down.test", "other@down.test"])  # down.test's only MX refuses
    wait_for(lambda: "Connection refused" in node.mxctl("mailq"), what="the deferral")
    assert "1 recipient(s) to be returned" in node.mxctl("bounce", "-R", "stuck@")
    wait_for(lambda: senders.count() == 1, what="the DSN")
    dsn = senders.messages[0][2].decode()
    assert "Final-Recipient: rfc822; stuck@down.test" in dsn and "Status: 5.0.0" in dsn, dsn
    assert "other@down.test" not in dsn.split("message/delivery-status")[1].split("text/rfc822-headers")[0]
    out = node.mxctl("mailq")
    assert "<other@down.test>" in out and "<stuck@down.test>" not in out, out
    unfiltered = node.mxctl_run("bounce")
    assert unfiltered.returncode == 64 and "bounce needs a filter" in unfiltered.stderr


def test_aaaa_servfail_defers_unless_worked_around(sinks, mxd_factory):
    port = free_port(MX_GOOD)
    sink = sinks(MX_GOOD, port)
    dns = TinyDns(records={("aaaa.test", "MX"): ["10 mx.aaaa.test"], ("mx.aaaa.test", "A"): [MX_GOOD]},
                  rcodes={("mx.aaaa.test", "AAAA"): 2})  # SERVFAIL
    try:
        strict = mxd_factory("strict", delivery__dns_servers=[dns.server], delivery__smtp_port=port)
        send(strict, ["u@aaaa.test"])
        wait_for(lambda: "mx.aaaa.test (AAAA)" in strict.mxctl("mailq"), what="the deferral for the AAAA failure")
        assert sink.count() == 0
        strict.stop()

        lenient = mxd_factory("lenient", delivery__dns_servers=[dns.server], delivery__smtp_port=port,
                              delivery__work_around_broken_aaaa=True)
        send(lenient, ["v@aaaa.test"])
        wait_for(lambda: sink.count() == 1, what="delivery over IPv4 despite the AAAA failure")
        assert metric_value(lenient.metrics(), "mx_delivery_aaaa_workaround_total") >= 1
    finally:
        dns.stop()


def test_delivery_over_ipv6_first(sinks, mxd_factory):
    port = free_port("::1")
    sink = Sink("::1", port)
    dns = TinyDns(records={("v6.test", "MX"): ["10 mx.v6.test"], ("mx.v6.test", "AAAA"): ["::1"],
                           ("mx.v6.test", "A"): [MX_DOWN]})
    try:
        node = mxd_factory(delivery__dns_servers=[dns.server], delivery__smtp_port=port)
        send(node, ["w@v6.test"])
        wait_for(lambda: sink.count() == 1, what="delivery to [::1]")
        assert "relay=mx.v6.test. [::1], dsn=2.0.0, stat=Sent" in node.logtext()
    finally:
        dns.stop()
        sink.stop()
