"""bench/peers.py — the other MTAs bench/run measures beside Postfix and mx.

sendmail 8.17, exim 4.96 and OpenSMTPD 6.8 are Debian's binaries unpacked by
scripts/install-peers into $MX_PEERS (default /opt/mx-peers), never installed
as packages (they conflict with Postfix); Haraka comes from npm. Each runs
as a private instance: its own config, spool and port under the run's work
directory, relaying everything to the bench's smtp-sink, in the foreground
so the bench stops it. A peer that is missing or does not start raises
Unavailable with the reason; bench/run reports it instead of a figure.

Durability before the 250 (bench/README says the same):
  sendmail   SuperSafe=True (its default): qf and df fsynced
  exim       its default (disable_fsync unset): spool -D and -H fsynced
  OpenSMTPD  no fsync: its queue writes and renames the files (6.8 has no
             option for it; strace showed 0 fsync calls for 200 messages)
  Haraka     no spool: queue/smtp_forward relays in-line and answers 250
             only after the sink's 250, so nothing is on disk to fsync
"""
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

PEERS = Path(os.environ.get("MX_PEERS", "/opt/mx-peers"))


class Unavailable(Exception):
    """The peer cannot be measured on this machine; str() says why."""


def free_port():
    """A free TCP port on loopback (bench/run uses it too)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port, proc, log, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise Unavailable(f"exited with {proc.returncode} before listening: {_tail(log)}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise Unavailable(f"nothing listens on 127.0.0.1:{port} after {timeout}s: {_tail(log)}")


def _tail(path, n=400):
    try:
        return Path(path).read_text(errors="replace")[-n:].strip()
    except OSError:
        return "(no log)"


def _need(path, what):
    if not Path(path).exists():
        raise Unavailable(f"{path} not found ({what}; run scripts/install-peers)")


class _Peer:
    """A foreground daemon in its own session; stop() ends the whole group."""

    def _start(self, argv, workdir, **kw):
        self.log = workdir / f"{self.name}.log"
        self.proc = subprocess.Popen(argv, stdout=open(self.log, "wb"), stderr=subprocess.STDOUT,
                                     start_new_session=True, **kw)
        _wait_port(self.port, self.proc, self.log)

    def stop(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        # Deliveries a daemon forked into their own sessions, if any remain.
        subprocess.run(["pkill", "-KILL", "-f", str(self.marker)], capture_output=True)


class Sendmail(_Peer):
    """sendmail.cf built with m4 from sendmail-cf's macros: relay everything
    to the sink (SMART_HOST with the sink's port), background delivery (a
    delivery process per message, sendmail's default), load limits off, no
    DNS (hosts from files). In a UTS namespace with a qualified host name:
    sendmail sleeps 60 s at start when it cannot qualify this machine's."""

    name = "sendmail"
    fsync = "yes (SuperSafe=True: qf and df fsynced before 250)"

    def __init__(self, workdir, sink_port):
        root = PEERS / "sendmail"
        binary = root / "usr/libexec/sendmail/sendmail"
        cf_dir = root / "usr/share/sendmail/cf"
        _need(binary, "sendmail-bin")
        _need(cf_dir / "m4/cf.m4", "sendmail-cf")
        if not shutil.which("m4"):
            raise Unavailable("m4 not found (Debian package m4; scripts/install-peers)")
        d = workdir / "sendmail"
        (d / "mqueue").mkdir(parents=True)
        (d / "mqueue").chmod(0o700)
        (d / "statistics").touch()
        (d / "service.switch").write_text("hosts files\naliases files\n")
        self.port = free_port()
        self.marker = d / "sendmail.cf"
        mc = f"""divert(0)dnl
OSTYPE(`linux')dnl
define(`QUEUE_DIR', `{d}/mqueue')dnl
define(`confPID_FILE', `{d}/sendmail.pid')dnl
define(`STATUS_FILE', `{d}/statistics')dnl
define(`confSERVICE_SWITCH_FILE', `{d}/service.switch')dnl
define(`confHOST_STATUS_DIRECTORY', `')dnl
define(`confHELP_FILE', `')dnl
define(`ALIAS_FILE', `')dnl
define(`confDONT_PROBE_INTERFACES', `True')dnl
define(`confDOMAIN_NAME', `sendmail.bench.test')dnl
define(`confQUEUE_LA', `1000')dnl
define(`confREFUSE_LA', `1000')dnl
define(`confDELAY_LA', `0')dnl
define(`confMAX_DAEMON_CHILDREN', `0')dnl
define(`confCONNECTION_RATE_THROTTLE', `0')dnl
define(`confDELIVERY_MODE', `background')dnl
define(`confSAFE_QUEUE', `True')dnl
define(`confTO_IDENT', `0')dnl
define(`SMART_HOST', `[127.0.0.1]')dnl
define(`RELAY_MAILER_ARGS', `TCP $h {sink_port}')dnl
define(`ESMTP_MAILER_ARGS', `TCP $h {sink_port}')dnl
define(`SMTP_MAILER_ARGS', `TCP $h {sink_port}')dnl
FEATURE(`promiscuous_relay')dnl
FEATURE(`nocanonify')dnl
FEATURE(`accept_unresolvable_domains')dnl
DAEMON_OPTIONS(`Family=inet, Name=MTA, Port={self.port}, Addr=127.0.0.1, Listen=256')dnl
MAILER(`smtp')dnl
"""
        (d / "bench.mc").write_text(mc)
        cf = subprocess.run(["m4", f"-D_CF_DIR_={cf_dir}/", str(cf_dir / "m4/cf.m4"), str(d / "bench.mc")],
                            capture_output=True, text=True)
        if cf.returncode != 0:
            raise Unavailable("m4 could not build sendmail.cf: " + cf.stderr[-300:])
        self.marker.write_text(cf.stdout)
        # -bD: the daemon in the foreground; unshare execs it (same pid).
        self._start(["unshare", "--uts", "sh", "-c",
                     f"hostname sendmail.bench.test && exec {binary} -C {self.marker} -bD -q30m"], workdir)


class Exim(_Peer):
    """exim4 -C <config> -bdf: one router sending everything to the sink,
    no TLS, no ident or reverse lookups, no connection or per-connection
    queueing limits, a listen backlog of 256 (the default 20 made 50
    sessions wait for SYN retries), immediate delivery (a delivery process
    per message, exim's default)."""

    name = "exim"
    fsync = "yes (exim's default: spool files fsynced before 250)"

    def __init__(self, workdir, sink_port):
        binary = PEERS / "exim/usr/sbin/exim4"
        _need(binary, "exim4-daemon-light")
        d = workdir / "exim"
        for sub in ("spool", "log"):
            (d / sub).mkdir(parents=True)
            shutil.chown(d / sub, user="Debian-exim")
        self.port = free_port()
        self.marker = d / "exim.conf"
        self.marker.write_text(f"""primary_hostname = exim.bench.test
exim_path = {binary}
spool_directory = {d}/spool
log_file_path = {d}/log/%slog
exim_user = Debian-exim
exim_group = Debian-exim
never_users = root
daemon_smtp_ports = {self.port}
local_interfaces = 127.0.0.1
tls_advertise_hosts =
keep_environment =
host_lookup =
rfc1413_hosts =
smtp_accept_max = 0
smtp_connect_backlog = 256
smtp_accept_queue_per_connection = 0
message_size_limit = 200M
hostlist relay_from_hosts = 127.0.0.0/8
acl_smtp_rcpt = acl_check_rcpt
begin acl
acl_check_rcpt:
  accept hosts = +relay_from_hosts
  deny message = relay not permitted
begin routers
sink:
  driver = manualroute
  route_list = * 127.0.0.1::{sink_port}
  self = send
  transport = remote_smtp
begin transports
remote_smtp:
  driver = smtp
  hosts_avoid_tls = *
  allow_localhost
begin retry
* * F,1h,1m
""")
        self._start([str(binary), "-C", str(self.marker), "-bdf", "-q30m"], workdir)


class OpenSMTPD(_Peer):
    """smtpd -d -f smtpd.conf: relay everything to the sink. Its spool
    (/var/spool/smtpd) and chroot (/var/lib/opensmtpd/empty) are compiled in:
    it runs in a mount namespace where the work directory's are bound over
    them (the two empty mount points stay on the host), with a resolv.conf
    that looks up hosts in files only (libasr asked the machine's resolver
    about 127.0.0.1 for every session and sometimes waited 5 s). Its listen
    backlog is compiled in too (5): at 50 sessions the kernel drops SYNs
    and clients retry after 1 s; that is measured as it is."""

    name = "opensmtpd"
    fsync = "no (its queue writes and renames without fsync)"

    def __init__(self, workdir, sink_port):
        binary = PEERS / "opensmtpd/usr/sbin/smtpd"
        _need(binary, "opensmtpd")
        d = workdir / "opensmtpd"
        (d / "spool").mkdir(parents=True)
        (d / "spool").chmod(0o711)
        (d / "empty").mkdir()
        (d / "resolv.conf").write_text("lookup file\nnameserver 127.0.0.1\n")
        self.port = free_port()
        self.marker = d / "smtpd.conf"
        self.marker.write_text(f"""listen on 127.0.0.1 port {self.port}
action "sink" relay host smtp://127.0.0.1:{sink_port}
match from any for any action "sink"
""")
        script = d / "run.sh"
        script.write_text(f"""set -e
mkdir -p /var/spool/smtpd /var/lib/opensmtpd/empty
mount --bind {d}/spool /var/spool/smtpd
mount --bind {d}/empty /var/lib/opensmtpd/empty
mount --bind {d}/resolv.conf /etc/resolv.conf
exec {binary} -d -f {self.marker}
""")
        self._start(["unshare", "--mount", "--propagation", "private", "sh", str(script)], workdir)


class Haraka(_Peer):
    """haraka -c <instance>: rcpt_to.in_host_list (the sink's domain) and
    queue/smtp_forward to the sink, one worker per CPU (nodes=cpus)."""

    name = "haraka"
    fsync = "no spool (smtp_forward answers 250 after the sink's 250)"

    def __init__(self, workdir, sink_port, rcpt_domain="dest.test"):
        binary = PEERS / "haraka/node_modules/.bin/haraka"
        _need(binary, "npm Haraka")
        d = workdir / "haraka"
        r = subprocess.run([str(binary), "-i", str(d)], capture_output=True, text=True)
        if r.returncode != 0:
            raise Unavailable("haraka -i failed: " + (r.stderr or r.stdout)[-300:])
        self.port = free_port()
        self.marker = d
        conf = d / "config"
        (conf / "plugins").write_text("rcpt_to.in_host_list\nqueue/smtp_forward\n")
        (conf / "host_list").write_text(rcpt_domain + "\n")
        (conf / "me").write_text("haraka.bench.test\n")
        (conf / "smtp.ini").write_text(f"[main]\nlisten=127.0.0.1:{self.port}\nnodes=cpus\n")
        (conf / "smtp_forward.ini").write_text(f"host=127.0.0.1\nport={sink_port}\nenable_tls=false\n")
        (conf / "log.ini").write_text("[main]\nlevel=warn\n")
        self._start([str(binary), "-c", str(d)], workdir)


ALL = {"sendmail": Sendmail, "exim": Exim, "opensmtpd": OpenSMTPD, "haraka": Haraka}
