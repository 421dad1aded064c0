"""One message through mxd all: SMTP in, durable queue, MX lookup, SMTP out."""
import email
import json
import smtplib
import subprocess

from conftest import MX_BOUNCE, MX_DOWN, MX_GOOD, MX_SENDER
from mxtest import free_port, metric_value, wait_for

ORIGINAL = (
    b"From: Alice <alice@sender.test>\r\n"
    b"To: Bob <bob@example.test>\r\n"
    b"Subject: end to end\r\n"
    b"Message-ID: <e2e-1@sender.test>\r\n"
    b"\r\n"
    b"Hello Bob.\r\n"
    b".A line that starts with a dot.\r\n"
    b"\r\n"
    b"8-bit: \xc3\xa9t\xc3\xa9\r\n"
)


def start_node(dns, sinks, mxd_factory, **overrides):
    port = free_port(MX_GOOD)
    d = dns(port)
    node = mxd_factory(delivery__dns_servers=[d.server], delivery__smtp_port=port, **overrides)
    return port, node


def test_message_is_delivered_via_mx_byte_identical(dns, sinks, mxd_factory):
    port, node = start_node(dns, sinks, mxd_factory)
    sink = sinks(MX_GOOD, port)
    with smtplib.SMTP("127.0.0.1", node.smtp_port) as s:
        s.ehlo("client.sender.test")
        code, text = s.mail("alice@sender.test", ["BODY=8BITMIME", f"SIZE={len(ORIGINAL)}"])
        assert code == 250
        assert s.rcpt("bob@example.test")[0] == 250
        code, text = s.data(ORIGINAL)
        assert code == 250, text
    qid = text.decode().split("queued as ")[1]

    wait_for(lambda: sink.count() == 1, what="delivery to the MX host")
    mail_from, rcpts, content = sink.messages[0]
    assert mail_from == "alice@sender.test"
    assert rcpts == ["bob@example.test"]
    # The body is byte-identical apart from the one Received: header we prepend.
    assert content.endswith(ORIGINAL)
    trace = content[: -len(ORIGINAL)].decode()
    assert trace.startswith("Received: from client.sender.test (unknown [127.0.0.1])")
    assert f"id {qid}" in trace
    assert all(line.startswith("\t") for line in trace.rstrip("\r\n").split("\r\n")[1:])
    # The first MX (preference 10) refused; the message went to the preference-20 host.
    log = node.logtext()
    assert f"relay=mx-down.example.test. [{MX_DOWN}]: Connection refused" in log
    assert f"relay=mx1.example.test. [{MX_GOOD}], dsn=2.0.0, stat=Sent" in log
    assert f"{qid}: from=<alice@sender.test>, size={len(content)}, class=0, nrcpts=1" in log

    wait_for(lambda: "Mail queue is empty" in node.mxctl("mailq"), what="queue to drain")
    stats = node.mxctl("mailstats")
    esmtp = [l for l in stats.splitlines() if l.endswith("esmtp")][0].split()
    assert esmtp[1] == "1" and esmtp[3] == "1", stats  # msgsfr, msgsto


def test_swaks_to_mxd_all(dns, sinks, mxd_factory):
    port, node = start_node(dns, sinks, mxd_factory)
    sink = sinks(MX_GOOD, port)
    out = subprocess.run(["swaks", "--server", f"127.0.0.1:{node.smtp_port}", "--from", "alice@sender.test",
                          "--to", "bob@example.test", "--header", "Subject: swaks"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stdout + out.stderr
    qid = out.stdout.split("250 2.0.0 Ok: queued as ")[1].split()[0]
    wait_for(lambda: sink.count() == 1, what="delivery")
    assert f"with ESMTP id {qid}".encode() in sink.messages[0][2]
    assert b"Subject: swaks" in sink.messages[0][2]


def test_implicit_mx_when_domain_has_only_an_a_record(dns, sinks, mxd_factory):
    port, node = start_node(dns, sinks, mxd_factory)
    sink = sinks(MX_GOOD, port)
    with smtplib.SMTP("127.0.0.1", node.smtp_port) as s:
        s.sendmail("alice@sender.test", ["carol@implicit.test"], b"Subject: implicit\r\n\r\nhi\r\n")
    wait_for(lambda: sink.count() == 1, what="delivery by implicit MX")
    assert sink.messages[0][1] == ["carol@implicit.test"]


def test_temporary_failure_is_retried_then_delivered(dns, sinks, mxd_factory):
    port, node = start_node(dns, sinks, mxd_factory, queue__min_backoff="3s", queue__max_backoff="4s")
    sink = sinks(MX_GOOD, port, tempfail_rcpt=1)
    with smtplib.SMTP("127.0.0.1", node.smtp_port) as s:
        s.sendmail("alice@sender.test", ["dave@example.test"], b"Subject: retry\r\n\r\nhi\r\n")
    # mailq shows the deferral with the remote reply while the message waits.
    mailq = wait_for(lambda: (lambda q: q if "Deferred: 451 4.7.1 Greylisted" in q else None)(node.mxctl("mailq")),
                     timeout=10, interval=0.1, what="mailq to show the deferral")
    assert "<dave@example.test>" in mailq
    wait_for(lambda: sink.count() == 1, timeout=20, what="retry to deliver")
    assert [r for _, r in sink.rcpt_log] == ["451 4.7.1 Greylisted, try again later", "250 2.1.5 OK"]
    assert "stat=Deferred (451 4.7.1 Greylisted, try again later)" in node.logtext()
    wait_for(lambda: "Mail queue is empty" in node.mxctl("mailq"), what="queue to drain")
    # One retry, and the time in the queue covers the backoff.
    m = node.metrics()
    assert metric_value(m, "mx_delivery_retries_total") == 1
    assert metric_value(m, "mx_delivery_delay_seconds_count", {"result": "delivered"}) == 1
    assert metric_value(m, "mx_delivery_delay_seconds_bucket", {"result": "delivered", "le": "1"}) == 0
    assert metric_value(m, "mx_delivery_delay_seconds_sum", {"result": "delivered"}) >= 3


def test_permanent_failure_bounces_with_a_dsn_to_the_sender(dns, sinks, mxd_factory):
    port, node = start_node(dns, sinks, mxd_factory)
    bouncer = sinks(MX_BOUNCE, port, rcpt_replies={"nobody@bounce.test": "550 5.1.1 <nobody@bounce.test>: user unknown"})
    sender_mx = sinks(MX_SENDER, port)
    with smtplib.SMTP("127.0.0.1", node.smtp_port) as s:
        s.sendmail("alice@sender.test", ["nobody@bounce.test"],
                   b"Subject: will bounce\r\nMessage-ID: <b1@sender.test>\r\n\r\nhello\r\n")
    wait_for(lambda: sender_mx.count() == 1, what="the DSN to reach the sender's MX")
    assert bouncer.count() == 0
    mail_from, rcpts, content = sender_mx.messages[0]
    assert mail_from == "<>"  # DSNs are sent from the null sender (aiosmtpd shows it as "<>")
    assert rcpts == ["alice@sender.test"]
    dsn = email.message_from_bytes(content)
    assert dsn.get_content_type() == "multipart/report"
    assert dsn.get_param("report-type") == "delivery-status"
    parts = dsn.get_payload()
    status = parts[1].as_string()
    assert "Final-Recipient: rfc822; nobody@bounce.test" in status
    assert "Status: 5.1.1" in status
    assert "Action: failed" in status
    assert "<b1@sender.test>" in parts[2].as_string()  # the original message is returned
    wait_for(lambda: "Mail queue is empty" in node.mxctl("mailq"), what="queue to drain")


def test_dsn_for_null_sender_is_never_sent(dns, sinks, mxd_factory):
    port, node = start_node(dns, sinks, mxd_factory)
    sinks(MX_BOUNCE, port, rcpt_replies={"nobody@bounce.test": "550 5.1.1 user unknown"})
    sender_mx = sinks(MX_SENDER, port)
    with smtplib.SMTP("127.0.0.1", node.smtp_port) as s:
        s.sendmail("<>", ["nobody@bounce.test"], b"Subject: bounce of a bounce\r\n\r\nx\r\n")
    wait_for(lambda: "Mail queue is empty" in node.mxctl("mailq"), what="the message to bounce")
    assert "dsn=5.1.1" in node.logtext()
    assert sender_mx.count() == 0


def test_unknown_domain_and_null_mx_bounce_at_once(dns, sinks, mxd_factory):
    port, node = start_node(dns, sinks, mxd_factory)
    sender_mx = sinks(MX_SENDER, port)
    with smtplib.SMTP("127.0.0.1", node.smtp_port) as s:
        s.sendmail("alice@sender.test", ["x@nosuch.test", "y@nullmx.test"], b"Subject: nowhere\r\n\r\nx\r\n")
    wait_for(lambda: sender_mx.count() == 1, what="one DSN for both recipients")
    body = sender_mx.messages[0][2].decode()
    assert "Final-Recipient: rfc822; x@nosuch.test" in body and "Status: 5.1.2" in body
    assert "Final-Recipient: rfc822; y@nullmx.test" in body and "Status: 5.1.10" in body


def test_unreachable_destination_is_deferred_not_bounced(dns, sinks, mxd_factory):
    port, node = start_node(dns, sinks, mxd_factory)
    with smtplib.SMTP("127.0.0.1", node.smtp_port) as s:
        s.sendmail("alice@sender.test", ["z@down.test"], b"Subject: later\r\n\r\nx\r\n")
    q = wait_for(lambda: (lambda t: t if "Deferred: Connection refused" in t else None)(node.mxctl("mailq")),
                 what="deferral with the connection error")
    assert "<z@down.test>" in q
    # The same through -o json, for scripts; filters narrow it like mailq -qR.
    data = json.loads(node.mxctl("-o", "json", "mailq", "-R", "down.test"))
    assert data["matched"] == "1"  # uint64 is a string in proto3 JSON
    rcpt = data["messages"][0]["recipients"][0]
    assert rcpt["address"] == "z@down.test"
    assert rcpt["status"] in ("RCPT_DEFERRED", "RCPT_READY", "RCPT_LEASED")
    assert "Connection refused" in rcpt["last_reply"]
    assert json.loads(node.mxctl("-o", "json", "mailq", "-R", "nobody.test")).get("matched", "0") == "0"


def test_metrics_are_served(dns, sinks, mxd_factory):
    port, node = start_node(dns, sinks, mxd_factory)
    sink = sinks(MX_GOOD, port)
    with smtplib.SMTP("127.0.0.1", node.smtp_port) as s:
        s.sendmail("alice@sender.test", ["m@example.test"], b"Subject: metrics\r\n\r\nx\r\n")
    wait_for(lambda: sink.count() == 1, what="delivery")

    def delivered_metric():
        t = node.metrics()
        return t if metric_value(t, "mx_delivery_recipients_total", {"result": "delivered"}) == 1 else None

    text = wait_for(delivered_metric, what="delivery metric")
    assert metric_value(text, "mx_ingress_sessions_total") >= 1
    assert metric_value(text, "mx_ingress_messages_accepted_total") == 1
    assert metric_value(text, "mx_queue_enqueue_latency_seconds_count") == 1
    assert metric_value(text, "mx_ingress_enqueue_latency_seconds_count") == 1
    assert metric_value(text, "mx_queue_depth_recipients", {"state": "ready"}) is not None
    assert metric_value(text, "mx_delivery_dns_queries_total", {"type": "MX", "result": "ok"}) >= 1
    assert metric_value(text, "mx_queue_commit_batch_commands_count") >= 1
