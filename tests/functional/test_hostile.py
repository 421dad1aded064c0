"""Hostile clients against a real ingress: connection floods, endless DATA,
endless RCPTs, slowloris, thousands of idle connections, command floods and
SMTP smuggling with bare line ends. Each gets its precise reply, nothing is
queued that should not be, and mxd's memory stays bounded: its peak RSS
(VmHWM) may not grow by more than a fixed ceiling over the attack, and the
idle-connection flood runs inside a memory cgroup whose limit it must not
reach (release builds; sanitizer builds keep freed memory in quarantine, so
there the replies are checked but not the ceilings)."""
import os
import selectors
import socket
import threading
import time
from pathlib import Path

import pytest

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


class MemoryCgroup:
    """A memory cgroup (v2 or v1) with a hard limit, for one process: what
    the process allocates after it moved in is charged here; past the limit
    the kernel reclaims and then OOM-kills it."""

    def __init__(self, pid, limit_mib):
        name = f"mx-hostile-{os.getpid()}"
        v2 = Path("/sys/fs/cgroup")
        if (v2 / "cgroup.controllers").exists() and "memory" in (v2 / "cgroup.controllers").read_text():
            self.dir, self.v2 = v2 / name, True
        elif Path("/sys/fs/cgroup/memory/cgroup.procs").exists():
            self.dir, self.v2 = Path("/sys/fs/cgroup/memory") / name, False
        else:
            pytest.skip("no memory cgroup controller")
        try:
            self.dir.mkdir()
        except OSError as e:
            pytest.skip(f"cannot create a memory cgroup: {e}")
        self.limit = limit_mib << 20
        (self.dir / ("memory.max" if self.v2 else "memory.limit_in_bytes")).write_text(str(self.limit))
        (self.dir / "cgroup.procs").write_text(str(pid))

    def peak(self):
        f = self.dir / ("memory.peak" if self.v2 else "memory.max_usage_in_bytes")
        if f.exists():
            return int(f.read_text())
        return int((self.dir / "memory.current").read_text())  # kernels before 5.19 have no memory.peak

    def oom_kills(self):
        name = "memory.events" if self.v2 else "memory.oom_control"
        for line in (self.dir / name).read_text().splitlines():
            if line.startswith("oom_kill "):
                return int(line.split()[1])
        return 0

    def remove(self, pid):
        parent = self.dir.parent
        try:
            (parent / "cgroup.procs").write_text(str(pid))
        except OSError:
            pass
        try:
            self.dir.rmdir()
        except OSError:
            pass


def greet(c):
    f = c.makefile("rb")
    assert f.readline().startswith(b"220 ")
    return f


def test_slowloris_is_cut_off_per_line_in_commands_and_in_data(mxd_factory):
    """A line must arrive whole within the timeout (Postfix's
    smtpd_per_record_deadline): a byte at a time does not keep a session."""
    node = mxd_factory(ingress__command_timeout="2s", ingress__data_timeout="2s")

    def trickle(c, data, stop):
        sent = 0
        for b in data:
            if stop.is_set():
                break
            try:
                c.sendall(bytes([b]))
            except OSError:
                break
            sent += 1
            time.sleep(0.25)
        return sent

    for phase, setup, line in (("command", [], b"EHLO slowly.example.test\r\n"),
                               ("DATA", [(b"EHLO client.test", b"250"), (b"MAIL FROM:<a@sender.test>", b"250"),
                                         (b"RCPT TO:<b@example.test>", b"250"), (b"DATA", b"354")],
                                b"Subject: one byte at a time, for ever and ever\r\n")):
        with socket.create_connection(("127.0.0.1", node.smtp_port), timeout=20) as c:
            f = greet(c)
            for cmd, want in setup:
                c.sendall(cmd + b"\r\n")
                assert reply(f).startswith(want), cmd
            stop, result = threading.Event(), {}
            t = threading.Thread(target=lambda: result.update(sent=trickle(c, line, stop)))
            t.start()
            answer = reply(f)
            stop.set()
            t.join()
            assert answer.startswith(b"421 4.4.2 "), (phase, answer)
            assert f.readline() == b""  # and the connection is closed
            assert result["sent"] < len(line), f"{phase}: the whole line went through"
    log = node.logtext()
    assert "timeout after command" in log and "timeout after DATA" in log
    assert "Mail queue is empty" in node.mxctl("mailq")


def test_thousands_of_idle_connections_and_a_command_flood_stay_under_a_cgroup_memory_ceiling(mxd_factory):
    if os.geteuid() != 0:
        pytest.skip("a memory cgroup needs root")
    n_idle, ceiling_mib = 2000, 128
    node = mxd_factory(ingress__max_connections=n_idle + 100, ingress__max_connections_per_ip=0,
                       ingress__command_timeout="5s")
    cg = MemoryCgroup(node.proc.pid, ceiling_mib)
    idle = []
    try:
        sel = selectors.DefaultSelector()
        for i in range(n_idle):
            c = socket.create_connection(("127.0.0.1", node.smtp_port), timeout=20,
                                         source_address=(f"127.0.1.{1 + i % 200}", 0))
            idle.append(c)
        for c in idle:  # every one is served: a greeting each
            assert greet(c) is not None
        # Meanwhile a real client gets its mail through.
        import smtplib

        with smtplib.SMTP("127.0.0.1", node.smtp_port, timeout=20) as s:
            s.sendmail("a@sender.test", ["b@example.test"], b"Subject: amid the flood\r\n\r\nx\r\n")
        # A command flood: 10,000 pipelined NOOPs end at the junk limit.
        with socket.create_connection(("127.0.0.1", node.smtp_port), timeout=20) as c:
            f = greet(c)
            c.sendall(b"NOOP\r\n" * 10000)
            replies = []
            while (line := f.readline()):
                replies.append(line)
        assert replies[-1].startswith(b"421 4.7.0 "), replies[-1]
        assert len(replies) < 200
        # The idle ones: each told 421 4.4.2 and closed once command_timeout passes.
        for c in idle:
            c.setblocking(False)
            sel.register(c, selectors.EVENT_READ, bytearray())
        closed, deadline = 0, time.monotonic() + 60
        while closed < n_idle and time.monotonic() < deadline:
            for key, _ in sel.select(timeout=1):
                try:
                    chunk = key.fileobj.recv(4096)
                except OSError:
                    chunk = b""
                key.data.extend(chunk)
                if not chunk:
                    assert key.data.startswith(b"421 4.4.2 "), bytes(key.data)
                    sel.unregister(key.fileobj)
                    closed += 1
        assert closed == n_idle, f"{closed} of {n_idle} idle connections closed by the server"
        assert node.proc.poll() is None and cg.oom_kills() == 0
        peak_mib = cg.peak() / (1 << 20)
        print(f"idle={n_idle} cgroup_peak_mib={peak_mib:.0f} ceiling_mib={ceiling_mib}")
        if not sanitized():
            assert peak_mib < ceiling_mib
    finally:
        for c in idle:
            c.close()
        cg.remove(node.proc.pid)


def test_bare_line_ends_never_smuggle_a_second_message(mxd_factory):
    """SMTP smuggling (CVE-2023-51764 class): an end of DATA written with a
    bare LF or CR must not end the message here while a later hop would read
    it differently; the message is refused and nothing after it runs as
    commands."""
    node = mxd_factory()
    smuggled = b"MAIL FROM:<smuggled@evil.test>\r\nRCPT TO:<victim@example.test>\r\nDATA\r\nforged\r\n"
    for variant in (b"\n.\n", b"\n.\r\n", b"\r\n.\n", b"\r.\r\n", b"\r\n.\r", b"\r\n\x00.\r\n"):
        with socket.create_connection(("127.0.0.1", node.smtp_port), timeout=20) as c:
            f = greet(c)
            for cmd, want in ((b"EHLO client.test", b"250"), (b"MAIL FROM:<a@sender.test>", b"250"),
                              (b"RCPT TO:<b@example.test>", b"250"), (b"DATA", b"354")):
                c.sendall(cmd + b"\r\n")
                assert reply(f).startswith(want), cmd
            c.sendall(b"Subject: hi\r\n\r\ntext" + variant + smuggled + b"\r\n.\r\n")
            answer = reply(f)
            # One answer for the whole thing: refused for its bare line end, or
            # (a NUL before the dot) taken as one message; never a second one.
            if b"\x00" in variant:
                assert answer.startswith((b"250 ", b"550 ")), (variant, answer)
            else:
                assert answer.startswith(b"550 5.6.11 "), (variant, answer)
            c.sendall(b"QUIT\r\n")
            assert reply(f).startswith(b"221 "), (variant, "smuggled commands were answered")
    assert "smuggled@evil.test" not in node.mxctl("mailq")
    assert "smuggled@evil.test" not in node.logtext()
