"""Ingress answers over a real socket: limits, relay control, queue outages."""
import smtplib
import socket
import time

import pytest

from mxtest import free_port, metric_value, wait_for


def test_oversized_size_is_refused_at_mail(mxd_factory):
    node = mxd_factory(ingress__max_message_size="1K")
    with smtplib.SMTP("127.0.0.1", node.smtp_port) as s:
        s.ehlo("client.test")
        assert "size" in s.esmtp_features and s.esmtp_features["size"] == "1024"
        code, text = s.mail("a@sender.test", ["SIZE=5000"])
        assert code == 552
        assert text.decode().startswith("5.3.4 ")
    assert "message size (5000) exceeds maximum (1024)" in node.logtext()


def test_message_growing_past_the_limit_is_refused_after_data(mxd_factory):
    node = mxd_factory(ingress__max_message_size="1K")
    with smtplib.SMTP("127.0.0.1", node.smtp_port) as s:
        s.ehlo("client.test")
        assert s.mail("a@sender.test")[0] == 250  # no SIZE declared
        assert s.rcpt("b@example.test")[0] == 250
        code, text = s.data(b"Subject: big\r\n\r\n" + (b"x" * 70 + b"\r\n") * 40)
        assert (code, text) == (552, b"5.3.4 Message is too large; 1024 bytes max")
        assert s.noop()[0] == 250  # the session goes on
    text = node.metrics()
    assert metric_value(text, "mx_ingress_rejections_total", {"reason": "size", "code": "552"}) == 1
    assert "Mail queue is empty" in node.mxctl("mailq")

    # The rejection reaches the cluster-wide mailstats as msgsrej.
    def msgsrej():
        rows = [l.split() for l in node.mxctl("mailstats").splitlines() if l.endswith("esmtp")]
        return rows and rows[0][5] == "1"

    wait_for(msgsrej, timeout=10, what="mailstats msgsrej")


def test_relaying_is_denied_outside_mynetworks(mxd_factory):
    node = mxd_factory(ingress__mynetworks=["192.0.2.0/24"], ingress__relay_domains=["example.test"])
    with smtplib.SMTP("127.0.0.1", node.smtp_port) as s:
        s.ehlo("client.test")
        s.mail("a@sender.test")
        code, text = s.rcpt("victim@elsewhere.test")
        assert (code, text) == (550, b"5.7.1 <victim@elsewhere.test>: Relaying denied")
        code, _ = s.rcpt("user@example.test")
        assert code == 250


def test_queue_unreachable_answers_451_never_250(tmp_path, mxd_factory):
    # An ingress-only node whose queue address has no server.
    node = mxd_factory(role="ingress", ingress__queue=[f"127.0.0.1:{free_port()}"], ingress__enqueue_timeout="2s")
    with smtplib.SMTP("127.0.0.1", node.smtp_port) as s:
        with pytest.raises(smtplib.SMTPDataError) as e:
            s.sendmail("a@sender.test", ["b@example.test"], b"Subject: x\r\n\r\ny\r\n")
        assert e.value.smtp_code == 451
        assert e.value.smtp_error.startswith(b"4.3.0 ")


def test_greeting_and_help_reveal_no_software(mxd_factory):
    node = mxd_factory()
    with socket.create_connection(("127.0.0.1", node.smtp_port)) as c:
        f = c.makefile("rwb")
        greeting = f.readline().decode()
        assert greeting.startswith("220 mx.mx-test.test ")
        f.write(b"HELP\r\n")
        f.flush()
        help_text = f.readline().decode()
        assert help_text.startswith("214 ")
        for word in ("mx ", "mxd", "version", "0.1"):
            assert word not in (greeting + help_text).lower().replace("mx.mx-test.test", "")


def test_pipelined_transaction(mxd_factory):
    node = mxd_factory()
    with socket.create_connection(("127.0.0.1", node.smtp_port)) as c:
        f = c.makefile("rwb")
        f.readline()
        f.write(b"EHLO c.test\r\n")
        f.flush()
        while not f.readline().startswith(b"250 "):
            pass
        # One write: MAIL, RCPT, RCPT, DATA (RFC 2920), then the message and QUIT.
        f.write(b"MAIL FROM:<a@sender.test>\r\nRCPT TO:<b@example.test>\r\nRCPT TO:<c@example.test>\r\nDATA\r\n")
        f.flush()
        replies = [f.readline() for _ in range(4)]
        assert [r[:3] for r in replies] == [b"250", b"250", b"250", b"354"]
        f.write(b"Subject: p\r\n\r\nbody\r\n.\r\nQUIT\r\n")
        f.flush()
        assert f.readline().startswith(b"250 2.0.0 Ok: queued as ")
        assert f.readline().startswith(b"221 ")


def test_idle_client_times_out_but_an_active_one_does_not(mxd_factory):
    # Timeout.command is a deadline per command, not per session: a client that
    # keeps talking past several timeouts stays, one that stops is cut off with
    # 421 4.4.2 — in the dialogue and in the middle of DATA (nothing queued).
    node = mxd_factory(ingress__command_timeout="1s", ingress__data_timeout="1s")
    with socket.create_connection(("127.0.0.1", node.smtp_port)) as c:
        c.settimeout(15)
        f = c.makefile("rwb")
        assert f.readline().startswith(b"220 ")
        started = time.monotonic()
        while time.monotonic() - started < 3.5:  # 3.5 timeouts' worth of NOOPs
            f.write(b"NOOP\r\n")
            f.flush()
            assert f.readline().startswith(b"250 ")
            last_reply = time.monotonic()
            time.sleep(0.3)
        assert f.readline() == b"421 4.4.2 mx.mx-test.test Error: timeout exceeded\r\n"
        assert time.monotonic() - last_reply >= 0.5  # not before the timeout after the last command (1 s)
        assert f.readline() == b""  # and the connection is closed
    with socket.create_connection(("127.0.0.1", node.smtp_port)) as c:
        c.settimeout(15)
        f = c.makefile("rwb")
        f.readline()
        for line, reply in ((b"EHLO client.test", b"250 "), (b"MAIL FROM:<a@sender.test>", b"250 "),
                            (b"RCPT TO:<b@example.test>", b"250 "), (b"DATA", b"354 ")):
            f.write(line + b"\r\n")
            f.flush()
            answer = f.readline()
            while answer[3:4] == b"-":
                answer = f.readline()
            assert answer.startswith(reply), (line, answer)
        f.write(b"Subject: stalled\r\n\r\nhalf a body")
        f.flush()
        assert f.readline().startswith(b"421 4.4.2 ")
    wait_for(lambda: "timeout after DATA" in node.logtext(), timeout=10, what="the DATA timeout logged")
    assert "Mail queue is empty" in node.mxctl("mailq")
