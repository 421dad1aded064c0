"""TLS policy against real peers: MTA-STS (RFC 8461) with policies served
over HTTPS by a real server, records from a real DNS server and MX hosts
(aiosmtpd) with certificates from a test CA. Under `enforce` mail goes only
to listed MX hosts with a verified certificate, and is deferred — never sent
in the clear — otherwise; `testing` delivers and logs; a domain whose policy
cannot be fetched has none. An address where opportunistic STARTTLS broke
gets plaintext at once for a while. DANE: secure TLSA records (the DNS
server sets the AD bit a validating resolver would) decide which
certificate an MX host must present."""
import http.server
import smtplib
import socket
import ssl
import subprocess
import threading

import pytest

from mxtest import TinyDns, free_port, metric_value, wait_for

GOOD_MX = "127.0.0.40"       # certificate for mx.good.test from the test CA
PLAIN_MX = "127.0.0.41"      # no STARTTLS at all
UNTRUSTED_MX = "127.0.0.42"  # a self-signed certificate
POLICY_WEB = "127.0.0.43"    # https://mta-sts.<domain>/.well-known/mta-sts.txt
NOTHING = "127.0.0.44"       # nothing listens (a policy host that is down)
BROKEN_TLS = "127.0.0.45"    # offers STARTTLS, then breaks the handshake


def openssl(*args):
    subprocess.run(["openssl", *args], check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A test CA, and certificates: (cert, key) per name list."""
    d = tmp_path_factory.mktemp("pki")
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2",
            "-subj", "/CN=mx test CA", "-keyout", str(d / "ca.key"), "-out", str(d / "ca.pem"))

    def issue(name, sans, ca=True):
        key, csr, crt = d / f"{name}.key", d / f"{name}.csr", d / f"{name}.pem"
        openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-subj", f"/CN={sans[0]}",
                "-keyout", str(key), "-out", str(csr))
        ext = d / f"{name}.ext"
        ext.write_text("subjectAltName=" + ",".join(f"DNS:{s}" for s in sans) + "\n")
        if ca:
            openssl("x509", "-req", "-in", str(csr), "-CA", str(d / "ca.pem"), "-CAkey", str(d / "ca.key"),
                    "-CAcreateserial", "-days", "2", "-extfile", str(ext), "-out", str(crt))
        else:  # self-signed: no chain to the CA
            openssl("x509", "-req", "-in", str(csr), "-signkey", str(key), "-days", "2", "-extfile", str(ext),
                    "-out", str(crt))
        return str(crt), str(key)

    return {"ca": str(d / "ca.pem"), "issue": issue}


POLICIES = {
    "good.test": "version: STSv1\nmode: enforce\nmx: mx.good.test\nmax_age: 86400\n",
    "plain.test": "version: STSv1\nmode: enforce\nmx: mx.plain.test\nmax_age: 86400\n",
    "untrusted.test": "version: STSv1\nmode: enforce\nmx: mx.untrusted.test\nmax_age: 86400\n",
    "wrongname.test": "version: STSv1\nmode: enforce\nmx: *.wrongname.test\nmax_age: 86400\n",
    "unlisted.test": "version: STSv1\nmode: enforce\nmx: *.elsewhere.test\nmax_age: 86400\n",
    "testing.test": "version: STSv1\nmode: testing\nmx: mx.elsewhere.test\nmax_age: 86400\n",
}


class PolicyServer:
    """HTTPS on POLICY_WEB: each mta-sts.<domain> gets POLICIES[domain]; counts fetches."""

    def __init__(self, cert, key):
        server = self
        self.fetches = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                host = (self.headers.get("Host") or "").split(":")[0]
                domain = host.removeprefix("mta-sts.")
                server.fetches.append((host, self.path))
                body = POLICIES.get(domain)
                if self.path != "/.well-known/mta-sts.txt" or body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body.encode())

            def log_message(self, *args):
                pass

        self.port = free_port(POLICY_WEB)
        self.httpd = http.server.ThreadingHTTPServer((POLICY_WEB, self.port), Handler)
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(cert, key)
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def records():
    r = {}
    for domain, mx_ip in (("good.test", GOOD_MX), ("plain.test", PLAIN_MX), ("untrusted.test", UNTRUSTED_MX),
                          ("wrongname.test", GOOD_MX), ("unlisted.test", GOOD_MX), ("testing.test", PLAIN_MX),
                          ("nopolicy.test", PLAIN_MX), ("downpolicy.test", PLAIN_MX)):
        r[(domain, "MX")] = [f"10 mx.{domain}"]
        r[(f"mx.{domain}", "A")] = [mx_ip]
        if domain != "nopolicy.test":
            r[(f"_mta-sts.{domain}", "TXT")] = ["v=STSv1; id=2026112301;"]
            r[(f"mta-sts.{domain}", "A")] = [NOTHING if domain == "downpolicy.test" else POLICY_WEB]
    return r


def test_mta_sts_enforce_needs_a_listed_mx_and_a_verified_certificate(pki, sinks, mxd_factory):
    web = PolicyServer(*pki["issue"]("web", [f"mta-sts.{d}" for d in POLICIES]))
    dns = TinyDns(records=records())
    try:
        port = free_port(GOOD_MX)
        good = sinks(GOOD_MX, port, tls=pki["issue"]("good", ["mx.good.test"]))
        plain = sinks(PLAIN_MX, port)
        untrusted = sinks(UNTRUSTED_MX, port, tls=pki["issue"]("self", ["mx.untrusted.test"], ca=False))
        node = mxd_factory(delivery__dns_servers=[dns.server], delivery__smtp_port=port, delivery__mta_sts=True,
                           delivery__mta_sts_port=web.port, delivery__tls_ca_file=pki["ca"],
                           queue__min_backoff="1h", queue__max_backoff="2h")
        domains = ["good.test", "plain.test", "untrusted.test", "wrongname.test", "unlisted.test", "testing.test",
                   "nopolicy.test", "downpolicy.test"]
        with smtplib.SMTP("127.0.0.1", node.smtp_port) as s:
            for d in domains:
                s.sendmail("a@sender.test", [f"user@{d}"], f"Subject: to {d}\r\n\r\nx\r\n".encode())

        def outcome(domain):
            for line in node.logtext().splitlines():
                if f"to=<user@{domain}>" in line and "stat=" in line:
                    return line
            return None

        wait_for(lambda: all(outcome(d) for d in domains), timeout=60, what="an outcome for every domain")
        # Listed host, certificate from a trusted CA naming it: delivered over TLS.
        assert "stat=Sent" in outcome("good.test"), outcome("good.test")
        assert [r for _, r, _ in good.messages] == [["user@good.test"]]
        # No STARTTLS: deferred, nothing sent in the clear.
        assert "stat=Deferred" in outcome("plain.test") and "STARTTLS" in outcome("plain.test"), outcome("plain.test")
        # A certificate that does not chain to a trusted root, or names another host.
        assert "stat=Deferred" in outcome("untrusted.test"), outcome("untrusted.test")
        assert "not trusted" in outcome("untrusted.test"), outcome("untrusted.test")
        assert untrusted.messages == []
        assert "stat=Deferred" in outcome("wrongname.test"), outcome("wrongname.test")
        assert "not trusted: hostname mismatch" in outcome("wrongname.test"), outcome("wrongname.test")
        assert "class=policy" in outcome("wrongname.test"), outcome("wrongname.test")
        # An MX host the policy does not list is never tried.
        line = outcome("unlisted.test")
        assert "stat=Deferred" in line and "lists none of its MX hosts" in line and "*.elsewhere.test" in line, line
        # testing: delivered (in the clear here), and the mismatch is logged.
        assert "stat=Sent" in outcome("testing.test"), outcome("testing.test")
        assert "MTA-STS testing policy of testing.test" in node.logtext()
        # No policy, or one that cannot be fetched (and none cached): as before.
        assert "stat=Sent" in outcome("nopolicy.test") and "stat=Sent" in outcome("downpolicy.test")
        assert sorted(r[0] for _, r, _ in plain.messages) == ["user@downpolicy.test", "user@nopolicy.test",
                                                               "user@testing.test"]
        assert ("mta-sts.good.test", "/.well-known/mta-sts.txt") in web.fetches
        metrics = node.metrics()
        assert metric_value(metrics, "mx_delivery_mta_sts_total", {"mode": "enforce"}) >= 5
        assert metric_value(metrics, "mx_delivery_mta_sts_total", {"mode": "testing"}) >= 1
        # The policy is cached: more mail to good.test fetches nothing more.
        fetched = len(web.fetches)
        with smtplib.SMTP("127.0.0.1", node.smtp_port) as s:
            s.sendmail("a@sender.test", ["again@good.test"], b"Subject: again\r\n\r\nx\r\n")
        wait_for(lambda: good.count() == 2, what="the second message to good.test")
        assert len(web.fetches) == fetched
    finally:
        web.stop()
        dns.stop()


class BrokenTlsPeer:
    """An SMTP server that offers STARTTLS and then answers the handshake
    with garbage; takes mail in the clear and closes after each message."""

    def __init__(self, host, port):
        self.starttls = 0
        self.messages = 0
        self.lock = threading.Lock()
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.sock.listen(16)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        f = conn.makefile("rb")
        try:
            conn.sendall(b"220 broken.test ESMTP\r\n")
            in_data = False
            for line in f:
                if in_data:
                    if line == b".\r\n":
                        in_data = False
                        with self.lock:
                            self.messages += 1
                        conn.sendall(b"250 2.0.0 Ok\r\n")
                        return  # close after each message
                    continue
                cmd = line.strip().upper()
                if cmd.startswith(b"EHLO"):
                    conn.sendall(b"250-broken.test\r\n250-PIPELINING\r\n250 STARTTLS\r\n")
                elif cmd == b"STARTTLS":
                    with self.lock:
                        self.starttls += 1
                    conn.sendall(b"220 2.0.0 Ready to start TLS\r\n")
                    conn.sendall(b"this is not a TLS server hello\r\n")
                    return
                elif cmd == b"DATA":
                    in_data = True
                    conn.sendall(b"354 go ahead\r\n")
                elif cmd == b"QUIT":
                    conn.sendall(b"221 bye\r\n")
                    return
                else:
                    conn.sendall(b"250 2.0.0 Ok\r\n")
        except OSError:
            pass
        finally:
            conn.close()

    def stop(self):
        self.sock.close()


def test_a_broken_starttls_is_remembered_per_address(mxd_factory):
    dns = TinyDns(records={("broken.test", "MX"): ["10 mx.broken.test"], ("mx.broken.test", "A"): [BROKEN_TLS]})
    port = free_port(BROKEN_TLS)
    peer = BrokenTlsPeer(BROKEN_TLS, port)
    try:
        node = mxd_factory(delivery__dns_servers=[dns.server], delivery__smtp_port=port)
        for i in range(3):
            with smtplib.SMTP("127.0.0.1", node.smtp_port) as s:
                s.sendmail("a@sender.test", [f"u{i}@broken.test"], b"Subject: x\r\n\r\nx\r\n")
            wait_for(lambda: peer.messages == i + 1, what=f"message {i + 1} in the clear")
        # Only the first connection tried TLS; the next ones went straight to plaintext.
        assert peer.starttls == 1
        assert "retrying without TLS" in node.logtext()
        assert metric_value(node.metrics(), "mx_delivery_tls_failure_remembered_total") == 2
    finally:
        peer.stop()
        dns.stop()


DANE_GOOD = "127.0.0.46"   # self-signed certificate whose key the TLSA record names
DANE_OTHER = "127.0.0.47"  # a certificate the TLSA record does not name


def spki_sha256(cert):
    """TLSA 3 1 1 data: SHA-256 of the certificate's SubjectPublicKeyInfo."""
    import hashlib

    pub = subprocess.run(["openssl", "x509", "-in", cert, "-pubkey", "-noout"], check=True, capture_output=True).stdout
    der = subprocess.run(["openssl", "pkey", "-pubin", "-outform", "DER"], input=pub, check=True,
                         capture_output=True).stdout
    return hashlib.sha256(der).hexdigest()


def test_dane_checks_tls_against_secure_tlsa_records(pki, sinks, mxd_factory):
    port = free_port(DANE_GOOD)
    good_cert = pki["issue"]("dane-good", ["anything.example"], ca=False)  # DANE-EE: names and chains do not matter
    other_cert = pki["issue"]("dane-other", ["mx.danebad.test"], ca=False)
    good = sinks(DANE_GOOD, port, tls=good_cert)
    other = sinks(DANE_OTHER, port, tls=other_cert)
    plain = sinks(PLAIN_MX, port)
    tlsa = f"3 1 1 {spki_sha256(good_cert[0])}"
    records, secure = {}, []
    for domain, ip, signed in (("dane.test", DANE_GOOD, True), ("danebad.test", DANE_OTHER, True),
                               ("daneplain.test", PLAIN_MX, True), ("insecure.test", DANE_OTHER, False)):
        records[(domain, "MX")] = [f"10 mx.{domain}"]
        records[(f"mx.{domain}", "A")] = [ip]
        records[(f"_{port}._tcp.mx.{domain}", "TLSA")] = [tlsa]
        if signed:
            secure += [(domain, "MX"), (f"_{port}._tcp.mx.{domain}", "TLSA")]
    dns = TinyDns(records=records, secure=secure)
    try:
        node = mxd_factory(delivery__dns_servers=[dns.server], delivery__smtp_port=port, delivery__dane=True,
                           queue__min_backoff="1h", queue__max_backoff="2h")
        domains = ["dane.test", "danebad.test", "daneplain.test", "insecure.test"]
        with smtplib.SMTP("127.0.0.1", node.smtp_port) as s:
            for d in domains:
                s.sendmail("a@sender.test", [f"user@{d}"], f"Subject: to {d}\r\n\r\nx\r\n".encode())

        def outcome(domain):
            return next((l for l in node.logtext().splitlines() if f"to=<user@{domain}>" in l and "stat=" in l), None)

        wait_for(lambda: all(outcome(d) for d in domains), timeout=60, what="an outcome for every domain")
        # The certificate's key is the one the secure TLSA record names: delivered over TLS.
        assert "stat=Sent" in outcome("dane.test") and "tls=TLSv1" in outcome("dane.test"), outcome("dane.test")
        assert [r for _, r, _ in good.messages] == [["user@dane.test"]]
        # Another key: deferred, never sent.
        line = outcome("danebad.test")
        assert "stat=Deferred" in line and "not trusted" in line and "DANE" in line, line
        # No STARTTLS at a host with secure TLSA records: deferred, not sent in the clear.
        line = outcome("daneplain.test")
        assert "stat=Deferred" in line and "STARTTLS" in line, line
        assert plain.messages == []
        # The same records without DNSSEC count for nothing: opportunistic TLS as before.
        assert "stat=Sent" in outcome("insecure.test"), outcome("insecure.test")
        assert [r for _, r, _ in other.messages] == [["user@insecure.test"]]
        metrics = node.metrics()
        assert metric_value(metrics, "mx_delivery_dane_total", {"result": "secure"}) >= 3
        assert metric_value(metrics, "mx_delivery_dane_total", {"result": "insecure"}) == 0  # insecure MX: no TLSA asked
        assert dns.queries.get((f"_{port}._tcp.mx.insecure.test", "TLSA"), 0) == 0
    finally:
        dns.stop()


def test_an_unreadable_trust_anchor_file_stops_the_start(mxd_factory, tmp_path):
    with pytest.raises(AssertionError, match="mxd exited with"):
        mxd_factory(delivery__mta_sts=True, delivery__tls_ca_file=str(tmp_path / "no-such-ca.pem"))
    log = (tmp_path / "mx" / "mxd.log").read_text()
    assert "delivery.tls_ca_file: " + str(tmp_path / "no-such-ca.pem") in log, log
