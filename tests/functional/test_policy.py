"""Ingress acceptance policy through real clients: the open-relay matrix from an
untrusted address, STARTTLS and AUTH with swaks, sendmail-format maps and their
reload, connection limits, load shedding, ETRN and MinFreeBlocks."""
import signal
import smtplib
import socket
import ssl
import subprocess

import pytest

from mxtest import metric_value, wait_for

UNTRUSTED = "127.0.0.2"  # outside mynetworks (127.0.0.1/32)
ACCESS_RELAY = "127.0.0.3"  # trusted by access Connect: RELAY

ACCESS = """\
# sendmail access map
Connect:127.0.0.3           RELAY
From:spammer@bad.test       REJECT
From:bad.test               ERROR:"553 5.7.1 Spam source"
To:trash@corp.test          DISCARD
"""
ALIASES = """\
postmaster: admin@example.test
team:       alice@example.test,
            bob@example.test
moved:      new@example.test.REDIRECT
"""
VIRTUSERS = """\
info@virtual.test   team
@virtual.test       catchall@example.test
"""
TRICKS = [
    "victim@elsewhere.test",
    "victim%elsewhere.test@corp.test",
    "victim%elsewhere.test@relay.test",
    "elsewhere.test!victim@corp.test",
    "@corp.test:victim@elsewhere.test",
    "@relay.test,@corp.test:victim@elsewhere.test",
    '"victim@elsewhere.test"@corp.test',
    '"victim%elsewhere.test"@relay.test',
    "victim@elsewhere.test@corp.test",
    "victim@corp.test.elsewhere.test",
    "victim@corp.test.",
    "victim@[127.0.0.1]",
    "victim@127.0.0.1",
    "victim@CORP.TEST.elsewhere.test",
]


def policy_node(mxd_factory, tmp_path, **overrides):
    maps = tmp_path / "maps"
    maps.mkdir(exist_ok=True)
    (maps / "access").write_text(ACCESS)
    (maps / "aliases").write_text(ALIASES)
    (maps / "virtusertable").write_text(VIRTUSERS)
    (maps / "local-host-names").write_text("# local domains\ncorp.test\n")
    settings = dict(
        ingress__mynetworks=["127.0.0.1/32"],
        ingress__relay_domains=["relay.test"],
        ingress__local_domains_file=str(maps / "local-host-names"),
        ingress__access_map=str(maps / "access"),
        ingress__aliases=str(maps / "aliases"),
        ingress__virtusertable=str(maps / "virtusertable"),
        ingress__header_checks=[
            {"header": "Subject", "match": "regex", "pattern": "^((re|fwd?): *)*ILOVEYOU",
             "reply": "501 5.7.1 LoveLetter virus"},
        ],
    )
    settings.update(overrides)
    node = mxd_factory(**settings)
    node.maps = maps
    return node


def smtp_from(node, source):
    s = smtplib.SMTP("127.0.0.1", node.smtp_port, source_address=(source, 0), timeout=10)
    s.ehlo("client.test")
    return s


def test_open_relay_matrix_untrusted_is_refused_trusted_may_relay(mxd_factory, tmp_path):
    node = policy_node(mxd_factory, tmp_path)
    refused = []
    for chunk in (TRICKS[:7], TRICKS[7:]):  # refusals count toward max_errors (10)
        with smtp_from(node, UNTRUSTED) as s:
            s.mail("a@sender.test")
            for rcpt in chunk:
                code, text = s.docmd(f"RCPT TO:<{rcpt}>")
                refused.append((rcpt, code, text.decode()))
    accepted = [r for r in refused if r[1] < 400]
    assert not accepted, f"relay tricks accepted from an untrusted client: {accepted}"
    assert all(code in (550, 501, 553) for _, code, _ in refused), refused
    assert ("victim@elsewhere.test", 550, "5.7.1 <victim@elsewhere.test>: Relaying denied") in refused

    # Local and relay domains are open to everyone; unknown local users are not.
    with smtp_from(node, UNTRUSTED) as s:
        s.mail("a@sender.test")
        assert s.rcpt("team@corp.test")[0] == 250
        assert s.rcpt("anyone@relay.test")[0] == 250
        assert s.rcpt("anyone@sub.relay.test")[0] == 250
        assert s.rcpt("nosuch@corp.test") == (550, b"5.1.1 <nosuch@corp.test>: Recipient address rejected: "
                                                   b"User unknown")
        assert s.rcpt("moved@corp.test") == (551, b"5.1.6 User has moved; please try <new@example.test>")

    # Trusted by access Connect: RELAY, by mynetworks: relaying works.
    for source in (ACCESS_RELAY, "127.0.0.1"):
        with smtp_from(node, source) as s:
            s.mail("a@sender.test")
            assert s.rcpt("friend@elsewhere.test")[0] == 250, source
    text = node.metrics()
    assert metric_value(text, "mx_ingress_rejections_total", {"reason": "relay", "code": "550"}) >= 10


def test_aliases_and_virtusertable_rewrite_recipients(mxd_factory, tmp_path):
    node = policy_node(mxd_factory, tmp_path, delivery__smart_host="[127.0.0.1]:9")  # never delivered in time
    with smtp_from(node, UNTRUSTED) as s:
        s.sendmail("a@sender.test", ["info@virtual.test", "someone@virtual.test"], b"Subject: hi\r\n\r\nx\r\n")
    out = node.mxctl("mailq")
    for rcpt in ("alice@example.test", "bob@example.test", "catchall@example.test"):
        assert rcpt in out, out
    assert "info@virtual.test" not in out.replace("ORCPT", "")  # only as the original recipient


def make_tls_and_users(tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
                    "/CN=mx.mx-test.test", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    hashes = {u: subprocess.run(["openssl", "passwd", "-6", p], check=True, capture_output=True,
                                text=True).stdout.strip()
              for u, p in (("alice", "secret"), ("bob", "hunter2"))}
    users = tmp_path / "users"
    users.write_text("".join(f"{u}:{h}\n" for u, h in hashes.items()))
    return dict(ingress__tls_cert_file=str(cert), ingress__tls_key_file=str(key),
                ingress__auth_users_file=str(users))


def swaks(node, *args, source=UNTRUSTED):
    return subprocess.run(["swaks", "--server", f"127.0.0.1:{node.smtp_port}", "--local-interface", source,
                           "--from", "alice@sender.test", "--ehlo", "client.test", "--timeout", "15", *args],
                          capture_output=True, text=True, timeout=60)


def test_starttls_and_auth_with_swaks(mxd_factory, tmp_path):
    node = policy_node(mxd_factory, tmp_path, **make_tls_and_users(tmp_path))
    # AUTH is not offered in the clear, STARTTLS is.
    with smtp_from(node, UNTRUSTED) as s:
        assert "starttls" in s.esmtp_features and "auth" not in s.esmtp_features
        assert s.docmd("AUTH PLAIN AGFsaWNlAHNlY3JldA==")[0] == 538
    # Over TLS, PLAIN and LOGIN authenticate; an authenticated client relays.
    for mech, user, password in (("PLAIN", "alice", "secret"), ("LOGIN", "bob", "hunter2")):
        r = swaks(node, "--tls", "--auth", mech, "--auth-user", user, "--auth-password", password,
                  "--to", "friend@elsewhere.test")
        assert r.returncode == 0, r.stdout + r.stderr
        assert "235 2.7.0 Authentication successful" in r.stdout
        assert "250 2.0.0 Ok: queued as" in r.stdout
    # A wrong password is refused and relaying stays closed.
    r = swaks(node, "--tls", "--auth", "PLAIN", "--auth-user", "alice", "--auth-password", "guess",
              "--to", "friend@elsewhere.test")
    assert r.returncode != 0
    assert "535 5.7.8 Authentication credentials invalid" in r.stdout
    r = swaks(node, "--tls", "--to", "friend@elsewhere.test")
    assert "550 5.7.1 <friend@elsewhere.test>: Relaying denied" in r.stdout
    text = node.metrics()
    assert metric_value(text, "mx_ingress_auth_total", {"result": "ok"}) == 2
    assert metric_value(text, "mx_ingress_auth_total", {"result": "failed"}) == 1
    assert metric_value(text, "mx_ingress_tls_handshakes_total", {"result": "ok"}) == 4
    assert "authenticated as bob" in node.logtext()


def auth_plain(node, source, user, password):
    """One AUTH PLAIN attempt on a fresh connection (AUTH allowed in the clear here)."""
    import base64
    with smtp_from(node, source) as s:
        token = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
        return s.docmd("AUTH PLAIN " + token)


def test_auth_guessing_is_throttled_per_address_and_per_user(mxd_factory, tmp_path):
    node = policy_node(mxd_factory, tmp_path, ingress__auth_over_plaintext=True, ingress__auth_failures_per_ip=3,
                       ingress__auth_failures_per_user=4, ingress__auth_failure_window="1h",
                       **make_tls_and_users(tmp_path))
    # One address guessing: three wrong passwords, then that address is cut
    # off before its password is looked at — even the right one.
    for guess in ("a", "b", "c"):
        assert auth_plain(node, "127.0.0.2", "alice", guess) == (535, b"5.7.8 Authentication credentials invalid")
    code, text = auth_plain(node, "127.0.0.2", "alice", "secret")
    assert (code, text) == (421, b"4.7.0 mx.mx-test.test Error: too many failed authentications from 127.0.0.2")
    # Other addresses are not affected, and a success clears alice's count...
    assert auth_plain(node, "127.0.0.4", "alice", "secret")[0] == 235
    # ...so a guesser spread over addresses needs four fresh failures to lock her.
    for source in ("127.0.0.5", "127.0.0.6", "127.0.0.7", "127.0.0.8"):
        assert auth_plain(node, source, "alice", "wrong")[0] == 535
    code, text = auth_plain(node, "127.0.0.9", "alice", "secret")
    assert code == 454 and text.startswith(b"4.7.0 Temporary authentication failure")
    assert auth_plain(node, "127.0.0.9", "bob", "hunter2")[0] == 235  # only alice is locked
    text = node.metrics()
    assert metric_value(text, "mx_ingress_rejections_total", {"reason": "auth_rate", "code": "421"}) == 1
    assert metric_value(text, "mx_ingress_rejections_total", {"reason": "auth_rate", "code": "454"}) == 1
    assert metric_value(text, "mx_ingress_auth_total", {"result": "failed"}) == 7
    log = node.logtext()
    assert "refused, too many failed authentications from 127.0.0.2" in log
    assert "refused, too many failed authentications for 'alice'" in log
    assert "secret" not in log and "hunter2" not in log


def recv_reply(sock_file):
    lines = []
    while True:
        line = sock_file.readline().decode()
        assert line, "connection closed"
        lines.append(line.rstrip("\r\n"))
        if line[3:4] != "-":
            return lines


def test_starttls_drops_plaintext_pipelined_after_it(mxd_factory, tmp_path):
    # CVE-2011-0411: commands sent in the clear behind STARTTLS must not be
    # executed inside the TLS session.
    node = policy_node(mxd_factory, tmp_path, **make_tls_and_users(tmp_path))
    raw = socket.create_connection(("127.0.0.1", node.smtp_port), timeout=10)
    f = raw.makefile("rb")
    assert recv_reply(f)[0].startswith("220 ")
    raw.sendall(b"EHLO client.test\r\n")
    recv_reply(f)
    raw.sendall(b"STARTTLS\r\nMAIL FROM:<injected@evil.test>\r\n")
    assert recv_reply(f) == ["220 2.0.0 Ready to start TLS"]
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    tls = ctx.wrap_socket(raw)
    tf = tls.makefile("rb")
    tls.sendall(b"EHLO client.test\r\n")
    first = recv_reply(tf)
    assert first[0] == "250-mx.mx-test.test", first  # not a reply to the injected MAIL
    assert "250-AUTH PLAIN LOGIN" in first
    tls.sendall(b"MAIL FROM:<a@sender.test>\r\n")
    assert recv_reply(tf) == ["250 2.1.0 Ok"]  # no "nested MAIL": the injected one never ran
    tls.sendall(b"QUIT\r\n")
    assert recv_reply(tf)[0].startswith("221")
    tls.close()


def test_bad_map_on_reload_keeps_the_old_policy(mxd_factory, tmp_path):
    node = policy_node(mxd_factory, tmp_path)
    access = node.maps / "access"

    def sender_reply(addr):
        with smtp_from(node, UNTRUSTED) as s:
            return s.docmd(f"MAIL FROM:<{addr}>")

    assert sender_reply("spammer@bad.test")[0] == 550
    assert sender_reply("x@newly-bad.test")[0] == 250
    access.write_text(ACCESS + "From:newly-bad.test REJECT\nFrom:broken.test MAYBE\n")
    node.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "reload refused" in node.logtext(), timeout=10, what="reload refusal in the log")
    assert f"{access}:7: unknown action 'MAYBE'" in node.logtext()
    assert sender_reply("spammer@bad.test")[0] == 550  # old policy in force
    assert sender_reply("x@newly-bad.test")[0] == 250  # new line not half-applied
    access.write_text(ACCESS + "From:newly-bad.test REJECT\n")
    node.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "SIGHUP: policy reloaded" in node.logtext(), timeout=10, what="reload")
    assert sender_reply("x@newly-bad.test") == (550, b"5.7.1 <x@newly-bad.test>: Sender address rejected: "
                                                     b"Access denied")
    text = node.metrics()
    assert metric_value(text, "mx_ingress_policy_reloads_total", {"result": "error"}) == 1


def test_bad_map_at_start_is_refused_with_file_and_line(mxd_factory, tmp_path):
    maps = tmp_path / "maps"
    maps.mkdir()
    (maps / "aliases").write_text("postmaster: admin@example.test\nlist: |/usr/bin/procmail\n")
    with pytest.raises(AssertionError) as e:
        mxd_factory(ingress__aliases=str(maps / "aliases"))
    assert f"{maps}/aliases:2: program aliases are not supported" in str(e.value)


def test_connection_limits_answer_421_at_once(mxd_factory, tmp_path):
    node = mxd_factory(ingress__max_connections_per_ip=2, ingress__max_connections=5,
                       ingress__mynetworks=["127.0.0.1/32"])
    held = [smtplib.SMTP("127.0.0.1", node.smtp_port, source_address=(UNTRUSTED, 0), timeout=10)
            for _ in range(2)]
    with socket.create_connection(("127.0.0.1", node.smtp_port), timeout=10, source_address=(UNTRUSTED, 0)) as s:
        reply = s.makefile("rb").readline().decode()
        assert reply.startswith(f"421 4.7.0 mx.mx-test.test Error: too many connections from {UNTRUSTED}"), reply
        assert s.recv(1) == b""  # closed, not left hanging
    # Other addresses are not affected by one client's limit; mynetworks is exempt from it.
    more = [smtplib.SMTP("127.0.0.1", node.smtp_port, source_address=(src, 0), timeout=10)
            for src in (ACCESS_RELAY, "127.0.0.1", "127.0.0.1")]
    for m in more:
        assert m.noop()[0] == 250
    # The total (max_connections, 5) holds for everyone.
    with socket.create_connection(("127.0.0.1", node.smtp_port), timeout=10) as s:
        reply = s.makefile("rb").readline().decode()
        assert reply.startswith("421 4.3.2 mx.mx-test.test Too many connections"), reply
    for h in held + more:
        h.quit()
    wait_for(lambda: _greets(node, UNTRUSTED), timeout=10, what="a slot to free up")


def _greets(node, source="127.0.0.1"):
    with socket.create_connection(("127.0.0.1", node.smtp_port), timeout=10, source_address=(source, 0)) as s:
        return s.makefile("rb").readline().startswith(b"220 ")


def test_connection_rate_per_ip(mxd_factory):
    node = mxd_factory(ingress__connection_rate_per_ip=3, ingress__mynetworks=["127.0.0.1/32"])
    replies = []
    for _ in range(5):  # from outside mynetworks (which is exempt)
        with socket.create_connection(("127.0.0.1", node.smtp_port), timeout=10,
                                      source_address=(UNTRUSTED, 0)) as s:
            replies.append(s.makefile("rb").readline().decode()[:9])
            s.sendall(b"QUIT\r\n")
    assert replies[:3] == ["220 mx.mx"] * 3, replies
    assert replies[3:] == ["421 4.7.0"] * 2, replies
    assert metric_value(node.metrics(), "mx_ingress_rejections_total", {"reason": "connection_rate"}) == 2


def test_load_shedding_refuse_la_and_queue_la_then_etrn(mxd_factory, tmp_path, dns, sinks):
    from conftest import MX_GOOD
    from mxtest import free_port

    port = free_port(MX_GOOD)
    sink = sinks(MX_GOOD, port)
    d = dns(port)
    loadavg = tmp_path / "loadavg"
    loadavg.write_text("5.00 5.00 5.00 1/100 1\n")  # above QueueLA, below RefuseLA
    node = mxd_factory(ingress__refuse_la=8, ingress__queue_la=4, ingress__loadavg_file=str(loadavg),
                       ingress__relay_domains=["example.test"], queue__min_backoff="1h", queue__max_backoff="2h",
                       delivery__dns_servers=[d.server], delivery__smtp_port=port)
    with smtplib.SMTP("127.0.0.1", node.smtp_port, timeout=10) as s:
        s.sendmail("a@sender.test", ["user@example.test"], b"Subject: queued only\r\n\r\nx\r\n")
    assert "queued only: system load above QueueLA" in node.mxctl("mailq")
    assert sink.count() == 0

    loadavg.write_text("9.00 9.00 9.00 1/100 1\n")  # above RefuseLA

    def refused():
        with socket.create_connection(("127.0.0.1", node.smtp_port), timeout=10) as s:
            return s.makefile("rb").readline().decode().startswith("421 4.3.2 mx.mx-test.test Too busy")

    wait_for(refused, timeout=5, what="RefuseLA to refuse connections")
    loadavg.write_text("0.10 0.10 0.10 1/100 1\n")
    wait_for(lambda: _greets(node), timeout=5, what="connections accepted again")
    assert sink.count() == 0

    # ETRN for the relay domain runs the queue now instead of in an hour.
    with smtplib.SMTP("127.0.0.1", node.smtp_port, timeout=10) as s:
        s.ehlo("client.test")
        assert s.docmd("ETRN example.test") == (250, b"2.0.0 Queuing for node <example.test> started")
        assert s.docmd("ETRN elsewhere.test")[0] == 459
    wait_for(lambda: sink.count() == 1, timeout=20, what="delivery after ETRN")


def test_min_free_disk_answers_452(mxd_factory):
    node = mxd_factory(queue__min_free_disk="1000000G")
    with smtplib.SMTP("127.0.0.1", node.smtp_port, timeout=10) as s:
        with pytest.raises(smtplib.SMTPDataError) as e:
            s.sendmail("a@sender.test", ["b@example.test"], b"Subject: x\r\n\r\ny\r\n")
        assert (e.value.smtp_code, e.value.smtp_error) == (452, b"4.3.1 Insufficient system storage")
    # New transactions are refused at MAIL while the queue is short of space.
    with smtplib.SMTP("127.0.0.1", node.smtp_port, timeout=10) as s:
        s.ehlo("client.test")
        assert s.mail("a@sender.test") == (452, b"4.3.1 Insufficient system storage")
    assert "Mail queue is empty" in node.mxctl("mailq")


def test_header_rules_and_discard_are_counted(mxd_factory, tmp_path):
    node = policy_node(mxd_factory, tmp_path)
    with smtp_from(node, UNTRUSTED) as s:
        with pytest.raises(smtplib.SMTPDataError) as e:
            s.sendmail("a@sender.test", ["team@corp.test"], b"Subject: Re: ILOVEYOU\r\n\r\nkiss\r\n")
        assert (e.value.smtp_code, e.value.smtp_error) == (501, b"5.7.1 LoveLetter virus")
        s.rset()
        s.sendmail("a@sender.test", ["trash@corp.test"], b"Subject: dropped\r\n\r\nx\r\n")  # 250, discarded
        with pytest.raises(smtplib.SMTPSenderRefused) as e:
            s.sendmail("x@mail.bad.test", ["team@corp.test"], b"Subject: x\r\n\r\ny\r\n")
        assert (e.value.smtp_code, e.value.smtp_error) == (553, b"5.7.1 Spam source")
    assert "Mail queue is empty" in node.mxctl("mailq")
    text = node.metrics()
    assert metric_value(text, "mx_ingress_rejections_total", {"reason": "header", "code": "501"}) == 1
    assert metric_value(text, "mx_ingress_rejections_total", {"reason": "access", "code": "553"}) == 1
    assert metric_value(text, "mx_ingress_messages_discarded_total") == 1

    def msgsdis():
        rows = [l.split() for l in node.mxctl("mailstats").splitlines() if l.endswith("esmtp")]
        return rows and rows[0][6] == "1"

    wait_for(msgsdis, timeout=10, what="mailstats msgsdis")
    log = node.logtext()
    assert "reject: header from unknown [127.0.0.2]: 501 5.7.1 LoveLetter virus" in log
    assert "discarded: from=<a@sender.test>" in log


def test_dnsbl_dnswl_and_reverse_dns_through_a_real_dns_server(mxd_factory, tmp_path):
    from mxtest import Unbound

    dns_dir = tmp_path / "dns"
    dns_dir.mkdir()
    records = [
        "2.0.0.127.bl.test. 300 IN A 127.0.0.2",  # 127.0.0.2 is listed
        "3.0.0.127.bl.test. 300 IN A 127.0.0.2",  # 127.0.0.3 too, but also on the allow list
        "3.0.0.127.wl.test. 300 IN A 127.0.0.1",
        "4.0.0.127.bl.test. 300 IN A 127.0.0.10",  # a return code this zone does not block on
        "2.0.0.127.in-addr.arpa. 300 IN PTR client2.test.",
        "client2.test. 300 IN A 127.0.0.2",
        "5.0.0.127.in-addr.arpa. 300 IN PTR client5.test.",
        "client5.test. 300 IN A 127.0.0.5",
        "6.0.0.127.in-addr.arpa. 300 IN PTR forged.test.",  # does not resolve back
        "forged.test. 300 IN A 192.0.2.1",
    ]
    zones = {"bl.test": "static", "wl.test": "static", "127.in-addr.arpa": "static", "client2.test": "static",
             "client5.test": "static", "forged.test": "static", "broken.test": "refuse"}
    dns = Unbound(dns_dir, zones, records)
    try:
        access = tmp_path / "access"
        access.write_text("Connect:client5.test REJECT\n")
        node = mxd_factory(
            ingress__mynetworks=["127.0.0.1/32"], ingress__relay_domains=["example.test"],
            ingress__dns_servers=[dns.server], ingress__dns_timeout="2s", ingress__reverse_dns=True,
            ingress__access_map=str(access),
            ingress__dnsbl=[{"zone": "broken.test"},
                            {"zone": "wl.test", "pass": ["127.0.0.0/8"]},
                            {"zone": "bl.test", "block": ["127.0.0.2", "127.0.0.3"]}])
        replies = {}
        for source in ("127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5", "127.0.0.6"):
            with smtp_from(node, source) as s:
                replies[source] = s.mail("a@sender.test")
        assert replies["127.0.0.2"] == (554, b"5.7.1 Service unavailable; Client host [127.0.0.2] blocked using "
                                             b"bl.test")
        assert replies["127.0.0.3"][0] == 250  # the allow list ends the checks
        assert replies["127.0.0.4"][0] == 250  # 127.0.0.10 is not a blocking answer here
        assert replies["127.0.0.5"] == (550, b"5.7.1 Access denied for client5.test [127.0.0.5]")  # by its name
        assert replies["127.0.0.6"][0] == 250
        log = node.logtext()
        assert "reject: MAIL from client2.test [127.0.0.2]" in log  # forward-confirmed name
        text = node.metrics()
        # A refusing DNSBL is a temporary pass, counted, for every client it was asked about.
        assert metric_value(text, "mx_ingress_dnsbl_lookups_total", {"zone": "broken.test",
                                                                      "result": "tempfail"}) == 5
        assert metric_value(text, "mx_ingress_dnsbl_lookups_total", {"zone": "bl.test", "result": "listed"}) == 3
        assert metric_value(text, "mx_ingress_rejections_total", {"reason": "dnsbl", "code": "554"}) == 1
        # The forged name is not believed.
        with smtp_from(node, "127.0.0.6") as s:
            s.sendmail("a@sender.test", ["user@example.test"], b"Subject: x\r\n\r\ny\r\n")
        wait_for(lambda: "relay=unknown [127.0.0.6]" in node.logtext(), timeout=10, what="the accept log line")
        assert "forged.test" not in node.logtext()
    finally:
        dns.stop()


def test_policy_test_mode_traces_every_step_without_sending_mail(mxd_factory, tmp_path):
    import json

    node = policy_node(mxd_factory, tmp_path)

    def policy_test(*args):
        return node.mxctl_run(*args, token_file="read")  # a read-only role may test policy

    r = policy_test("policy", "test", "--client-ip", UNTRUSTED, "--from", "a@sender.test",
                    "--to", "team@corp.test", "--to", "victim%elsewhere.test@corp.test",
                    "--header", "Subject: Re: ILOVEYOU")
    assert r.returncode == 1, r.stdout + r.stderr  # reject
    lines = r.stdout.splitlines()
    assert lines[0].split()[:4] == ["connect", "unknown", f"[{UNTRUSTED}]", "pass"]
    assert "aliases:" in lines[2] and "-> alice@example.test, bob@example.test" in lines[2]
    assert "550 5.7.1 <victim%elsewhere.test@corp.test>: Relaying denied" in lines[3]
    assert lines[4].startswith("data") and "501 5.7.1 LoveLetter virus" in lines[4]
    assert lines[5] == "outcome  reject: 501 5.7.1 LoveLetter virus"

    r = policy_test("-o", "json", "policy", "test", "--client-ip", ACCESS_RELAY, "--from", "<>",
                    "--to", "friend@elsewhere.test")
    assert r.returncode == 0, r.stdout + r.stderr
    out = json.loads(r.stdout)
    assert out["outcome"] == "accept"
    assert [s["result"] for s in out["steps"]] == ["relay", "pass", "relay", "pass"]
    assert out["steps"][0]["why"] == "access:2 Connect:127.0.0.3 RELAY"

    r = policy_test("policy", "test", "--client-ip", "not-an-ip", "--to", "a@b.test")
    assert r.returncode == 65 and "client_ip must be an IP address" in r.stderr  # EX_DATAERR
    assert "Mail queue is empty" in node.mxctl("mailq")  # nothing was sent


def test_queue_backpressure_sheds_new_connections(mxd_factory):
    from mxtest import free_port

    node = mxd_factory(role="ingress", ingress__queue=[f"127.0.0.1:{free_port()}"], ingress__enqueue_timeout="1s",
                       ingress__backpressure_hold="30s")
    with smtplib.SMTP("127.0.0.1", node.smtp_port, timeout=10) as s:
        with pytest.raises(smtplib.SMTPDataError) as e:
            s.sendmail("a@sender.test", ["b@example.test"], b"Subject: x\r\n\r\ny\r\n")
        assert e.value.smtp_code == 451
    # While the breaker is open, one trial session a second gets in; the rest get 421.
    replies = []
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", node.smtp_port), timeout=10) as s:
            replies.append(s.makefile("rb").readline().decode())
    refused = [r for r in replies if r.startswith("421 4.3.2 mx.mx-test.test Service temporarily unavailable")]
    assert len(refused) >= 2, replies
    assert "queue backpressure: Enqueue failed" in node.logtext()


def test_smtp_source_against_the_policy(mxd_factory, tmp_path):
    # Postfix's load generator through aliases and a DISCARD rule: every
    # message is answered, expanded or dropped as the maps say.
    node = policy_node(mxd_factory, tmp_path, delivery__smart_host="[127.0.0.1]:9")
    port = f"127.0.0.1:{node.smtp_port}"
    for rcpt in ("team@corp.test", "trash@corp.test"):
        r = subprocess.run(["smtp-source", "-c", "-m", "10", "-s", "5", "-l", "512", "-f", "a@sender.test",
                            "-t", rcpt, port], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
    out = node.mxctl("-o", "json", "mailq")
    import json

    msgs = json.loads(out).get("messages", [])
    assert len(msgs) == 10  # the 10 to trash@ were discarded
    assert all(sorted(r["address"] for r in m["recipients"]) == ["alice@example.test", "bob@example.test"]
               for m in msgs)
    assert metric_value(node.metrics(), "mx_ingress_messages_discarded_total") == 10
