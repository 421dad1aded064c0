"""The suppression list against real peers: a hard bounce for a mailbox that
does not exist puts the address on shard 0's list, and ingress then refuses
RCPT to it with its own reply while other recipients of the same
transaction are accepted; a policy bounce does not; mxctl suppress,
unsuppress and suppressions manage the list."""
import smtplib

from conftest import MX_GOOD
from mxtest import TinyDns, free_port, metric_value, wait_for

GONE = "550 5.1.1 <gone@x.test>: Recipient address rejected: User unknown in virtual mailbox table"
BLOCKED = "550 5.7.1 Service unavailable; client [127.0.0.1] blocked using zen.spamhaus.org"


def refused(node, rcpt):
    """The reply to RCPT rcpt (None when accepted), in a transaction with another recipient."""
    with smtplib.SMTP("127.0.0.1", node.smtp_port) as s:
        s.ehlo()
        s.mail("a@sender.test")
        code, text = s.rcpt(rcpt)
        ok_code, _ = s.rcpt("fine@x.test")
        assert ok_code == 250  # the other recipient is unaffected
        s.rset()
    return None if code == 250 else f"{code} {text.decode()}"


def test_a_hard_bounce_suppresses_the_address_at_every_rcpt(sinks, mxd_factory):
    dns = TinyDns(records={("x.test", "MX"): ["10 mx.x.test"], ("mx.x.test", "A"): [MX_GOOD]})
    port = free_port(MX_GOOD)
    sinks(MX_GOOD, port, rcpt_replies={"gone@x.test": GONE, "blocked@x.test": BLOCKED})
    try:
        node = mxd_factory(delivery__dns_servers=[dns.server], delivery__smtp_port=port,
                           delivery__suppress_hard_bounces=True)
        assert refused(node, "gone@x.test") is None  # not suppressed yet
        with smtplib.SMTP("127.0.0.1", node.smtp_port) as s:
            s.sendmail("a@sender.test", ["gone@x.test", "blocked@x.test"], b"Subject: x\r\n\r\nx\r\n")
        wait_for(lambda: node.mxctl_run("suppressions", "gone@x.test").returncode == 0, timeout=30,
                 what="gone@x.test on the suppression list")
        listed = node.mxctl("suppressions", "gone@x.test")
        assert "invalid_recipient" in listed and "User unknown" in listed, listed
        # Ingress follows the list within its 2 s poll.
        wait_for(lambda: refused(node, "gone@x.test") is not None, timeout=10, what="RCPT refused")
        reply = refused(node, "GONE@x.test")  # addresses compare case-insensitively
        assert reply.startswith("550 5.1.1 <GONE@x.test>: Recipient address rejected: on the suppression list"), reply
        assert "reject: RCPT from" in node.logtext() and "(suppressed)" in node.logtext()
        # A policy refusal (class spam_block) is not about the mailbox: not suppressed.
        assert node.mxctl_run("suppressions", "blocked@x.test").returncode == 1
        assert refused(node, "blocked@x.test") is None
        metrics = node.metrics()
        assert metric_value(metrics, "mx_delivery_suppressed_total") == 1
        assert metric_value(metrics, "mx_ingress_rejections_total", {"reason": "suppressed", "code": "550"}) >= 2

        # The operator takes it off, and puts another on by hand.
        assert "no longer suppressed" in node.mxctl("unsuppress", "gone@x.test")
        wait_for(lambda: refused(node, "gone@x.test") is None, timeout=10, what="RCPT accepted again")
        assert "suppressed" in node.mxctl("suppress", "Manual@X.test", "asked", "to", "stop")
        wait_for(lambda: refused(node, "manual@x.test") is not None, timeout=10, what="the manual entry refused")
        listing = node.mxctl("suppressions")
        assert "manual@x.test" in listing and "manual / mxctl" in listing and "asked to stop" in listing, listing
        assert "gone@x.test" not in listing
        # A read-only token may look but not change.
        assert node.mxctl_run("suppressions", token_file="read").returncode == 0
        assert node.mxctl_run("suppress", "x@x.test", token_file="read").returncode == 77
        assert node.mxctl_run("suppress", "not-an-address").returncode == 65
    finally:
        dns.stop()


def test_without_the_setting_a_hard_bounce_suppresses_nothing(sinks, mxd_factory):
    dns = TinyDns(records={("x.test", "MX"): ["10 mx.x.test"], ("mx.x.test", "A"): [MX_GOOD]})
    port = free_port(MX_GOOD)
    sink = sinks(MX_GOOD, port, rcpt_replies={"gone@x.test": GONE})
    try:
        node = mxd_factory(delivery__dns_servers=[dns.server], delivery__smtp_port=port)
        with smtplib.SMTP("127.0.0.1", node.smtp_port) as s:
            s.sendmail("a@sender.test", ["gone@x.test"], b"Subject: x\r\n\r\nx\r\n")
        wait_for(lambda: "stat=User unknown" in node.logtext(), what="the hard bounce")
        assert node.mxctl_run("suppressions", "gone@x.test").returncode == 1
        assert refused(node, "gone@x.test") is None
        assert ("gone@x.test", GONE) in sink.rcpt_log
    finally:
        dns.stop()


def test_an_empty_list_says_so(mxd_factory):
    node = mxd_factory()
    assert node.mxctl("suppressions") == "The suppression list is empty\n"
