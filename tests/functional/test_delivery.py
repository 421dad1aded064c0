"""Delivery semantics through real peers: DSNs (RFC 3461/3464: NOTIFY=SUCCESS
receipts, NOTIFY=NEVER, delay warnings after queue_warn, bounces after
queue_return, Precedence: bulk, double bounces, the postmaster's copy, DSN
forwarding), the peer's SIZE, queue runs by filter (mxctl qrun) and STARTTLS to
MX hosts (opportunistic and required)."""
import email
import smtplib
import subprocess

from conftest import MX_BOUNCE, MX_SENDER
from mxtest import free_port, wait_for


def start(dns, sinks, mxd_factory, **overrides):
    from conftest import MX_GOOD

    port = free_port(MX_GOOD)
    d = dns(port)
    node = mxd_factory(delivery__dns_servers=[d.server], delivery__smtp_port=port, **overrides)
    return port, node


def report(content):
    """(action, status) pairs and the returned part's content type of a DSN."""
    dsn = email.message_from_bytes(content)
    assert dsn.get_content_type() == "multipart/report", content[:300]
    parts = dsn.get_payload()
    fields = parts[1].as_string()
    actions = [l.split(":", 1)[1].strip() for l in fields.splitlines() if l.startswith("Action:")]
    statuses = [l.split(":", 1)[1].strip() for l in fields.splitlines() if l.startswith("Status:")]
    return list(zip(actions, statuses)), parts[2].get_content_type(), dsn["Subject"]


def drained(node):
    return "Mail queue is empty" in node.mxctl("mailq")


def test_notify_success_gets_a_relayed_receipt(dns, sinks, mxd_factory):
    from conftest import MX_GOOD

    port, node = start(dns, sinks, mxd_factory)
    sink = sinks(MX_GOOD, port)
    sender_mx = sinks(MX_SENDER, port)
    with smtplib.SMTP("127.0.0.1", node.smtp_port) as s:
        s.ehlo("client.test")
        s.sendmail("alice@sender.test", ["bob@example.test"], b"Subject: receipt please\r\n\r\nx\r\n",
                   mail_options=["RET=HDRS", "ENVID=env42"], rcpt_options=["NOTIFY=SUCCESS,FAILURE"])
    wait_for(lambda: sink.count() == 1 and sender_mx.count() == 1, what="delivery and the receipt")
    mail_from, rcpts, content = sender_mx.messages[0]
    assert (mail_from, rcpts) == ("<>", ["alice@sender.test"])
    fields, returned, subject = report(content)
    assert fields == [("relayed", "2.0.0")]
    assert returned == "text/rfc822-headers"
    assert subject == "Return receipt: message relayed"
    assert b"Original-Envelope-Id: env42" in content


def test_notify_never_suppresses_the_bounce(dns, sinks, mxd_factory):
    port, node = start(dns, sinks, mxd_factory)
    sinks(MX_BOUNCE, port, rcpt_replies={"nobody@bounce.test": "550 5.1.1 <nobody@bounce.test>: user unknown"})
    sender_mx = sinks(MX_SENDER, port)
    with smtplib.SMTP("127.0.0.1", node.smtp_port) as s:
        s.ehlo("client.test")
        s.sendmail("alice@sender.test", ["nobody@bounce.test"], b"Subject: never\r\n\r\nx\r\n",
                   rcpt_options=["NOTIFY=NEVER"])
        s.sendmail("alice@sender.test", ["nobody@bounce.test"], b"Subject: default\r\n\r\nx\r\n")
    # Once the queue is empty every DSN the two bounces produced was delivered:
    # a DSN is queued atomically with the bounce that caused it.
    wait_for(lambda: drained(node) and sender_mx.count() >= 1, timeout=30, what="both bounces and their DSNs")
    assert sender_mx.count() == 1
    assert b"Subject: default" in sender_mx.messages[0][2]


def test_delay_warning_then_bounce_after_queue_return(dns, sinks, mxd_factory):
    port, node = start(dns, sinks, mxd_factory, delivery__queue_warn="1s", delivery__queue_return="5s",
                       queue__min_backoff="1s", queue__max_backoff="1s")
    sender_mx = sinks(MX_SENDER, port)
    with smtplib.SMTP("127.0.0.1", node.smtp_port) as s:
        s.sendmail("alice@sender.test", ["z@down.test"], b"Subject: normal\r\nMessage-ID: <n1@sender.test>\r\n\r\nx\r\n")
        s.sendmail("carol@sender.test", ["z@down.test"],
                   b"Subject: bulk\r\nPrecedence: bulk\r\nMessage-ID: <b1@sender.test>\r\n\r\nx\r\n")
    wait_for(lambda: drained(node), timeout=40, what="both messages to expire")
    wait_for(lambda: sender_mx.count() == 3, timeout=20, what="the DSNs")
    by_rcpt = {}
    for _, rcpts, content in sender_mx.messages:
        by_rcpt.setdefault(rcpts[0], []).append(report(content))
    # The normal message: one delay warning (once, not per retry), then the bounce.
    alice = sorted(by_rcpt["alice@sender.test"])
    assert [f for f, _, _ in alice] == [[("delayed", "4.4.1")], [("failed", "4.4.7")]], alice
    delayed = next(x for x in alice if x[0][0][0] == "delayed")
    assert delayed[1] == "text/rfc822-headers" and delayed[2].startswith("Warning: could not send message")
    failed = next(x for x in alice if x[0][0][0] == "failed")
    assert failed[1] == "message/rfc822"
    # Precedence: bulk gets no warning, and its bounce returns headers only.
    assert by_rcpt["carol@sender.test"] == [([("failed", "4.4.7")], "text/rfc822-headers",
                                             "Returned mail: see transcript for details")]
    assert "Cannot send message for" in node.logtext()


def test_double_bounce_and_postmaster_copy(dns, sinks, mxd_factory):
    port, node = start(dns, sinks, mxd_factory, delivery__double_bounce_address="postmaster@sender.test",
                       delivery__postmaster_copy="pm@sender.test")
    # bounce.test refuses everyone, so the bounce to alice@bounce.test bounces too.
    sinks(MX_BOUNCE, port, rcpt_replies={"nobody@bounce.test": "550 5.1.1 no such user",
                                         "alice@bounce.test": "550 5.1.1 no such sender"})
    sender_mx = sinks(MX_SENDER, port)
    with smtplib.SMTP("127.0.0.1", node.smtp_port) as s:
        s.sendmail("alice@bounce.test", ["nobody@bounce.test"], b"Subject: doomed\r\n\r\nsecret body\r\n")
    wait_for(lambda: drained(node) and sender_mx.count() == 2, timeout=30, what="copy and double bounce")
    got = {rcpts[0]: content for _, rcpts, content in sender_mx.messages}
    assert set(got) == {"postmaster@sender.test", "pm@sender.test"}
    for content in got.values():
        fields, returned, subject = report(content)
        assert returned == "text/rfc822-headers"  # never the body to the postmaster
        assert b"secret body" not in content
        assert subject == "Postmaster notify: see transcript for details"
    assert report(got["pm@sender.test"])[0] == [("failed", "5.1.1")]
    # The double bounce reports the undeliverable bounce (to alice@bounce.test).
    assert b"Final-Recipient: rfc822; alice@bounce.test" in got["postmaster@sender.test"]


def test_dsn_request_is_forwarded_to_a_peer_that_offers_dsn(dns, sinks, mxd_factory, tmp_path):
    # Postfix's smtp-sink announces DSN and dumps each transaction's MAIL/RCPT
    # arguments: the request travels on and no receipt comes from us.
    import subprocess

    from conftest import MX_GOOD

    port, node = start(dns, sinks, mxd_factory)
    sender_mx = sinks(MX_SENDER, port)
    dump = tmp_path / "dump"
    sink = subprocess.Popen(["smtp-sink", "-u", "root", "-d", f"{dump}/%M.", f"{MX_GOOD}:{port}", "16"])
    try:
        wait_for(lambda: _listening(MX_GOOD, port), what="smtp-sink")
        with smtplib.SMTP("127.0.0.1", node.smtp_port) as s:
            s.ehlo("client.test")
            s.sendmail("alice@sender.test", ["bob@example.test"], b"Subject: forwarded\r\n\r\nx\r\n",
                       mail_options=["RET=HDRS", "ENVID=env+2B7"],
                       rcpt_options=["NOTIFY=SUCCESS,DELAY", "ORCPT=rfc822;bob+40example.test"])
        files = wait_for(lambda: [p for p in dump.rglob("*") if p.is_file() and p.stat().st_size > 0],
                         what="the dump file")
        wait_for(lambda: drained(node), what="delivery to finish")
        text = files[0].read_text(errors="replace")
        assert "X-Mail-Args: <alice@sender.test> RET=HDRS ENVID=env+2B7" in text, text[:600]
        assert "X-Rcpt-Args: <bob@example.test> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;bob+40example.test" in text, text[:600]
        assert sender_mx.count() == 0  # the peer handles NOTIFY=SUCCESS now
    finally:
        sink.terminate()
        sink.wait(10)


def _listening(host, port):
    import socket

    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def test_message_larger_than_the_peers_size_bounces_with_5_3_4(dns, sinks, mxd_factory):
    from conftest import MX_GOOD

    port, node = start(dns, sinks, mxd_factory)
    small = sinks(MX_GOOD, port, size_limit=1000)
    sender_mx = sinks(MX_SENDER, port)
    with smtplib.SMTP("127.0.0.1", node.smtp_port) as s:
        s.sendmail("alice@sender.test", ["bob@example.test"], b"Subject: big\r\n\r\n" + (b"x" * 70 + b"\r\n") * 40)
    wait_for(lambda: sender_mx.count() == 1, what="the bounce")
    fields, _, _ = report(sender_mx.messages[0][2])
    assert fields == [("failed", "5.3.4")]
    assert b"exceeds the remote limit (1000)" in sender_mx.messages[0][2]
    assert small.count() == 0 and small.data_started == 0  # never sent


def test_qrun_by_recipient_runs_only_matching_deferred_mail(dns, sinks, mxd_factory):
    from conftest import MX_GOOD

    port, node = start(dns, sinks, mxd_factory, queue__min_backoff="1h", queue__max_backoff="2h")
    sink = sinks(MX_GOOD, port, tempfail_rcpt=2)  # both first attempts: 451
    with smtplib.SMTP("127.0.0.1", node.smtp_port) as s:
        s.sendmail("alice@sender.test", ["one@example.test"], b"Subject: 1\r\n\r\nx\r\n")
        s.sendmail("bob@sender.test", ["two@example.test"], b"Subject: 2\r\n\r\nx\r\n")
    wait_for(lambda: node.mxctl("mailq").count("Deferred: 451 4.7.1") == 2, what="both deferred for an hour")
    assert node.mxctl("qrun", "-R", "nobody@").strip() == "0 recipient(s) ready for delivery"
    assert node.mxctl("qrun", "-R", "one@", "-S", "alice").strip() == "1 recipient(s) ready for delivery"
    wait_for(lambda: sink.count() == 1, what="the matching message")
    assert sink.messages[0][1] == ["one@example.test"]
    assert "two@example.test" in node.mxctl("mailq")
    assert node.mxctl("qrun").strip() == "1 recipient(s) ready for delivery"  # no filter: the whole queue
    wait_for(lambda: sink.count() == 2 and drained(node), what="the rest")


def _cert(tmp_path):
    import subprocess

    cert, key = tmp_path / "mx-cert.pem", tmp_path / "mx-key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
                    "/CN=mx1.example.test", "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return str(cert), str(key)


def test_starttls_to_a_peer_that_requires_it(dns, sinks, mxd_factory, tmp_path):
    from conftest import MX_GOOD

    port, node = start(dns, sinks, mxd_factory)
    sink = sinks(MX_GOOD, port, tls=_cert(tmp_path))  # 530 to MAIL without STARTTLS
    with smtplib.SMTP("127.0.0.1", node.smtp_port) as s:
        s.sendmail("alice@sender.test", ["bob@example.test"], b"Subject: private\r\n\r\nx\r\n")
    wait_for(lambda: sink.count() == 1, what="delivery over TLS")
    assert ", tls=TLSv1." in node.logtext()


def test_tls_required_for_a_destination_defers_without_starttls(dns, sinks, mxd_factory):
    from conftest import MX_GOOD

    port, node = start(dns, sinks, mxd_factory, delivery__tls_encrypt_domains=["example.test"])
    sink = sinks(MX_GOOD, port)  # plain: no STARTTLS
    with smtplib.SMTP("127.0.0.1", node.smtp_port) as s:
        s.sendmail("alice@sender.test", ["bob@example.test"], b"Subject: must be private\r\n\r\nx\r\n")
    wait_for(lambda: "TLS is required, but the host did not offer STARTTLS" in node.mxctl("mailq"),
             what="the deferral reason")
    assert sink.count() == 0


def test_all_mx_hosts_down_goes_to_the_fallback_mx_host(dns, sinks, mxd_factory):
    from conftest import MX_DOWN, MX_GOOD2

    port = free_port(MX_GOOD2)
    fallback = sinks(MX_GOOD2, port)
    _, node = start(dns, sinks, mxd_factory, delivery__fallback_mx_host=f"[{MX_GOOD2}]:{port}")
    with smtplib.SMTP("127.0.0.1", node.smtp_port) as s:
        s.sendmail("alice@sender.test", ["x@down.test"], b"Subject: fallback\r\n\r\nx\r\n")
    wait_for(lambda: fallback.count() == 1, what="delivery via the fallback MX host")
    assert fallback.messages[0][1] == ["x@down.test"]
    log = node.logtext()
    refused = log.index(f"relay=mx-down.example.test. [{MX_DOWN}]: Connection refused, trying next host")
    assert log.index(f"relay=[{MX_GOOD2}] [{MX_GOOD2}], dsn=2.0.0, stat=Sent") > refused


def test_equal_preferences_share_the_load_behind_a_refusing_better_mx(dns, sinks, mxd_factory):
    from conftest import MX_GOOD, MX_GOOD2

    port, node = start(dns, sinks, mxd_factory)
    a, b = sinks(MX_GOOD, port), sinks(MX_GOOD2, port)
    with smtplib.SMTP("127.0.0.1", node.smtp_port) as s:
        for i in range(30):
            s.sendmail("alice@sender.test", [f"r{i}@multi.test"], f"Subject: {i}\r\n\r\nx\r\n".encode())
    wait_for(lambda: a.count() + b.count() == 30, what="all 30 via the two MX 20 hosts")
    # Equal preferences are shuffled per message: both get a share (P(one gets
    # none) = 2 x 2^-30). MX 10 refuses, and nothing ever goes anywhere else.
    assert a.count() > 0 and b.count() > 0, (a.count(), b.count())


def test_secondary_mx_relays_only_to_better_hosts_and_never_to_itself(dns, sinks, mxd_factory):
    from conftest import MX_GOOD

    port, node = start(dns, sinks, mxd_factory, ingress__relay_domains=["backup.test", "loop.test"],
                       delivery__mx_self_names=["mx-self.backup.test"], delivery__host_status_timeout="0",
                       queue__min_backoff="1h", queue__max_backoff="2h")
    sender_mx = sinks(MX_SENDER, port)
    with smtplib.SMTP("127.0.0.1", node.smtp_port) as s:
        s.sendmail("alice@sender.test", ["user@backup.test"], b"Subject: to the primary\r\n\r\nx\r\n")
        s.sendmail("alice@sender.test", ["user@loop.test"], b"Subject: loops\r\n\r\nx\r\n")
    # backup.test: the primary (MX 10) is down. We are MX 20: the mail waits for
    # the primary; neither we (MX 20) nor the worse MX 30 are tried.
    wait_for(lambda: "Deferred: Connection refused with mx1.example.test." in node.mxctl("mailq"),
             what="backup.test deferred for its primary")
    log = node.logtext()
    assert "mx-self.backup.test" not in log and "mx-down.example.test" not in log
    # loop.test: we are its best MX, so relaying would loop: 5.4.6.
    wait_for(lambda: sender_mx.count() == 1, what="the loop bounce")
    fields, _, _ = report(sender_mx.messages[0][2])
    assert fields == [("failed", "5.4.6")]
    assert b"loops back to myself" in sender_mx.messages[0][2]
    # The primary comes back; a queue run for the domain (ETRN's job) delivers.
    primary = sinks(MX_GOOD, port)
    assert node.mxctl("qrun", "-D", "backup.test").strip() == "1 recipient(s) ready for delivery"
    wait_for(lambda: primary.count() == 1, what="relay to the primary")


def test_hold_release_and_delete_by_filter(dns, sinks, mxd_factory):
    from conftest import MX_GOOD

    port, node = start(dns, sinks, mxd_factory, delivery__host_status_timeout="0",
                       queue__min_backoff="1h", queue__max_backoff="2h")
    # No MX is up yet: everything defers for an hour.
    with smtplib.SMTP("127.0.0.1", node.smtp_port) as s:
        for who in ("keep", "hold", "drop"):
            s.sendmail(f"{who}@sender.test", [f"{who}@example.test"], f"Subject: {who}\r\n\r\nx\r\n".encode())
    wait_for(lambda: node.mxctl("mailq").count("Deferred:") == 3, what="three deferrals")
    assert node.mxctl("hold", "-R", "hold@").strip() == "1 recipient(s) held"
    assert "(Held by the operator: mxctl release)" in node.mxctl("mailq")
    assert "1 message(s) deleted (1 recipients), 0 in delivery left alone" in node.mxctl("delete", "-S", "drop@")
    sink = sinks(MX_GOOD, port)
    assert node.mxctl("qrun").strip() == "1 recipient(s) ready for delivery"  # held mail is not run
    wait_for(lambda: sink.count() == 1, what="the kept message")
    assert sink.messages[0][1] == ["keep@example.test"]
    assert node.mxctl("release", "-R", "hold@").strip() == "1 recipient(s) released"
    wait_for(lambda: sink.count() == 2 and drained(node), what="the released message")
    assert {m[1][0] for m in sink.messages} == {"keep@example.test", "hold@example.test"}  # never the deleted one
    r = node.mxctl_run("delete")
    assert r.returncode == 64 and "delete needs a filter" in r.stderr
