"""Fixtures: a DNS server with a test zone and SMTP peers on 127.0.0.x."""
import shutil

import pytest

from mxtest import MXD, Sink, Unbound

# MX hosts live on their own loopback addresses; the SMTP port is shared.
MX_GOOD = "127.0.0.2"
MX_DOWN = "127.0.0.3"  # nothing listens here: connection refused
MX_BOUNCE = "127.0.0.4"
MX_SENDER = "127.0.0.5"
MX_GOOD2 = "127.0.0.6"  # a second good host of equal preference


def pytest_configure(config):
    missing = [tool for tool in ("unbound", "swaks", "smtp-source", "smtp-sink") if shutil.which(tool) is None]
    if missing or not MXD.exists():
        raise pytest.UsageError(f"functional tests need {missing or ''} {'' if MXD.exists() else MXD} "
                                "(run scripts/install-deps and build first)")


@pytest.fixture
def dns(tmp_path):
    def start(smtp_port):
        zone = [
            # preference order: the lower MX (refusing) is tried first, then the good one
            "example.test. 60 IN MX 10 mx-down.example.test.",
            "example.test. 60 IN MX 20 mx1.example.test.",
            f"mx1.example.test. 60 IN A {MX_GOOD}",
            f"mx-down.example.test. 60 IN A {MX_DOWN}",
            # implicit MX: no MX record, only an A record
            f"implicit.test. 60 IN A {MX_GOOD}",
            # a destination that bounces recipients
            "bounce.test. 60 IN MX 10 mx.bounce.test.",
            f"mx.bounce.test. 60 IN A {MX_BOUNCE}",
            # the senders' domain, where DSNs go
            "sender.test. 60 IN MX 10 mx.sender.test.",
            f"mx.sender.test. 60 IN A {MX_SENDER}",
            # RFC 7505 null MX
            'nullmx.test. 60 IN MX 0 .',
            # only the refusing host
            "down.test. 60 IN MX 10 mx-down.example.test.",
            # two equally preferred hosts behind a refusing better one
            "multi.test. 60 IN MX 10 mx-down.example.test.",
            "multi.test. 60 IN MX 20 mx1.example.test.",
            f"multi.test. 60 IN MX 20 mx2.multi.test.",
            f"mx2.multi.test. 60 IN A {MX_GOOD2}",
            # secondary-MX role: this node is MX 20 for backup.test (primary:
            # mx1), and the only MX of loop.test
            "backup.test. 60 IN MX 10 mx1.example.test.",
            "backup.test. 60 IN MX 20 mx-self.backup.test.",
            "backup.test. 60 IN MX 30 mx-down.example.test.",
            "mx-self.backup.test. 60 IN A 127.0.0.1",
            "loop.test. 60 IN MX 10 mx-self.backup.test.",
        ]
        zones = {z: "static" for z in ("example.test", "implicit.test", "bounce.test", "sender.test",
                                       "nullmx.test", "down.test", "nosuch.test", "multi.test", "backup.test",
                                       "loop.test")}
        d = Unbound(tmp_path, zones, zone)
        started.append(d)
        return d

    started = []
    yield start
    for d in started:
        d.stop()


@pytest.fixture
def sinks():
    """Factory for aiosmtpd peers; all stopped at teardown."""
    made = []

    def make(host, port, **kw):
        s = Sink(host, port, **kw)
        made.append(s)
        return s

    yield make
    for s in made:
        s.stop()


@pytest.fixture
def mxd_factory(tmp_path):
    from mxtest import Mxd

    made = []

    def make(name="mx", **overrides):
        m = Mxd(tmp_path / name, **overrides)
        made.append(m)
        return m

    yield make
    for m in made:
        if m.proc and m.proc.poll() is None:
            m.stop()
    # Under the asan/tsan presets a sanitizer report in any mxd log fails the test.
    for m in made:
        log = m.logtext()
        for marker in ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:", "WARNING: ThreadSanitizer"):
            assert marker not in log, f"sanitizer report in {m.logfile}:\n{log[log.index(marker) - 200:][:4000]}"
