"""The Admin API's security and inspection: bearer tokens with roles (read vs
operator), refusals counted, operator actions audited; mxctl inspect; TLS and
mTLS on the control port."""
import smtplib
import subprocess

from conftest import MX_GOOD, MX_SENDER
from mxtest import ExtraDelivery, free_port, metric_value, wait_for


def test_calls_need_a_token_and_changes_need_the_operator_role(mxd_factory, tmp_path):
    node = mxd_factory()
    anonymous = node.mxctl_run("mailq", token_file=None)
    assert anonymous.returncode == 77 and "admin calls need a token" in anonymous.stderr, anonymous.stderr
    wrong = tmp_path / "wrong-token"
    wrong.write_text("not-a-token-anyone-knows-1234\n")
    unknown = node.mxctl_run("mailstats", token_file=wrong)
    assert unknown.returncode == 77 and "unknown token" in unknown.stderr

    reader = node.mxctl_run("mailq", token_file="read")
    assert reader.returncode == 0 and "Mail queue is empty" in reader.stdout
    denied = node.mxctl_run("delete", "-R", "x@", token_file="read")
    assert denied.returncode == 77 and "'viewer' has role read; Manage needs operator" in denied.stderr
    assert node.mxctl_run("qrun", token_file="read").returncode == 77
    assert "0 recipient(s) ready for delivery" in node.mxctl("qrun", "-D", "nowhere.test")

    text = node.metrics()
    assert metric_value(text, "mx_control_auth_failures_total", {"reason": "unauthenticated"}) == 2
    assert metric_value(text, "mx_control_auth_failures_total", {"reason": "forbidden"}) == 2
    log = node.logtext()
    assert "admin: Manage from ipv4:127.0.0.1" in log and "refused: 'viewer' has role read" in log
    assert "admin: ops: qrun -D nowhere.test: 0 recipient(s) made ready" in log  # the audit trail


def test_inspect_shows_envelope_recipients_and_headers(dns, sinks, mxd_factory):
    port = free_port(MX_SENDER)
    d = dns(port)
    node = mxd_factory(delivery__dns_servers=[d.server], delivery__smtp_port=port,
                       queue__min_backoff="1h", queue__max_backoff="2h")
    with smtplib.SMTP("127.0.0.1", node.smtp_port) as s:
        s.ehlo("client.sender.test")
        s.sendmail("alice@sender.test", ["stuck@down.test"],
                   b"Subject: inspect me\r\nMessage-ID: <inspect-1@sender.test>\r\n\r\nbody\r\n")
    qid = [l for l in node.logtext().splitlines() if "msgid=<inspect-1@sender.test>" in l][0].split(": ")[1]
    wait_for(lambda: "Connection refused" in node.mxctl("mailq"), what="the deferral")
    out = node.mxctl_run("inspect", qid, token_file="read")  # reading is the read role's
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert text.startswith(f"Queue ID:   {qid} (shard 0)"), text
    assert "Sender:     <alice@sender.test>" in text
    assert "Message-ID: <inspect-1@sender.test>" in text
    assert "<stuck@down.test>  deferred until" in text and "1 attempt(s)" in text
    assert "Connection refused" in text
    assert "  Subject: inspect me" in text and "  Received: from client.sender.test" in text
    assert "body" not in text.split("Headers:")[1]  # never the body
    missing = node.mxctl_run("inspect", "00000000000000")
    assert missing.returncode == 69 and "no message 00000000000000 in the queue" in missing.stderr
    bad = node.mxctl_run("inspect", "x")
    assert bad.returncode == 65 and "'x' is not a queue id" in bad.stderr


def test_control_over_tls_and_mtls(mxd_factory, tmp_path):
    cert, key = tmp_path / "control.crt", tmp_path / "control.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
                    "/CN=control.test", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key),
                    "-out", str(cert)], check=True, capture_output=True)
    node = mxd_factory(control__tls_cert_file=str(cert), control__tls_key_file=str(key))
    assert "(TLS)" in node.logtext()
    assert node.mxctl_run("mailq").returncode == 69  # plaintext to a TLS port fails
    ok = node.mxctl_run("--tls-ca", str(cert), "mailq")
    assert ok.returncode == 0 and "Mail queue is empty" in ok.stdout, ok.stderr
    node.stop()

    mtls = mxd_factory("mtls", control__tls_cert_file=str(cert), control__tls_key_file=str(key),
                       control__tls_client_ca_file=str(cert))
    assert "(mTLS)" in mtls.logtext()
    assert mtls.mxctl_run("--tls-ca", str(cert), "mailq").returncode == 69  # no client certificate
    ok = mtls.mxctl_run("--tls-ca", str(cert), "--tls-cert", str(cert), "--tls-key", str(key), "mailq")
    assert ok.returncode == 0 and "Mail queue is empty" in ok.stdout, ok.stderr


def test_drain_moves_processes_out_without_losing_or_duplicating_mail(dns, sinks, mxd_factory, tmp_path):
    port = free_port(MX_GOOD)
    d = dns(port)
    sink = sinks(MX_GOOD, port, slow_data=10_000, data_delay=0.05)
    node = mxd_factory(delivery__dns_servers=[d.server], delivery__smtp_port=port, delivery__concurrency=4)
    second = ExtraDelivery(node, tmp_path)  # "mx-test-2": a delivery-only process

    def status():
        return node.mxctl("cluster", "status")

    def state(name):
        rows = [l.split() for l in status().split("Processes:")[-1].splitlines() if l.startswith(name + " ")]
        return rows[0][2] if rows else None  # name, roles, state, policy, …

    def send(first, n):
        with smtplib.SMTP("127.0.0.1", node.smtp_port) as s:
            for i in range(first, first + n):
                s.sendmail("a@sender.test", ["u@implicit.test"],
                           f"Subject: {i}\r\nMessage-ID: <drain-{i}@sender.test>\r\n\r\nx\r\n".encode())

    try:
        wait_for(lambda: state("mx-test-2") == "active" and state("mx-test") == "active", what="both processes")
        assert "delivery" in status() and "all" in status()
        send(0, 20)
        wait_for(lambda: "stat=Sent" in second.logtext(), what="the second worker to deliver some")
        assert "mx-test-2: draining" in node.mxctl("drain", "mx-test-2")
        wait_for(lambda: state("mx-test-2") == "drained", what="the second worker to finish its leases")
        assert "delivery draining" in second.logtext()
        sent_by_second = second.logtext().count("stat=Sent")
        send(20, 20)
        wait_for(lambda: sink.count() == 40, timeout=60, what="all 40 messages")
        assert second.logtext().count("stat=Sent") == sent_by_second  # it took nothing new
        ids = [m[2].split(b"Message-ID: ")[1].split(b"\r\n")[0] for m in sink.messages]
        assert len(set(ids)) == 40  # none lost, none twice

        # Draining an ingress: new connections get 421, the node still delivers.
        node.mxctl("drain", "mx-test")
        def refused():
            try:
                with smtplib.SMTP("127.0.0.1", node.smtp_port, timeout=5) as s:
                    s.noop()
                return False
            except smtplib.SMTPConnectError as e:
                return e.smtp_code == 421 and b"draining" in e.smtp_error
        wait_for(refused, what="421 from the draining ingress")
        assert metric_value(node.metrics(), "mx_ingress_rejections_total", {"reason": "drain", "code": "421"}) >= 1
        assert "mx-test: back to work" in node.mxctl("undrain", "mx-test")
        wait_for(lambda: not refused(), what="the ingress to accept again")
        assert "forgotten" in node.mxctl("forget", "mx-test-2")
        assert node.mxctl_run("drain", "nosuch").returncode == 69
    finally:
        second.stop()


def test_mailq_filters_find_exactly_the_matching_messages_and_mailstats_resets(dns, sinks, mxd_factory):
    import json

    port = free_port(MX_SENDER)
    d = dns(port)
    node = mxd_factory(delivery__dns_servers=[d.server], delivery__smtp_port=port,
                       queue__min_backoff="1h", queue__max_backoff="2h")
    with smtplib.SMTP("127.0.0.1", node.smtp_port) as s:
        s.sendmail("alice@sender.test", ["a1@down.test"], b"Subject: 1\r\n\r\nx\r\n")
        s.sendmail("bob@sender.test", ["b1@down.test", "b2@down.test"], b"Subject: 2\r\n\r\nx\r\n")
        s.sendmail("bob@sender.test", ["b3@down.test"], b"Subject: 3\r\n\r\nx\r\n")
    wait_for(lambda: node.mxctl("mailq").count("Connection refused") == 3, what="three deferred messages")

    def qids(*filters):
        out = json.loads(node.mxctl("-o", "json", "mailq", *filters))
        return sorted(m["envelope"]["qid"] for m in out.get("messages", [])), int(out.get("matched", 0))

    everything, n = qids()
    assert n == 3
    alice, n = qids("-S", "alice@")
    assert n == 1 and len(alice) == 1
    bob, n = qids("-S", "bob@")
    assert n == 2 and set(bob) == set(everything) - set(alice)
    assert qids("-R", "b2@")[0] == [q for q in bob if "b2@down.test" in node.mxctl("inspect", q)]
    assert qids("-I", alice[0])[0] == alice
    assert qids("-R", "nobody@")[1] == 0
    text = node.mxctl("mailq", "-S", "alice@")
    assert "Total requests: 1" in text and "<a1@down.test>" in text and "bob@" not in text

    def msgsfr():
        rows = [l.split() for l in node.mxctl("mailstats").splitlines() if l.endswith("esmtp")]
        return int(rows[0][1]) if rows else 0

    wait_for(lambda: msgsfr() == 3, what="mailstats to count three")
    assert node.mxctl_run("mailstats", "--reset", token_file="read").returncode == 77
    printed = node.mxctl("mailstats", "--reset")  # like mailstats -p: the counts, then cleared
    assert [l.split()[1] for l in printed.splitlines() if l.endswith("esmtp")] == ["3"]
    assert msgsfr() == 0
