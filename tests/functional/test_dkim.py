"""DKIM signing at ingress, checked by an independent verifier (dkimpy) that
fetches the public keys from a real DNS server: rsa-sha256 and
ed25519-sha256 signatures on one message both verify after delivery, and
stop verifying when the message is changed; the signing domain is the From:
domain's nearest parent with keys; mail from untrusted clients and from
domains without keys is not signed; a bad key stops the start."""
import base64
import smtplib
import subprocess

import dkim
import dns.message
import dns.query
import pytest

from conftest import MX_GOOD
from mxtest import TinyDns, free_port, metric_value, wait_for


def make_key(tmp_path, kind):
    """(private key path, DNS TXT value) made with the openssl command."""
    path = tmp_path / f"{kind}.pem"
    algo = ["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"] if kind == "rsa" else ["-algorithm", "ED25519"]
    subprocess.run(["openssl", "genpkey", *algo, "-out", str(path)], check=True, capture_output=True)
    der = subprocess.run(["openssl", "pkey", "-in", str(path), "-pubout", "-outform", "DER"], check=True,
                         capture_output=True).stdout
    if kind == "rsa":
        return path, "v=DKIM1; k=rsa; p=" + base64.b64encode(der).decode()
    # RFC 8463: the bare 32-octet Ed25519 key (the end of its SubjectPublicKeyInfo).
    return path, "v=DKIM1; k=ed25519; p=" + base64.b64encode(der[-32:]).decode()


@pytest.fixture
def signing(tmp_path):
    """Two keys for example.test, published in a DNS server; a dnsfunc for dkimpy that asks it."""
    rsa_key, rsa_txt = make_key(tmp_path, "rsa")
    ed_key, ed_txt = make_key(tmp_path, "ed25519")
    dns_server = TinyDns(records={
        ("dest.test", "MX"): ["10 mx.dest.test"],
        ("mx.dest.test", "A"): [MX_GOOD],
        ("rsa2026._domainkey.example.test", "TXT"): [rsa_txt],
        ("ed2026._domainkey.example.test", "TXT"): [ed_txt],
    })

    def dnsfunc(name, timeout=5):
        q = dns.message.make_query(name.decode() if isinstance(name, bytes) else name, "TXT")
        r = dns.query.udp(q, "127.0.0.1", port=dns_server.port, timeout=timeout)
        for rrset in r.answer:
            return b"".join(rrset[0].strings)
        return None

    keys = [{"domain": "example.test", "selector": "rsa2026", "key_file": str(rsa_key)},
            {"domain": "example.test", "selector": "ed2026", "key_file": str(ed_key)}]
    yield dns_server, keys, dnsfunc
    dns_server.stop()


MESSAGE = ("From: Alice <alice@news.example.test>\r\nTo: bob@dest.test\r\n"
           "Subject:   a  folded\r\n\tsubject line\r\nList-Unsubscribe: <https://example.test/u/1>\r\n"
           "List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n\r\n"
           "Hello  Bob, \t\r\n.leading dot\r\n\r\ntrailing empty lines follow\r\n\r\n\r\n")


def verifies(content, idx, dnsfunc):
    """dkimpy's verdict; a body hash mismatch is its exception, a failed signature False."""
    try:
        return dkim.DKIM(content).verify(idx=idx, dnsfunc=dnsfunc)
    except dkim.ValidationError:
        return False


def signatures(content):
    return [line for line in content.split(b"\r\n") if line.lower().startswith(b"dkim-signature:")]


def test_signatures_from_both_algorithms_verify_independently(signing, sinks, mxd_factory):
    dns_server, keys, dnsfunc = signing
    port = free_port(MX_GOOD)
    sink = sinks(MX_GOOD, port)
    node = mxd_factory(delivery__dns_servers=[dns_server.server], delivery__smtp_port=port,
                       ingress__dkim={"keys": keys})
    with smtplib.SMTP("127.0.0.1", node.smtp_port) as s:  # 127.0.0.1 is in mynetworks: trusted
        s.sendmail("alice@news.example.test", ["bob@dest.test"], MESSAGE.encode())
    wait_for(lambda: sink.count() == 1, what="the signed message")
    content = sink.messages[0][2]
    assert len(signatures(content)) == 2, content.decode(errors="replace")
    d = dkim.DKIM(content)
    algorithms = set()
    for idx in range(2):
        assert d.verify(idx=idx, dnsfunc=dnsfunc), f"signature {idx} does not verify: {content!r}"
        algorithms.add(d.signature_fields[b"a"])
        assert d.domain == b"example.test"  # the From: domain's parent that has keys
        assert b"list-unsubscribe-post" in d.include_headers
    assert algorithms == {b"rsa-sha256", b"ed25519-sha256"}

    # Changed in transit, neither verifies.
    for changed in (content.replace(b"Hello  Bob", b"Hello Eve"),
                    content.replace(b"subject line", b"subject lime"),
                    b"From: mallory@evil.test\r\n" + content):  # a second From: on top (oversigned)
        for idx in range(2):
            assert not verifies(changed, idx, dnsfunc), (idx, changed)

    log = node.logtext()
    assert "dkim=example.test rsa-sha256,ed25519-sha256" in log, log
    metrics = node.metrics()
    assert metric_value(metrics, "mx_ingress_dkim_signatures_total", {"algorithm": "rsa-sha256"}) == 1
    assert metric_value(metrics, "mx_ingress_dkim_signatures_total", {"algorithm": "ed25519-sha256"}) == 1


def test_only_trusted_clients_and_domains_with_keys_are_signed(signing, sinks, mxd_factory):
    dns_server, keys, _ = signing
    port = free_port(MX_GOOD)
    sink = sinks(MX_GOOD, port)
    # 127.0.0.1 is not in mynetworks here: it may only send to the relay domain, unsigned.
    node = mxd_factory(delivery__dns_servers=[dns_server.server], delivery__smtp_port=port,
                       ingress__dkim={"keys": keys}, ingress__mynetworks=["192.0.2.0/24"],
                       ingress__relay_domains=["dest.test"])
    with smtplib.SMTP("127.0.0.1", node.smtp_port) as s:
        s.sendmail("alice@example.test", ["bob@dest.test"], MESSAGE.encode())
    wait_for(lambda: sink.count() == 1, what="the message from an untrusted client")
    assert signatures(sink.messages[0][2]) == []

    trusted = mxd_factory("trusted", delivery__dns_servers=[dns_server.server], delivery__smtp_port=port,
                          ingress__dkim={"keys": keys})
    with smtplib.SMTP("127.0.0.1", trusted.smtp_port) as s:
        s.sendmail("carol@other.test", ["bob@dest.test"],
                   MESSAGE.replace("alice@news.example.test", "carol@example.test.other.test").encode())
    wait_for(lambda: sink.count() == 2, what="the message from a domain without keys")
    assert signatures(sink.messages[1][2]) == []
    assert metric_value(trusted.metrics(), "mx_ingress_dkim_signatures_total", {"algorithm": "rsa-sha256"}) == 0


def test_a_bad_key_stops_the_start_naming_it(tmp_path, mxd_factory):
    not_a_key = tmp_path / "broken.pem"
    not_a_key.write_text("-----BEGIN PRIVATE KEY-----\nnot base64\n-----END PRIVATE KEY-----\n")
    with pytest.raises(AssertionError, match="mxd exited with"):
        mxd_factory(ingress__dkim={"keys": [{"domain": "example.test", "selector": "s",
                                             "key_file": str(not_a_key)}]})
    log = (tmp_path / "mx" / "mxd.log").read_text()
    assert "ingress.dkim.keys[0] (" + str(not_a_key) + "): not a PEM private key" in log, log
