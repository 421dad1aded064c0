"""The Admin API's security and inspection: bearer tokens with roles (read vs
operator), refusals counted, operator actions audited; mxctl inspect; TLS and
mTLS on the control port."""
import smtplib
import subprocess

from conftest import MX_SENDER
from mxtest import free_port, metric_value, wait_for


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
    assert bad.returncode == 69 and "'x' is not a queue id" in bad.stderr


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
