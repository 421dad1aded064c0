"""Hostile clients against a real ingress: connection floods, endless DATA,
endless RCPTs. Each gets its precise reply, nothing is queued, and mxd's
memory stays bounded: its peak RSS (VmHWM) may not grow by more than a fixed
ceiling over the attack (release builds; sanitizer builds keep freed memory
in quarantine, so there the replies are checked but not the ceiling)."""
import os
import socket
from pathlib import Path

from mxtest import wait_for

RSS_CEILING_MIB = 64


def sanitized():
    cache = Path(os.environ.get("MX_BUILD_DIR", "build/release")) / "CMakeCache.txt"
    return cache.exists() and any(line.startswith("MX_SANITIZE:") and line.strip().split("=", 1)[1]
                                  for line in cache.read_text().splitlines())


def status_kib(pid, field):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


def assert_memory_bounded(node, rss_before_kib):
    peak = status_kib(node.proc.pid, "VmHWM")
    if not sanitized():
        assert (peak - rss_before_kib) / 1024 < RSS_CEILING_MIB, f"peak RSS grew by {(peak - rss_before_kib) / 1024:.0f} MiB"


def reply(f):
    line = f.readline()
    while line[3:4] == b"-":
        line = f.readline()
    return line


def test_connection_flood_is_refused_at_the_limit_and_service_returns(mxd_factory):
    node = mxd_factory(ingress__max_connections=200, ingress__max_connections_per_ip=0)
    before = status_kib(node.proc.pid, "VmRSS")
    held, refused = [], 0
    for i in range(300):
        c = socket.create_connection(("127.0.0.1", node.smtp_port), timeout=10)
        line = c.makefile("rb").readline()
        if line.startswith(b"220 "):
            held.append(c)
        else:
            assert line.startswith(b"421 4.3.2 "), line
            refused += 1
            c.close()
    assert len(held) == 200 and refused == 100
    assert_memory_bounded(node, before)
    for c in held:
        c.close()

    def serves():
        with socket.create_connection(("127.0.0.1", node.smtp_port), timeout=10) as c:
            return c.makefile("rb").readline().startswith(b"220 ")

    wait_for(serves, timeout=20, what="a connection slot after the flood ended")
    assert "too many connections" in node.logtext().lower() or "max_connections" in node.logtext()


def test_endless_data_is_not_buffered_and_refused_at_the_end(mxd_factory):
    node = mxd_factory(ingress__max_message_size="1M")
    before = status_kib(node.proc.pid, "VmRSS")
    with socket.create_connection(("127.0.0.1", node.smtp_port), timeout=30) as c:
        f = c.makefile("rb")
        assert f.readline().startswith(b"220 ")
        for line, want in ((b"EHLO client.test", b"250 "), (b"MAIL FROM:<a@sender.test>", b"250 "),
                           (b"RCPT TO:<b@example.test>", b"250 "), (b"DATA", b"354 ")):
            c.sendall(line + b"\r\n")
            assert reply(f).startswith(want), line
        chunk = (b"x" * 998 + b"\r\n") * 1024  # 1 MiB of valid lines
        for _ in range(256):  # 256 MiB against a 1 MiB limit
            c.sendall(chunk)
        c.sendall(b".\r\n")
        assert reply(f).startswith(b"552 5.3.4 ")
        c.sendall(b"NOOP\r\n")
        assert reply(f).startswith(b"250 ")  # the session survives
    assert_memory_bounded(node, before)
    assert "Mail queue is empty" in node.mxctl("mailq")


def test_endless_rcpts_end_in_a_closed_connection(mxd_factory):
    node = mxd_factory(ingress__max_recipients_per_message=100, ingress__max_errors=10)
    before = status_kib(node.proc.pid, "VmRSS")
    with socket.create_connection(("127.0.0.1", node.smtp_port), timeout=30) as c:
        f = c.makefile("rb")
        assert f.readline().startswith(b"220 ")
        c.sendall(b"EHLO client.test\r\n")
        reply(f)
        # Pipelined: MAIL and 5,000 recipients at once.
        c.sendall(b"MAIL FROM:<a@sender.test>\r\n" +
                  b"".join(b"RCPT TO:<u%d@example.test>\r\n" % i for i in range(5000)))
        replies = []
        while True:
            line = f.readline()
            if not line:
                break
            replies.append(line)
    assert replies[0].startswith(b"250 ")  # MAIL
    assert all(r.startswith(b"250 ") for r in replies[1:101])
    refusals = replies[101:]
    assert refusals and all(r.startswith(b"452 4.5.3 ") for r in refusals[:-1])
    assert refusals[-1].startswith(b"421 4.7.0 ")  # then the connection was closed
    assert len(replies) < 200  # long before the client's 5,000 lines
    assert_memory_bounded(node, before)
    assert "Mail queue is empty" in node.mxctl("mailq")
