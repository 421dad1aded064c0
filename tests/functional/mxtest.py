"""Helpers for functional tests: real mxd processes, unbound, SMTP peers.

Everything listens on loopback only and is stopped by the fixture that started it.
"""
import os
import re
import signal
import smtplib
import socket
import subprocess
import threading
import time
import sys
from pathlib import Path

# The cluster launcher's helpers serve the single-node fixtures too.
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
from mxcluster import port_open, to_yaml  # noqa: E402,F401

# Postfix's smtp-source/smtp-sink and unbound live in /usr/sbin, which a non-root PATH lacks.
os.environ["PATH"] = os.environ.get("PATH", "/usr/bin:/bin") + ":/usr/sbin:/sbin"

BUILD_DIR = Path(os.environ.get("MX_BUILD_DIR", Path(__file__).resolve().parents[2] / "build" / "release"))
MXD = BUILD_DIR / "mxd" / "mxd"
MXCTL = BUILD_DIR / "control" / "mxctl"


_handed_out = set()


def free_port(host="127.0.0.1"):
    """A TCP port free on host for a server a test starts next. Taken from
    10000-19999: below the kernel's ephemeral range (32768+), where an
    outgoing connection could take it before the server binds it, and below
    the clusters' ranges (free_base: 20000+); never the same twice in a run."""
    import random

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(500):
        port = random.randrange(10000, 20000)
        if port in _handed_out:
            continue
        with socket.socket(family) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    with socket.socket(family) as s:  # crowded: let the kernel pick
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout=20.0, interval=0.05, what="condition"):
    """Polls predicate until it returns a truthy value; fails the test after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


class Unbound:
    """A real DNS server (unbound) on loopback serving local test zones
    (or on another address of this host, for clients in network namespaces)."""

    def __init__(self, workdir: Path, zones: dict, records: list, interface="127.0.0.1", port=None,
                 allow=("127.0.0.0/8",)):
        self.interface = interface
        self.port = port or free_port(interface)
        self.dir = workdir
        lines = [
            "server:",
            f"  interface: {interface}@{self.port}",
            f"  port: {self.port}",
            "  do-daemonize: no",
            '  username: ""',
            '  chroot: ""',
            f'  directory: "{workdir}"',
            '  pidfile: ""',
            "  use-syslog: no",
            '  logfile: ""',
            "  verbosity: 0",
            "  do-ip6: no",
            *[f"  access-control: {net} allow" for net in allow],
            '  module-config: "iterator"',
            "  num-threads: 1",
        ]
        for zone, kind in zones.items():
            lines.append(f'  local-zone: "{zone}." {kind}')
        for rr in records:
            lines.append(f'  local-data: "{rr}"')
        lines += ["remote-control:", "  control-enable: no"]
        self.conf = workdir / "unbound.conf"
        self.conf.write_text("\n".join(lines) + "\n")
        self.log = open(workdir / "unbound.log", "w")
        self.proc = subprocess.Popen(["unbound", "-d", "-c", str(self.conf)], stdout=self.log, stderr=subprocess.STDOUT)
        wait_for(self._answers, timeout=15, what="unbound to answer")

    def _answers(self):
        if self.proc.poll() is not None:
            raise AssertionError("unbound exited: " + (self.dir / "unbound.log").read_text())
        import dns.resolver  # python3-dnspython

        r = dns.resolver.Resolver(configure=False)
        r.nameservers = [self.interface]
        r.port = self.port
        r.lifetime = 0.5
        try:
            r.resolve("health.check.invalid", "A")
        except dns.resolver.NXDOMAIN:
            return True
        except Exception:
            return False
        return True

    @property
    def server(self):
        return f"{self.interface}:{self.port}"

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


class Sink:
    """A scriptable SMTP server (aiosmtpd) that records what it receives.

    rcpt_replies: address -> reply for RCPT (e.g. "550 5.1.1 no such user").
    tempfail_rcpt: number of first RCPT commands answered 451 4.7.1.
    """

    def __init__(self, host, port=None, rcpt_replies=None, tempfail_rcpt=0, slow_data=0, data_delay=0.0,
                 size_limit=None, tls=None, lmtp=False, data_replies=None):
        from aiosmtpd.controller import Controller
        from aiosmtpd.lmtp import LMTP
        from aiosmtpd.smtp import SMTP

        self.host = host
        self.port = port or free_port(host)
        self.rcpt_replies = rcpt_replies or {}
        self.tempfail_rcpt = tempfail_rcpt
        self.slow_data = slow_data  # the first N DATA replies wait data_delay seconds
        self.data_delay = data_delay
        self.data_started = 0
        self.messages = []  # (mail_from, [rcpts], content bytes)
        self.arrivals = []  # (monotonic time, EHLO name of the sender) of each entry of messages
        self.peers = []  # (client address, EHLO name) of each entry of messages
        self.rcpt_log = []  # (address, reply) for every RCPT seen
        self.data_replies = data_replies or {}  # LMTP: address -> its reply after the final dot
        self.connections = 0  # accepted so far
        self.conn_times = []  # monotonic time of each accepted connection
        self.open = 0  # open now
        self.max_open = 0  # most open at once
        self.rsets = 0
        self.lock = threading.Lock()
        sink = self

        class Handler:
            async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
                with sink.lock:
                    if sink.tempfail_rcpt > 0:
                        sink.tempfail_rcpt -= 1
                        reply = "451 4.7.1 Greylisted, try again later"
                    else:
                        reply = sink.rcpt_replies.get(address, "250 2.1.5 OK")
                    sink.rcpt_log.append((address, reply))
                if reply.startswith("250"):
                    envelope.rcpt_tos.append(address)
                return reply

            async def handle_RSET(self, server, session, envelope):
                with sink.lock:
                    sink.rsets += 1
                return "250 2.0.0 OK"

            async def handle_DATA(self, server, session, envelope):
                with sink.lock:
                    sink.data_started += 1
                    slow = sink.slow_data > 0
                    sink.slow_data -= 1 if slow else 0
                if slow:
                    import asyncio

                    await asyncio.sleep(sink.data_delay)
                with sink.lock:
                    if lmtp:  # RFC 2033: one reply per accepted recipient, in order
                        replies = [sink.data_replies.get(r, "250 2.0.0 Ok: delivered") for r in envelope.rcpt_tos]
                        taken = [r for r, rep in zip(envelope.rcpt_tos, replies) if rep.startswith("250")]
                        if taken:
                            sink.messages.append((envelope.mail_from, taken, envelope.original_content))
                        return "\r\n".join(replies)
                    sink.messages.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content))
                    sink.arrivals.append((time.monotonic(), session.host_name))
                    sink.peers.append((session.peer[0], session.host_name))
                return "250 2.0.0 Ok: delivered"

        extra = {} if size_limit is None else {"data_size_limit": size_limit}  # announced as SIZE
        if tls:  # (cert, key): offer STARTTLS and refuse mail without it
            import ssl

            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(*tls)
            extra.update(tls_context=ctx, require_starttls=True)
        base = LMTP if lmtp else SMTP

        class Counting(base):
            """Counts connections: total, open now and the most open at once."""

            def connection_made(self, transport):
                with sink.lock:
                    sink.connections += 1
                    sink.conn_times.append(time.monotonic())
                    sink.open += 1
                    sink.max_open = max(sink.max_open, sink.open)
                super().connection_made(transport)

            def connection_lost(self, exc):
                with sink.lock:
                    sink.open -= 1
                super().connection_lost(exc)

        class CountingController(Controller):
            def factory(self):
                return Counting(self.handler, **self.SMTP_kwargs)

        self.controller = CountingController(Handler(), hostname=host, port=self.port, **extra)
        self.controller.start()
        # start() connects once itself to see the server up: not a client.
        wait_for(lambda: self.open == 0, timeout=5, what="the controller's own connection to close")
        with self.lock:
            self.connections = self.max_open = 0
            self.conn_times.clear()

    def count(self):
        with self.lock:
            return len(self.messages)

    def stats(self):
        """(connections, most open at once, RSETs)"""
        with self.lock:
            return self.connections, self.max_open, self.rsets

    def stop(self):
        self.controller.stop()


class TinyDns:
    """A DNS server (UDP and TCP on one port) for faults unbound will not
    produce. Answers from `records` {(name, type): [rdata]} ("MX": "pref host",
    "A"/"AAAA": address, "CNAME": target, "TXT": text, "TLSA": "usage selector
    mtype hex"; a CNAME is followed, chain and all,
    into the answer), fails `rcodes` {(name, type): rcode} (2 = SERVFAIL),
    never answers the questions in `drop` (a resolver timeout), and answers
    the questions in `truncate` over UDP with TC set and nothing else (the
    client must ask again over TCP). Answers to the questions in `secure`
    carry the AD bit, as a validating resolver's would (a DNSSEC stand-in:
    mx trusts its resolver's AD bit). Everything else is NXDOMAIN. All five
    may be changed while it runs. Counts queries by (name, type) and, over
    TCP, in tcp_queries. stop() closes it (the resolver is gone); start()
    listens again on the same port."""

    TYPES = {"A": 1, "CNAME": 5, "MX": 15, "TXT": 16, "AAAA": 28, "TLSA": 52}

    def __init__(self, host="127.0.0.1", records=None, rcodes=None, drop=(), truncate=(), secure=()):
        norm = lambda k: (k[0].lower().rstrip("."), k[1])  # noqa: E731
        self.records = {norm(k): v for k, v in (records or {}).items()}
        self.rcodes = {norm(k): v for k, v in (rcodes or {}).items()}
        self.drop = {norm(k) for k in drop}
        self.truncate = {norm(k) for k in truncate}
        self.secure = {norm(k) for k in secure}
        self.queries, self.tcp_queries = {}, {}
        self.host, self.port = host, 0
        self.start()

    def start(self):
        import socket as socketlib

        # The UDP port the kernel picks may be taken for TCP (another
        # process's connection): pick again. A restart keeps its port.
        fixed = self.port != 0
        for attempt in range(50):
            self.sock = socketlib.socket(socketlib.AF_INET, socketlib.SOCK_DGRAM)
            self.sock.bind((self.host, self.port))
            port = self.sock.getsockname()[1]
            self.tcp = socketlib.socket(socketlib.AF_INET, socketlib.SOCK_STREAM)
            self.tcp.setsockopt(socketlib.SOL_SOCKET, socketlib.SO_REUSEADDR, 1)
            try:
                self.tcp.bind((self.host, port))
                break
            except OSError:
                self.sock.close()
                self.tcp.close()
                if fixed and attempt == 49:
                    raise
                if fixed:
                    time.sleep(0.1)
        else:
            raise OSError(f"no port free for both UDP and TCP on {self.host}")
        self.port = port
        self.tcp.listen(16)
        self.server = f"{self.host}:{self.port}"
        for target in (self._serve_udp, self._serve_tcp):
            threading.Thread(target=target, daemon=True).start()

    @staticmethod
    def _name(labels):
        out = b""
        for label in labels.rstrip(".").split("."):
            out += bytes([len(label)]) + label.encode()
        return out + b"\0"

    def _rr(self, owner, qtype, value):
        import ipaddress
        import struct

        if qtype == "MX":
            pref, host = value.split()
            rdata = struct.pack("!H", int(pref)) + self._name(host)
        elif qtype == "CNAME":
            rdata = self._name(value)
        elif qtype == "TLSA":
            usage, selector, mtype, data = value.split()
            rdata = bytes([int(usage), int(selector), int(mtype)]) + bytes.fromhex(data)
        elif qtype == "TXT":  # character-strings of at most 255 octets
            text = value.encode()
            rdata = b"".join(bytes([len(text[i:i + 255])]) + text[i:i + 255] for i in range(0, len(text), 255))
        else:
            rdata = ipaddress.ip_address(value).packed
        return self._name(owner) + struct.pack("!HHIH", self.TYPES[qtype], 1, 60, len(rdata)) + rdata

    def _answer(self, data, tcp):
        """The reply to one query, or None to stay silent."""
        import struct

        names = {v: k for k, v in self.TYPES.items()}
        qid, _flags, _qdcount = struct.unpack("!HHH", data[:6])
        pos, labels = 12, []
        while data[pos]:
            labels.append(data[pos + 1:pos + 1 + data[pos]].decode().lower())
            pos += data[pos] + 1
        question = data[12:pos + 5]
        qname = ".".join(labels)
        qtype = names.get(struct.unpack("!H", data[pos + 1:pos + 3])[0], "?")
        key = (qname, qtype)
        counts = self.tcp_queries if tcp else self.queries
        counts[key] = counts.get(key, 0) + 1
        if key in self.drop:
            return None
        flags = 0x8180 | (0x0020 if key in self.secure else 0)  # AD for "validated" answers
        answers, count = b"", 0
        rcode = self.rcodes.get(key)
        if not tcp and key in self.truncate:
            flags |= 0x0200  # TC: the answer does not fit, ask over TCP
            rcode = 0
        elif rcode is None:
            name = qname
            for _ in range(8):  # follow CNAMEs, each one in the answer
                target = self.records.get((name, "CNAME"))
                if not target or qtype == "CNAME":
                    break
                answers += self._rr(name, "CNAME", target[0])
                count += 1
                name = target[0].lower().rstrip(".")
            for v in self.records.get((name, qtype)) or []:
                answers += self._rr(name, qtype, v)
                count += 1
            known = count or any(n == name for n, _ in self.records)
            rcode = 0 if known else 3
        header = struct.pack("!HHHHHH", qid, flags | rcode, 1, count, 0, 0)
        return header + question + answers

    def _serve_udp(self):
        sock = self.sock
        while True:
            try:
                data, peer = sock.recvfrom(4096)
            except OSError:
                return
            if len(data) < 12:  # shut down (or not DNS)
                if sock.fileno() < 0 or not data:
                    return
                continue
            reply = self._answer(data, tcp=False)
            if reply is not None:
                try:
                    sock.sendto(reply, peer)
                except OSError:
                    return

    def _serve_tcp(self):
        import struct

        listener = self.tcp
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                try:
                    conn.settimeout(5)
                    while True:
                        head = conn.recv(2)
                        if len(head) < 2:
                            break
                        (n,) = struct.unpack("!H", head)
                        data = b""
                        while len(data) < n:
                            chunk = conn.recv(n - len(data))
                            if not chunk:
                                break
                            data += chunk
                        reply = self._answer(data, tcp=True)
                        if reply is None:
                            break
                        conn.sendall(struct.pack("!H", len(reply)) + reply)
                except OSError:
                    pass

    def stop(self):
        import socket as socketlib

        for sock in (self.sock, self.tcp):
            try:
                sock.shutdown(socketlib.SHUT_RDWR)  # wakes the thread blocked in it
            except OSError:
                pass
            sock.close()


class Mxd:
    """An `mxd` process with a generated config."""

    def __init__(self, workdir: Path, role="all", **overrides):
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.smtp_port = free_port()
        self.queue_port = free_port()
        self.raft_port = free_port()
        self.control_port = free_port()
        self.metrics_port = free_port()
        self.role = role
        cfg = {
            "node_name": "mx-test",
            "hostname": "mx.mx-test.test",
            "log_level": "info",
            "metrics_listen": f"127.0.0.1:{self.metrics_port}",
            "ingress": {"listen": f"127.0.0.1:{self.smtp_port}", "max_message_size": "1M"},
            "queue": {
                "listen": f"127.0.0.1:{self.queue_port}",
                "raft_listen": f"127.0.0.1:{self.raft_port}",
                "data_dir": str(workdir / "queue"),
                "min_backoff": "1s",
                "max_backoff": "2s",
                "tick_interval": "100ms",
            },
            "delivery": {"concurrency": 16, "connect_timeout": "3s", "command_timeout": "10s", "data_timeout": "10s"},
            "control": {"listen": f"127.0.0.1:{self.control_port}",
                        "admin_tokens_file": str(self._write_tokens(workdir))},
        }
        for key, value in overrides.items():
            section, _, name = key.partition("__")
            if name:
                cfg[section][name] = value
            else:
                cfg[section] = value
        self.config = workdir / "mx.yaml"
        self.config.write_text(to_yaml(cfg))
        self.proc = None
        self.logfile = workdir / "mxd.log"
        self.start()

    def _write_tokens(self, workdir):
        """Admin tokens: one per role; mxctl() uses the operator's."""
        import secrets

        self.operator_token, self.read_token = secrets.token_hex(20), secrets.token_hex(20)
        self.token_file = workdir / "operator-token"
        self.token_file.write_text(self.operator_token + "\n")
        self.read_token_file = workdir / "read-token"
        self.read_token_file.write_text(self.read_token + "\n")
        tokens = workdir / "admin-tokens"
        tokens.write_text(f"# name role token\nops operator {self.operator_token}\nviewer read {self.read_token}\n")
        return tokens

    def start(self):
        self.log = open(self.logfile, "a")
        self.proc = subprocess.Popen([str(MXD), self.role, "--config", str(self.config)],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        wait_for(lambda: self._alive() and port_open("127.0.0.1", self.smtp_port), timeout=20,
                 what="mxd to listen for SMTP")

    def _alive(self):
        if self.proc.poll() is not None:
            raise AssertionError(f"mxd exited with {self.proc.returncode}:\n{self.logtext()}")
        return True

    def logtext(self):
        return self.logfile.read_text()

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                rc = self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError("mxd did not stop on SIGTERM within 15s")
            finally:
                self.log.close()
            # A crash while shutting down (a signal, an abort) is a failure too.
            assert rc == 0, f"mxd exited with {rc} on SIGTERM:\n{self.logtext()[-3000:]}"
        else:
            self.log.close()

    def kill9(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.log.close()

    def mxctl_run(self, *args, token_file="operator"):
        """mxctl as a CompletedProcess; token_file "operator", "read", None or a path."""
        files = {"operator": self.token_file, "read": self.read_token_file}
        auth = [] if token_file is None else ["--token-file", str(files.get(token_file, token_file))]
        return subprocess.run([str(MXCTL), "--server", f"127.0.0.1:{self.control_port}", *auth, *args],
                              capture_output=True, text=True, timeout=30)

    def mxctl(self, *args):
        out = self.mxctl_run(*args)
        assert out.returncode == 0, f"mxctl {args} failed: {out.stderr}"
        return out.stdout

    def metrics(self):
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
            return r.read().decode()


class ExtraDelivery:
    """A second process of node's cluster, `mxd delivery` (or `mxd ingress`
    with role="ingress", on its own SMTP port), with node's config but its own
    node name and metrics port."""

    def __init__(self, node, workdir: Path, name="mx-test-2", role="delivery", args=()):
        self.metrics_port = free_port()
        self.smtp_port = free_port() if role == "ingress" else None
        self.config = workdir / f"{name}.yaml"
        text = (node.config.read_text()
                .replace(f"127.0.0.1:{node.metrics_port}", f"127.0.0.1:{self.metrics_port}")
                .replace('node_name: "mx-test"', f'node_name: "{name}"'))
        if self.smtp_port:
            text = text.replace(f"127.0.0.1:{node.smtp_port}", f"127.0.0.1:{self.smtp_port}")
        self.control_port = free_port() if role == "control" else None
        if self.control_port:
            text = text.replace(f"127.0.0.1:{node.control_port}", f"127.0.0.1:{self.control_port}")
        self.config.write_text(text)
        self.logfile = workdir / f"{name}.log"
        self.log = open(self.logfile, "w")
        self.proc = subprocess.Popen([str(MXD), role, "--config", str(self.config), *args], stdout=self.log,
                                     stderr=subprocess.STDOUT)
        ready = {"delivery": "pulling from", "ingress": "listening for SMTP", "control": "control serving gRPC"}[role]
        wait_for(lambda: ready in self.logtext(), what=f"the {role} process {name}")

    def logtext(self):
        return self.logfile.read_text()

    def metrics(self):
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
            return r.read().decode()

    def stop(self):
        rc = 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            rc = self.proc.wait(15)
        self.log.close()
        assert rc == 0, f"{self.config.stem} exited with {rc} on SIGTERM:\n{self.logtext()[-3000:]}"


def metric_value(text, name, labels=None):
    """Sum of samples of metric `name` whose labels include `labels`."""
    total, found = 0.0, False
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        head, _, val = line.rpartition(" ")
        metric, _, lbl = head.partition("{")
        if metric != name:
            continue
        if labels and not all(f'{k}="{v}"' in lbl for k, v in labels.items()):
            continue
        total += float(val)
        found = True
    return total if found else None


QUEUED = re.compile(r"queued as (\S+)")


class Load:
    """SMTP clients (smtplib) sending uniquely identified messages through the
    ingress nodes; remembers which got 250, when, and with which queue id."""

    def __init__(self, ports, threads=4, rcpt="user@implicit.test", tag="load", pace=0.0):
        # pace: seconds each client waits after a message, to bound how much
        # mail a long test piles up (0: as fast as the cluster answers).
        self.ports, self.rcpt, self.tag, self.pace = ports, rcpt, tag, pace
        self.accepted = {}  # Message-ID -> (qid, time)
        self.failures = []  # (time, reply)
        self.lock = threading.Lock()
        self.running = True
        self.n = 0
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]
        for t in self.threads:
            t.start()

    @staticmethod
    def body_of(msgid):
        """The exact message the load sends with this Message-ID."""
        return (f"Message-ID: {msgid}\r\nSubject: load\r\n\r\n" + ("x" * 76 + "\r\n") * 26).encode()

    def _next_id(self, worker):
        with self.lock:
            self.n += 1
            return f"<{self.tag}-{worker}-{self.n}@cluster.test>"

    def _run(self, worker):
        port = self.ports[worker % len(self.ports)]
        conn = None
        while self.running:
            try:
                if conn is None:
                    conn = smtplib.SMTP("127.0.0.1", port, timeout=30)
                    conn.ehlo("load.test")
                msgid = self._next_id(worker)
                body = self.body_of(msgid)
                conn.mail("load@sender.test")
                conn.rcpt(self.rcpt)
                code, reply = conn.data(body)
                if code == 250:
                    qid = QUEUED.search(reply.decode()).group(1)
                    with self.lock:
                        self.accepted[msgid] = (qid, time.monotonic())
                    if self.pace:
                        time.sleep(self.pace)
                else:
                    with self.lock:
                        self.failures.append((time.monotonic(), f"{code} {reply.decode()}"))
                    conn.rset()
            except (smtplib.SMTPException, OSError) as e:
                with self.lock:
                    self.failures.append((time.monotonic(), repr(e)))
                conn = None
                time.sleep(0.05)

    def count(self):
        with self.lock:
            return len(self.accepted)

    def stop(self):
        self.running = False
        for t in self.threads:
            t.join(60)

    def gap_around(self, t, window=20.0):
        """The failover time: the longest stretch without a 250 that starts
        within a second before t (replies already in flight at a kill still
        arrive after it, so the first 250 after t is not the end of the outage)."""
        with self.lock:
            times = sorted(v[1] for v in self.accepted.values())
        times = [x for x in times if t - 1.0 <= x <= t + window]
        gaps = [b - a for a, b in zip(times, times[1:]) if a <= t + window]
        return max(gaps) if gaps else None


def delivered_ids(sink):
    ids = []
    with sink.lock:
        for _, _, content in sink.messages:
            m = re.search(rb"^Message-ID: (\S+)", content, re.M | re.I)
            if m:
                ids.append(m.group(1).decode())
    return ids


class FailoverLoad(Load):
    """SMTP clients that behave like an MTA with several MX hosts: one new
    connection per message; a refused connection, a 421 greeting or a 421 at
    MAIL (a draining ingress) sends the message to the next ingress at once.
    Counts connections and the refused ones, and messages that no ingress
    took (a failed attempt; the message is then tried again)."""

    def __init__(self, ports, threads=4, rcpt="user@implicit.test", tag="roll"):
        self.connections = self.refused = self.attempts = self.failed_attempts = 0
        super().__init__(ports, threads=threads, rcpt=rcpt, tag=tag)  # starts the threads: _run below

    def _send(self, port, msgid):
        """True: 250; False: refused (try the next ingress); raises on other trouble."""
        with self.lock:
            self.connections += 1
        try:
            conn = smtplib.SMTP("127.0.0.1", port, timeout=30)
        except (smtplib.SMTPConnectError, ConnectionRefusedError) as e:
            with self.lock:
                self.refused += 1
                self.failures.append((time.monotonic(), f"connect :{port}: {e!r}"))
            return False
        try:
            conn.ehlo("load.test")
            code, reply = conn.mail("load@sender.test")
            if code == 421:
                with self.lock:
                    self.refused += 1
                    self.failures.append((time.monotonic(), f"MAIL :{port}: {code} {reply!r}"))
                return False
            conn.rcpt(self.rcpt)
            body = (f"Message-ID: {msgid}\r\nSubject: roll\r\n\r\n" + ("x" * 76 + "\r\n") * 26).encode()
            code, reply = conn.data(body)
            if code != 250:
                raise smtplib.SMTPDataError(code, reply)
            qid = QUEUED.search(reply.decode()).group(1)
            with self.lock:
                self.accepted[msgid] = (qid, time.monotonic())
            try:
                conn.quit()
            except (smtplib.SMTPException, OSError):
                pass
            return True
        finally:
            conn.close()

    def _run(self, worker):
        start = worker % len(self.ports)
        while self.running:
            msgid = self._next_id(worker)
            with self.lock:
                self.attempts += 1
            sent = False
            for k in range(len(self.ports)):
                port = self.ports[(start + k) % len(self.ports)]
                try:
                    if self._send(port, msgid):
                        start = (start + k) % len(self.ports)  # stay where it worked
                        sent = True
                        break
                except (smtplib.SMTPException, OSError) as e:
                    with self.lock:
                        self.failures.append((time.monotonic(), f":{port}: {e!r}"))
                    break  # an answer other than 421 or refused: this attempt failed
            if not sent:
                with self.lock:
                    self.failed_attempts += 1
                time.sleep(0.05)

    def availability(self):
        """(messages: accepted attempts / attempts, connections: not refused / all)."""
        with self.lock:
            return (1 - self.failed_attempts / max(1, self.attempts), 1 - self.refused / max(1, self.connections))
