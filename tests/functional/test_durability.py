"""Never lose a 250: kill -9 with mail queued, restart, everything is delivered."""
import smtplib
import subprocess

from conftest import MX_GOOD
from mxtest import free_port, wait_for


def test_kill9_with_queued_mail_loses_nothing(dns, sinks, mxd_factory):
    port = free_port(MX_GOOD)
    d = dns(port)
    # Host status off: the MX host comes up after the crash, and this test is
    # about the queue, not about skipping hosts that failed recently.
    node = mxd_factory(delivery__dns_servers=[d.server], delivery__smtp_port=port, delivery__host_status_timeout="0")
    # No MX host is listening yet: every message is deferred and stays queued.
    accepted = []
    with smtplib.SMTP("127.0.0.1", node.smtp_port) as s:
        for i in range(25):
            msgid = f"<kill9-{i}@sender.test>"
            s.sendmail("alice@sender.test", [f"r{i}@example.test"],
                       f"Subject: {i}\r\nMessage-ID: {msgid}\r\n\r\nbody {i}\r\n".encode())
            accepted.append(msgid)
    wait_for(lambda: "Deferred:" in node.mxctl("mailq"), what="deferrals")
    node.kill9()

    sink = sinks(MX_GOOD, port)
    node.start()  # same data directory and config
    wait_for(lambda: sink.count() >= len(accepted), timeout=30, what="every accepted message to be delivered")
    got = {c.split(b"Message-ID: ")[1].split(b"\r\n")[0].decode() for _, _, c in sink.messages}
    assert got == set(accepted)
    wait_for(lambda: "Mail queue is empty" in node.mxctl("mailq"), what="queue to drain")


def test_kill9_during_delivery_is_redelivered_without_waiting_for_the_lease(dns, sinks, mxd_factory):
    """A delivery in flight at a crash: after restart the worker's old leases are void at once."""
    port = free_port(MX_GOOD)
    d = dns(port)
    node = mxd_factory(delivery__dns_servers=[d.server], delivery__smtp_port=port, queue__lease_ttl="10m")
    sink = sinks(MX_GOOD, port, slow_data=1, data_delay=30.0)
    with smtplib.SMTP("127.0.0.1", node.smtp_port) as s:
        s.sendmail("alice@sender.test", ["inflight@example.test"],
                   b"Subject: in flight\r\nMessage-ID: <inflight@sender.test>\r\n\r\nx\r\n")
    wait_for(lambda: sink.data_started == 1, what="the first DATA to start")
    assert "*" in node.mxctl("mailq").split("<alice@sender.test>")[0]  # leased
    node.kill9()
    node.start()
    # Without releasing the dead incarnation's lease this would take lease_ttl (10 minutes).
    wait_for(lambda: sink.data_started == 2 and sink.count() >= 1, timeout=20, what="redelivery after restart")
    assert b"<inflight@sender.test>" in sink.messages[0][2]
    wait_for(lambda: "Mail queue is empty" in node.mxctl("mailq"), what="queue to drain")
    assert "released 1 recipients leased by earlier incarnations" in node.logtext()


def test_smtp_source_to_smtp_sink_through_mx(dns, mxd_factory, tmp_path):
    """Postfix's own load tools on both sides: smtp-source in, smtp-sink out."""
    port = free_port(MX_GOOD)
    d = dns(port)
    node = mxd_factory(delivery__dns_servers=[d.server], delivery__smtp_port=port)
    spool = tmp_path / "spool"
    spool.mkdir()
    sink = subprocess.Popen(["smtp-sink", "-u", "root", "-d", str(spool) + "/%M.", f"{MX_GOOD}:{port}", "64"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        n = 200
        src = subprocess.run(["smtp-source", "-s", "10", "-m", str(n), "-l", "2048", "-f", "load@sender.test",
                              "-t", "sink@example.test", f"127.0.0.1:{node.smtp_port}"],
                             capture_output=True, text=True, timeout=120)
        assert src.returncode == 0, src.stderr
        wait_for(lambda: sum(1 for p in spool.rglob("*") if p.is_file()) >= n, timeout=60,
                 what=f"{n} messages at smtp-sink")
        # With the sink still up: smtp-sink writes a message before its 250,
        # so the last deliveries may still be waiting for theirs.
        wait_for(lambda: "Mail queue is empty" in node.mxctl("mailq"), what="queue to drain")
    finally:
        sink.terminate()
        sink.wait()
