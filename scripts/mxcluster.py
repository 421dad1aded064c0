"""A multi-process mx cluster on loopback: 3 queue replicas x N shards,
ingress and delivery processes and a control node, each a real `mxd` process
with its own config and log. Used by scripts/cluster, the functional tests and
bench/run.

Layout for base port B (every address on 127.0.0.1):
  queue node i (1..Q):  gRPC B+10*i, Raft B+100+20*i (+shard), metrics B+200+i
  ingress j (1..I):     SMTP B+300+j, metrics B+220+j
  delivery j (1..D):    metrics B+240+j
  control:              gRPC B+400, metrics B+260
"""
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def port_open(host, port):
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


def smtp_greets(host, port):
    """Whether an SMTP server on host:port greets with 220 (not 421: draining)."""
    try:
        with socket.create_connection((host, port), timeout=2) as s:
            s.settimeout(2)
            greeting = s.recv(512)
            s.sendall(b"QUIT\r\n")
            return greeting.startswith(b"220")
    except OSError:
        return False


def layout_offsets(queue_nodes=3, shards=1, ingress=2, delivery=2):
    """Every port offset the layout above uses."""
    out = [400, 260]
    for i in range(1, queue_nodes + 1):
        out += [10 * i, 200 + i] + [100 + 20 * i + s for s in range(shards)]
    out += [300 + j for j in range(1, ingress + 1)] + [220 + j for j in range(1, ingress + 1)]
    out += [240 + j for j in range(1, delivery + 1)]
    return out


def free_base(**layout):
    """A base port whose whole layout is free. Below the kernel's ephemeral
    range (32768+), where outgoing connections would otherwise take our ports."""
    offsets = layout_offsets(**layout)
    for _ in range(50):
        base = random.randrange(20000, 32000, 500)
        if not any(port_open("127.0.0.1", base + o) for o in offsets):
            return base
    raise RuntimeError("no free port range for a cluster")


def to_yaml(value, indent=0):
    """Minimal YAML writer for mx.yaml dicts (strings quoted)."""
    pad = "  " * indent
    if isinstance(value, dict):
        out = ""
        for k, v in value.items():
            if isinstance(v, dict):
                out += f"{pad}{k}:\n{to_yaml(v, indent + 1)}"
            elif isinstance(v, list) and v and isinstance(v[0], dict):
                out += f"{pad}{k}:\n"
                for item in v:
                    out += f"{pad}  - {{" + ", ".join(f"{ik}: {to_yaml(iv)}" for ik, iv in item.items()) + "}\n"
            else:
                out += f"{pad}{k}: {to_yaml(v)}\n"
        return out
    if isinstance(value, list):
        return "[" + ", ".join(to_yaml(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return '"' + str(value).replace('"', '\\"') + '"'


class Proc:
    """One mxd process of the cluster."""

    def __init__(self, cluster, name, role, config, ready_port, host="127.0.0.1", netns=None):
        self.cluster, self.name, self.role = cluster, name, role
        self.host, self.netns = host, netns  # where ready_port listens; the namespace it runs in
        self.dir = cluster.dir / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.config = self.dir / "mx.yaml"
        self.config.write_text(to_yaml(config))
        self.cfg = config
        self.ready_port = ready_port
        self.logfile = self.dir / "mxd.log"
        self.proc = None
        self.stopped = False  # SIGSTOPped
        self.down = False     # stopped on purpose (stop()) and not started again
        self.killed = False   # SIGKILLed on purpose (kill9()) since its last start

    def start(self, wait=True):
        self.down = self.killed = False
        log = open(self.logfile, "a")
        # `ip netns exec` execs mxd in place: the Popen pid is mxd's own.
        prefix = ["ip", "netns", "exec", self.netns] if self.netns else []
        self.proc = subprocess.Popen(prefix + [str(self.cluster.mxd), self.role, "--config", str(self.config)],
                                     stdout=log, stderr=subprocess.STDOUT)
        log.close()
        if wait:
            self.wait_ready()

    def wait_ready(self, timeout=30):
        deadline = time.monotonic() + timeout
        while not port_open(self.host, self.ready_port):
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.logtext()[-3000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not listen on {self.ready_port} within {timeout}s")
            time.sleep(0.05)

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def kill9(self):
        if self.alive():
            self.killed = True
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def sigstop(self):
        self.proc.send_signal(signal.SIGSTOP)
        self.stopped = True

    def sigcont(self):
        self.proc.send_signal(signal.SIGCONT)
        self.stopped = False

    def stop(self, timeout=20):
        was_down, self.down = self.down, True
        if not self.alive():
            if self.proc is not None and not was_down and not self.killed:
                # Nobody stopped or killed it: it died by itself (a crash).
                raise RuntimeError(f"{self.name} had exited by itself with {self.proc.returncode}: "
                                   f"{self.logtext()[-2000:]}")
            return self.proc.returncode if self.proc else None
        if self.stopped:
            self.sigcont()
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise RuntimeError(f"{self.name} did not stop on SIGTERM within {timeout}s")
        if rc != 0:  # a crash on the way out is a failure, not a stop
            raise RuntimeError(f"{self.name} exited with {rc} on SIGTERM: {self.logtext()[-2000:]}")
        return rc

    def logtext(self):
        return self.logfile.read_text(errors="replace") if self.logfile.exists() else ""

    def metrics(self):
        """The process's Prometheus exposition (its metrics_listen)."""
        import urllib.request
        with urllib.request.urlopen(f"http://{self.cfg['metrics_listen']}/metrics", timeout=5) as r:
            return r.read().decode()


class Cluster:
    def __init__(self, workdir, base_port=21000, shards=1, queue_nodes=3, ingress=2, delivery=2,
                 build_dir=None, delivery_cfg=None, queue_cfg=None, ingress_cfg=None, log_level="info",
                 raft_host="127.0.0.1", joining=(), queue_hosts=None, netns=None):
        """raft_host names the replicas in Raft addresses (a host name is
        resolved at each connect, as in Kubernetes); joining lists node ids
        that are in queue.peers with join: true, to be started later with
        add_queue_node and added with `mxctl queue add-replica`."""
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        build = Path(build_dir or os.environ.get("MX_BUILD_DIR", ROOT / "build" / "release"))
        self.mxd = build / "mxd" / "mxd"
        self.mxctl_bin = build / "control" / "mxctl"
        self.base, self.shards = base_port, shards
        b = base_port
        self.raft_host = raft_host
        self.queue_hosts, self.netns = dict(queue_hosts or {}), dict(netns or {})
        self.peers = [self._peer(i) for i in range(1, queue_nodes + 1)]
        self.peers += [dict(self._peer(i), join=True) for i in joining]
        common = {"hostname": "mx.cluster.test", "log_level": log_level}
        queue_common = {"shards": shards, "peers": self.peers, "election_timeout": "1s",
                        "heartbeat_timeout": "100ms", "min_backoff": "1s", "max_backoff": "4s",
                        "tick_interval": "100ms", "lease_ttl": "30s"}
        queue_common.update(queue_cfg or {})
        self.queue, self.ingress, self.delivery = [], [], []
        for p in self.peers:
            if p.get("join"):
                continue
            i = p["id"]
            cfg = dict(common, node_name=f"queue-{i}", metrics_listen=f"{self._host(i)}:{b + 200 + i}",
                       queue=dict(queue_common, node_id=i, listen=p["grpc"], raft_listen=self._raft_listen(i),
                                  data_dir=str(self.dir / f"queue-{i}" / "data")))
            self.queue.append(Proc(self, f"queue-{i}", "queue", cfg, b + 10 * i, self._host(i), self.netns.get(i)))
        for j in range(1, ingress + 1):
            cfg = dict(common, node_name=f"ingress-{j}", metrics_listen=f"127.0.0.1:{b + 220 + j}",
                       queue={"shards": shards, "peers": self.peers},
                       ingress=dict({"listen": f"127.0.0.1:{b + 300 + j}", "enqueue_timeout": "10s"},
                                    **(ingress_cfg or {})))
            self.ingress.append(Proc(self, f"ingress-{j}", "ingress", cfg, b + 300 + j))
        for j in range(1, delivery + 1):
            cfg = dict(common, node_name=f"delivery-{j}", metrics_listen=f"127.0.0.1:{b + 240 + j}",
                       queue={"shards": shards, "peers": self.peers},
                       delivery=dict({"concurrency": 32, "helo_name": f"delivery-{j}.cluster.test"},
                                     **(delivery_cfg or {})))
            self.delivery.append(Proc(self, f"delivery-{j}", "delivery", cfg, b + 240 + j))
        # Admin tokens: an operator token for mxctl (the secret file of a real cluster).
        import secrets
        self.token_file = self.dir / "mxctl-token"
        token = secrets.token_hex(20)
        self.token_file.write_text(token + "\n")
        tokens = self.dir / "admin-tokens"
        tokens.write_text(f"operator operator {token}\n")
        cfg = dict(common, node_name="control", metrics_listen=f"127.0.0.1:{b + 260}",
                   queue={"shards": shards, "peers": self.peers},
                   control={"listen": f"127.0.0.1:{b + 400}", "admin_tokens_file": str(tokens)})
        self.control = Proc(self, "control", "control", cfg, b + 400)
        self._common, self._queue_common = common, queue_common

    def add_queue_node(self, node_id):
        """A new queue node that joins (no bootstrap) and waits to be added
        with `mxctl queue add-replica`. Returns its Proc (not started)."""
        b = self.base
        peer = self._peer(node_id)
        grpc, raft = peer["grpc"], peer["raft"]
        queue = dict(self._queue_common, node_id=node_id, listen=grpc, raft_listen=self._raft_listen(node_id),
                     data_dir=str(self.dir / f"queue-{node_id}" / "data"))
        # A node listed in queue.peers with join: true joins because of that entry.
        if not any(p["id"] == node_id for p in self.peers):
            queue["join"] = True
        cfg = dict(self._common, node_name=f"queue-{node_id}", metrics_listen=f"{self._host(node_id)}:{b + 200 + node_id}",
                   queue=queue)
        p = Proc(self, f"queue-{node_id}", "queue", cfg, b + 10 * node_id, self._host(node_id),
                 self.netns.get(node_id))
        p.grpc, p.raft = grpc, raft
        self.queue.append(p)
        return p

    def _peer(self, node_id):
        """queue.peers entry of queue node node_id (Raft named by raft_host)."""
        b = self.base
        raft_host = self._host(node_id) if self.raft_host == "127.0.0.1" else self.raft_host
        return {"id": node_id, "grpc": f"{self._host(node_id)}:{b + 10 * node_id}",
                "raft": f"{raft_host}:{b + 100 + 20 * node_id}"}

    def _host(self, node_id):
        return self.queue_hosts.get(node_id, "127.0.0.1")

    def _raft_listen(self, node_id):
        return f"{self._host(node_id)}:{self.base + 100 + 20 * node_id}"

    @property
    def procs(self):
        return self.queue + self.ingress + self.delivery + [self.control]

    def smtp_ports(self):
        return [p.ready_port for p in self.ingress]

    def start(self):
        for p in self.queue:
            p.start(wait=False)
        for p in self.queue:
            p.wait_ready()
        for p in [self.control] + self.delivery + self.ingress:
            p.start()
        self.wait_leaders()

    def stop(self):
        errors = []
        for p in reversed(self.procs):
            try:
                p.stop()
            except RuntimeError as e:
                errors.append(str(e))
        return errors

    def mxctl(self, *args, check=True, timeout=60):
        out = subprocess.run([str(self.mxctl_bin), "--server", f"127.0.0.1:{self.base + 400}",
                              "--token-file", str(self.token_file), *args],
                             capture_output=True, text=True, timeout=timeout)
        if check and out.returncode != 0:
            raise RuntimeError(f"mxctl {args} failed: {out.stderr}")
        return out

    def status(self):
        import json
        return json.loads(self.mxctl("-o", "json", "cluster", "status").stdout)

    def leaders(self):
        """shard -> node id of the replica that says it leads (with the highest term)."""
        best = {}
        for node in self.status().get("nodes", []):
            for r in node.get("replicas", []):
                if r.get("role") == "leader":
                    term = int(r.get("term", 0))
                    shard = int(r.get("shard", 0))
                    if shard not in best or term > best[shard][0]:
                        best[shard] = (term, int(node["node_id"]))
        return {s: v[1] for s, v in best.items()}

    def live_shards(self, status=None):
        """The shards that hold or take mail: every shard of the shard map but
        the retired ones (whose groups may be closed), else 0..shards-1."""
        status = status or self.status()
        listed = status.get("shard_map", [])
        if not listed:
            return list(range(self.shards))
        return [int(s.get("shard", 0)) for s in listed if s.get("state") != "SHARD_RETIRED"]

    def wait_leaders(self, timeout=30, exclude=()):
        """shard -> leader for every live shard, none of them in exclude."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                live = self.live_shards()
                leaders = {s: n for s, n in self.leaders().items() if s in live}
                if len(leaders) == len(live) and not set(leaders.values()) & set(exclude):
                    return leaders
            except (RuntimeError, subprocess.TimeoutExpired):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"no leader for every shard within {timeout}s")
            time.sleep(0.1)

    def queue_node(self, node_id):
        return self.queue[node_id - 1]

    def leader_row(self, shard=0):
        """The leader's replica row of shard in cluster status (None: no leader)."""
        for n in self.status().get("nodes", []):
            for r in n.get("replicas", []):
                if int(r.get("shard", 0)) == shard and r.get("role") == "leader":
                    return r
        return None

    def process_state(self, name):
        """The node table's view of one process: its NodeInfo as cluster status lists it."""
        for n in self.status().get("processes", []):
            if n.get("name") == name:
                return n
        return {}

    def _caught_up(self, node_id, lag=100):
        """Node node_id is an answering voter of every shard, within lag entries of the leader."""
        rows = {}
        status = self.status()
        for n in status.get("nodes", []):
            for r in n.get("replicas", []):
                rows[(int(n["node_id"]), int(r.get("shard", 0)))] = r
        for shard in self.live_shards(status):
            leader = next((r for (_, s), r in rows.items() if s == shard and r.get("role") == "leader"), None)
            mine = rows.get((node_id, shard))
            if leader is None or mine is None:
                return False
            member = next((m for m in leader.get("members", []) if int(m["id"]) == node_id), None)
            if member is None:
                continue  # not a replica of this shard
            if not member.get("answering") and int(leader["node_id"]) != node_id:
                return False
            if int(mine.get("applied_index", 0)) < int(leader.get("commit_index", 0)) - lag:
                return False
        return True

    def _drain_and_restart(self, p, log, timeout):
        """mxctl drain, wait until the node table says drained (ingress: no
        session open; delivery: no delivery in flight), SIGTERM, start,
        undrain (a drain outlives restarts)."""
        self.mxctl("drain", p.name)
        deadline = time.monotonic() + timeout
        while not self.process_state(p.name).get("drained"):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{p.name} did not drain within {timeout}s")
            time.sleep(0.2)
        p.stop()
        p.start()
        self.mxctl("undrain", p.name)
        if p.role == "ingress":
            # The node learns of the undrain at its next heartbeat: back in
            # service when it greets with 220 again (an SMTP health check).
            while not smtp_greets(p.host, p.ready_port):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{p.name} did not take connections again within {timeout}s")
                time.sleep(0.1)

    def restart_rolling(self, log=print, timeout=120):
        """Restarts every process once, one at a time, as an upgrade rolls
        through the cluster, without taking it down:
        1. queue nodes, those leading fewest shards first; the shards a node
           leads hand their leadership to another caught-up voter (mxctl
           cluster transfer-leader) before it stops, and the next node waits
           until this one is an answering voter within 100 entries of every
           leader again;
        2. control;
        3. each delivery process: drained (finishes its deliveries, takes no
           more leases), stopped, started, undrained;
        4. each ingress: drained (421 to new connections and at the next MAIL
           of open sessions) until no session is open, stopped, started,
           undrained.
        At the end each shard's leadership goes back to where it was.
        Returns [(process name, seconds)]."""
        steps = []
        before = self.wait_leaders()

        def timed(name, fn):
            started = time.monotonic()
            fn()
            steps.append((name, time.monotonic() - started))
            log(f"restart-rolling: {name} restarted in {steps[-1][1]:.1f}s")

        def queue_step(p):
            node = int(p.name.split("-")[1])
            live = self.live_shards()
            for shard, leader in sorted(self.leaders().items()):
                if leader == node and shard in live:  # a retired shard's group is left alone
                    out = self.mxctl("cluster", "transfer-leader", "--shard", str(shard))
                    log("restart-rolling: " + out.stdout.strip())
            p.stop()
            p.start()
            deadline = time.monotonic() + timeout
            while not self._caught_up(node):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{p.name} did not catch up within {timeout}s")
                time.sleep(0.2)

        running = [p for p in self.queue if p.alive()]
        led = {int(p.name.split("-")[1]): 0 for p in running}
        for node in before.values():
            led[node] = led.get(node, 0) + 1
        for p in sorted(running, key=lambda q: led.get(int(q.name.split("-")[1]), 0)):
            timed(p.name, lambda p=p: queue_step(p))

        def control_step():
            self.control.stop()
            self.control.start()

        timed(self.control.name, control_step)
        for p in [p for p in self.delivery + self.ingress if p.alive()]:
            timed(p.name, lambda p=p: self._drain_and_restart(p, log, timeout))
        for shard, node in sorted(before.items()):
            if self.leaders().get(shard) != node:
                self.mxctl("cluster", "transfer-leader", "--shard", str(shard), "--node", str(node))
        log("restart-rolling: done, leaders " + ", ".join(f"shard {s}: node {n}" for s, n in sorted(self.leaders().items())))
        return steps


def restart_rolling_command(args):
    """scripts/cluster restart-rolling: asks the running `scripts/cluster`
    (its pid in DIR/cluster.pid) to restart every process once, and follows
    its progress (DIR/rolling.log) until it is done."""
    pid_file = Path(args.dir) / "cluster.pid"
    if not pid_file.exists():
        raise SystemExit(f"cluster: no cluster runs in {args.dir} (no cluster.pid)")
    log_file = Path(args.dir) / "rolling.log"
    log_file.write_text("")
    os.kill(int(pid_file.read_text()), signal.SIGUSR1)
    seen = 0
    deadline = time.monotonic() + 1800
    while time.monotonic() < deadline:
        lines = log_file.read_text().splitlines()
        for line in lines[seen:]:
            print(line, flush=True)
            if line.startswith("restart-rolling: done"):
                return 0
            if line.startswith("restart-rolling: failed"):
                return 1
        seen = len(lines)
        time.sleep(0.2)
    print("restart-rolling: no end in sight after 30 minutes", file=sys.stderr)
    return 1


def main():
    import argparse

    ap = argparse.ArgumentParser(description="Run a local mx cluster on loopback until Ctrl-C "
                                             "(restart-rolling: restart a running one's processes one by one).")
    ap.add_argument("command", nargs="?", default="up", choices=["up", "restart-rolling"])
    ap.add_argument("--dir", default="/tmp/mx-cluster")
    ap.add_argument("--shards", type=int, default=3)
    ap.add_argument("--ingress", type=int, default=2)
    ap.add_argument("--delivery", type=int, default=2)
    ap.add_argument("--base-port", type=int, default=21000)
    ap.add_argument("--smart-host", default="[127.0.0.1]:2526",
                    help="relay everything here ('' delivers by MX)")
    args = ap.parse_args()
    if args.command == "restart-rolling":
        return restart_rolling_command(args)
    delivery = {"smart_host": args.smart_host} if args.smart_host else {}
    c = Cluster(args.dir, base_port=args.base_port, shards=args.shards, ingress=args.ingress,
                delivery=args.delivery, delivery_cfg=delivery)
    c.start()
    (Path(args.dir) / "cluster.pid").write_text(str(os.getpid()))
    print(f"mx cluster up in {args.dir}: {args.shards} shard(s) x 3 queue replicas")
    print("  SMTP:     " + ", ".join(f"127.0.0.1:{p}" for p in c.smtp_ports()))
    print(f"  mxctl:    {c.mxctl_bin} --server 127.0.0.1:{args.base_port + 400} --token-file {c.token_file}"
          " cluster status")
    print(f"  logs:     {args.dir}/<process>/mxd.log")
    print(f"  restart every process, one at a time: scripts/cluster restart-rolling --dir {args.dir}")
    print(c.mxctl("cluster", "status").stdout)
    try:
        while True:
            sig = signal.sigwait({signal.SIGINT, signal.SIGTERM, signal.SIGUSR1})
            if sig != signal.SIGUSR1:
                break
            log_file = Path(args.dir) / "rolling.log"

            def log(line):
                print(line, flush=True)
                with open(log_file, "a") as f:
                    f.write(line + "\n")

            try:
                c.restart_rolling(log=log)
            except (RuntimeError, subprocess.SubprocessError) as e:
                log(f"restart-rolling: failed: {e}")
    except KeyboardInterrupt:
        pass
    finally:
        (Path(args.dir) / "cluster.pid").unlink(missing_ok=True)
        for e in c.stop():
            print(e)
    return 0


if __name__ == "__main__":
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM, signal.SIGUSR1})
    sys.exit(main())
