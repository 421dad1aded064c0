"""PersistentHostStatus, cluster-wide: an MX host that answered 421 is skipped
without a connection by every delivery worker until host_status_timeout;
mxctl hoststat shows it and mxctl purgestat forgets it."""
import smtplib
import socket
import threading

from conftest import MX_DOWN, MX_GOOD
from mxtest import ExtraDelivery, free_port, metric_value, wait_for


class Greeter421:
    """An SMTP host that answers every connection with 421 and hangs up; counts them."""

    def __init__(self, host, port):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.sock.listen(16)
        self.connections = 0
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                self.connections += 1
            try:
                conn.sendall(b"421 4.3.2 mx-down.example.test busy, try later\r\n")
            finally:
                conn.close()

    def count(self):
        with self.lock:
            return self.connections

    def stop(self):
        self.sock.close()


def test_a_421_host_is_skipped_by_every_worker_until_purged(dns, sinks, mxd_factory, tmp_path):
    port = free_port(MX_GOOD)
    d = dns(port)
    sink = sinks(MX_GOOD, port)
    busy = Greeter421(MX_DOWN, port)  # example.test: MX 10 is this host, MX 20 the sink
    node = mxd_factory(delivery__dns_servers=[d.server], delivery__smtp_port=port, delivery__concurrency=4)
    second = ExtraDelivery(node, tmp_path)  # a second delivery worker, pulling from the same queue
    metrics2 = second.metrics_port
    try:
        def metrics(port_):
            import urllib.request
            with urllib.request.urlopen(f"http://127.0.0.1:{port_}/metrics", timeout=5) as r:
                return r.read().decode()

        def known(port_):
            return metric_value(metrics(port_), "mx_delivery_host_status_hosts") or 0

        with smtplib.SMTP("127.0.0.1", node.smtp_port) as s:
            s.sendmail("a@sender.test", ["first@example.test"], b"Subject: first\r\n\r\nx\r\n")
        wait_for(lambda: sink.count() == 1, what="the first message via MX 20")
        assert busy.count() == 1
        out = node.mxctl("hoststat")
        assert "mx-down.example.test" in out and "421 4.3.2 mx-down.example.test busy" in out, out
        # Both workers learn it from the queue (their refresh runs every 2 s).
        wait_for(lambda: known(node.metrics_port) >= 1 and known(metrics2) >= 1, what="both workers to know it")

        with smtplib.SMTP("127.0.0.1", node.smtp_port) as s:
            for i in range(10):
                s.sendmail("a@sender.test", [f"u{i}@example.test"], f"Subject: {i}\r\n\r\nx\r\n".encode())
        wait_for(lambda: sink.count() == 11, what="ten more via MX 20")
        assert busy.count() == 1  # never contacted again, by either worker
        skips = sum(metric_value(metrics(p), "mx_delivery_host_status_skips_total") or 0
                    for p in (node.metrics_port, metrics2))
        assert skips >= 10

        assert "1 host status entry purged" in node.mxctl("purgestat", "mx-down.example.test")
        remaining = node.mxctl("hoststat")
        assert "mx-down.example.test" not in remaining and "mx1.example.test" in remaining, remaining
        # Both workers now know only mx1 (the successful MX 20).
        wait_for(lambda: known(node.metrics_port) == 1 and known(metrics2) == 1, what="both workers to forget it")
        with smtplib.SMTP("127.0.0.1", node.smtp_port) as s:
            s.sendmail("a@sender.test", ["last@example.test"], b"Subject: last\r\n\r\nx\r\n")
        wait_for(lambda: sink.count() == 12, what="the last message")
        assert busy.count() == 2  # tried again after purgestat
    finally:
        second.stop()
        busy.stop()
