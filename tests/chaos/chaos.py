#!/usr/bin/python3
"""Chaos driver: a real multi-process mx cluster (3 queue replicas x 2 shards,
2 ingress, 2 delivery, control) under sustained SMTP load while faults are
injected one at a time, at random (seeded):

  kill9-queue      kill -9 a queue replica (a leader half of the time), restart it
  sigstop-queue    SIGSTOP a replica (a leader when possible) for longer than
                   the election timeout, then SIGCONT
  partition-queue  cut replica 3 off: it runs in its own network namespace,
                   joined to the others by a veth pair whose far end goes down
  kill9-ingress    kill -9 an ingress process, restart it
  kill9-delivery   kill -9 a delivery process, restart it
  transfer-leader  mxctl cluster transfer-leader of a random shard
  replace-replica  a 4th queue node started empty, added to every shard
                   (mxctl cluster add-replica: it catches up, then votes),
                   then removed again (remove-replica), stopped and wiped
  rolling-restart  every process restarted once, one at a time (scripts/
                   cluster restart-rolling: leadership handed over first,
                   ingress and delivery drained)
  grow-drain-shard a shard added online (mxctl cluster add-shard), used by
                   ingress and delivery, then drained with --move (its
                   messages re-enqueued on the other shards) until it retires

Every kind runs at least once. Between faults the driver waits for new 250s
(a cluster that stops accepting mail fails the run). At the end the load
stops and the driver checks:

  - every message answered 250 reached the sink (zero lost);
  - the queue drains (every shard empty: no stuck lease, no deadlock);
  - duplicate deliveries are counted, and each one is explained by a fault
    that could lose an Ack: the delivery process that sent the first copy was
    killed within seconds of it, or a queue replica was faulted around then;
  - no process died that the driver did not kill, each one stops cleanly on
    SIGTERM, and no log holds a crash or sanitizer report.

It prints one summary line starting with "chaos:" and exits 0 only if all
checks pass. Loopback and a network namespace of its own only; the partition
needs root (CAP_NET_ADMIN) and is left out, and said so, without it.

    tests/chaos/chaos.py --seconds 90 --seed 7
"""
import argparse
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "functional"))
from mxtest import Load, Sink, Unbound, delivered_ids, free_port, wait_for  # noqa: E402 (puts scripts/ on the path)
from mxcluster import Cluster, free_base  # noqa: E402

MX_HOST = "127.0.0.2"
KINDS = ("kill9-queue", "sigstop-queue", "partition-queue", "kill9-ingress", "kill9-delivery", "transfer-leader",
         "replace-replica", "rolling-restart", "grow-drain-shard")
# Faults that move a shard's leadership: an Ack in flight may be lost.
LEADER_MOVES = ("kill9-queue", "sigstop-queue", "partition-queue", "transfer-leader", "replace-replica",
                "rolling-restart")
CRASH_MARKERS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:", "WARNING: ThreadSanitizer",
                 "terminate called", "Assertion `", "Segmentation fault")
# A first copy delivered this long before its sender was killed, or before or
# after a queue replica fault, was in flight: its Ack may have been lost.
IN_FLIGHT_BEFORE = 5.0
IN_FLIGHT_AFTER = 5.0


class Netns:
    """A network namespace joined to this one by a veth pair; `cut` takes the
    far end down (the near side then drops what it sends, the far side has no
    route), `heal` brings it back. Addresses: 10.213.N.1 here, .2 there."""

    def __init__(self):
        tag = f"{os.getpid() % 100000}"
        self.name, self.near, self.far = f"mxchaos{tag}", f"mxc{tag}a", f"mxc{tag}b"
        n = random.Random(os.getpid()).randrange(1, 250)
        self.near_ip, self.far_ip = f"10.213.{n}.1", f"10.213.{n}.2"
        self.created = False

    @staticmethod
    def ip(*args):
        subprocess.run(["ip", *args], check=True, capture_output=True, text=True)

    @staticmethod
    def sweep():
        """Namespaces left by an earlier run that was killed (its pid is gone)."""
        out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        for m in re.finditer(r"^mxchaos(\d+)p?\b", out, re.M):
            if not Path(f"/proc/{m.group(1)}").exists():
                subprocess.run(["ip", "netns", "del", m.group(0)], capture_output=True)
                subprocess.run(["ip", "link", "del", f"mxc{m.group(1)}a"], capture_output=True)

    def create(self):
        self.sweep()
        self.ip("netns", "add", self.name)
        self.created = True
        self.ip("link", "add", self.near, "type", "veth", "peer", "name", self.far)
        self.ip("link", "set", self.far, "netns", self.name)
        self.ip("addr", "add", f"{self.near_ip}/30", "dev", self.near)
        self.ip("link", "set", self.near, "up")
        self.ip("-n", self.name, "addr", "add", f"{self.far_ip}/30", "dev", self.far)
        self.ip("-n", self.name, "link", "set", self.far, "up")
        self.ip("-n", self.name, "link", "set", "lo", "up")

    def cut(self):
        self.ip("-n", self.name, "link", "set", self.far, "down")

    def heal(self):
        self.ip("-n", self.name, "link", "set", self.far, "up")

    def delete(self):
        if self.created:
            subprocess.run(["ip", "netns", "del", self.name], capture_output=True)
            subprocess.run(["ip", "link", "del", self.near], capture_output=True)
            self.created = False


def netns_available():
    if os.geteuid() != 0 or shutil.which("ip") is None:
        return "needs root and iproute2"
    probe = Netns()
    probe.name, probe.near, probe.far = probe.name + "p", probe.near + "p", probe.far + "p"
    try:
        probe.create()
        return None
    except subprocess.CalledProcessError as e:
        return f"ip netns failed: {e.stderr.strip()}"
    finally:
        probe.delete()


class SmtpSource:
    """Postfix's smtp-source as background load, restarted whenever it exits
    (it gives up when its ingress is killed). Its messages are not tracked one
    by one; they must drain with the rest."""

    def __init__(self, port):
        self.port, self.proc, self.runs = port, None, 0

    def poll(self):
        if self.proc is None or self.proc.poll() is not None:
            self.runs += 1
            self.proc = subprocess.Popen(["smtp-source", "-s", "2", "-m", "1000000", "-l", "2000", "-f",
                                          "source@sender.test", "-t", "user@implicit.test",
                                          f"127.0.0.1:{self.port}"],
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class Chaos:
    def __init__(self, workdir, seconds, seed, log=print):
        self.workdir, self.seconds, self.seed, self.log = Path(workdir), seconds, seed, log
        self.rng = random.Random(seed)
        self.faults = []  # {"kind", "target", "leader", "start", "end"}
        self.killed = set()  # processes this driver killed at least once (by name)
        self.problems = []

    # --- faults -----------------------------------------------------------------------------------------

    def _leaders(self):
        try:
            return self.cluster.leaders()
        except Exception:  # control unreachable for a moment: no preference
            return {}

    def _pick_replica(self, prefer_leader):
        leaders = set(self._leaders().values())
        nodes = [p for p in range(1, 4)]
        if prefer_leader and leaders:
            return self.rng.choice(sorted(leaders)), True
        n = self.rng.choice(nodes)
        return n, n in leaders

    def inject(self, kind):
        c, rng = self.cluster, self.rng
        fault = {"kind": kind, "start": time.monotonic()}
        if kind == "kill9-queue":
            node, leader = self._pick_replica(prefer_leader=rng.random() < 0.5)
            p = c.queue_node(node)
            fault.update(target=p.name, leader=leader)
            p.kill9()
            self.killed.add(p.name)
            time.sleep(rng.uniform(1.0, 4.0))
            p.start()
        elif kind == "sigstop-queue":
            node, leader = self._pick_replica(prefer_leader=True)
            p = c.queue_node(node)
            fault.update(target=p.name, leader=leader)
            p.sigstop()
            time.sleep(rng.uniform(2.5, 5.0))  # election timeout is 1 s
            p.sigcont()
        elif kind == "partition-queue":
            node = 3
            fault.update(target=c.queue_node(node).name, leader=node in self._leaders().values())
            self.netns.cut()
            time.sleep(rng.uniform(3.0, 6.0))
            self.netns.heal()
        elif kind == "transfer-leader":
            shard = rng.choice(c.live_shards())  # not a retired one: its group may be closed
            fault.update(target=f"shard {shard}", leader=True)
            out = c.mxctl("cluster", "transfer-leader", "--shard", str(shard))
            self.log("chaos: " + out.stdout.strip())
        elif kind == "replace-replica":
            fault.update(target="queue-4", leader=False)
            self.replace_replica()
        elif kind == "rolling-restart":
            fault.update(target="every process", leader=True)
            c.restart_rolling(log=self.log)
        elif kind == "grow-drain-shard":
            fault.update(target=f"shard {c.shards}", leader=False)
            self.grow_and_drain_shard()
        elif kind in ("kill9-ingress", "kill9-delivery"):
            p = rng.choice(c.ingress if kind == "kill9-ingress" else c.delivery)
            fault.update(target=p.name, leader=False)
            p.kill9()
            self.killed.add(p.name)
            time.sleep(rng.uniform(0.5, 2.0))
            p.start()
        fault["end"] = time.monotonic()
        self.faults.append(fault)
        self.log(f"chaos: {kind} {fault['target']}{' (leader)' if fault['leader'] else ''} "
                 f"for {fault['end'] - fault['start']:.1f}s; {self.load.count()} accepted so far")

    def replace_replica(self):
        """3 -> 4 -> 3 voters on every shard, under the load."""
        c = self.cluster
        p = next((q for q in c.queue if q.name == "queue-4"), None) or c.add_queue_node(4)
        shutil.rmtree(p.dir / "data", ignore_errors=True)  # a new, empty node each time
        p.start()
        c.mxctl("cluster", "add-replica", "--node", "4", "--grpc", p.grpc, "--raft", p.raft, timeout=240)
        wait_for(lambda: c._caught_up(4), timeout=60, interval=0.2, what="node 4 to catch up on every shard")
        self.log(f"chaos: node 4 is a caught-up voter of every shard; {self.load.count()} accepted so far")
        c.mxctl("cluster", "remove-replica", "--node", "4", timeout=240)
        p.stop()

    def grow_and_drain_shard(self):
        """A shard added, given mail, drained with --move and retired, under the load."""
        c = self.cluster
        out = c.mxctl("cluster", "add-shard", timeout=90)
        shard = int(out.stdout.split()[1])
        c.shards = max(c.shards, shard + 1)
        self.log("chaos: " + out.stdout.strip())
        wait_for(lambda: int((c.leader_row(shard) or {}).get("commit_index", 0)) >= 30, timeout=60, interval=0.2,
                 what=f"mail on the new shard {shard}")
        out = c.mxctl("cluster", "drain-shard", str(shard), "--move")
        self.log("chaos: " + out.stdout.strip())

        def retired():
            return any(int(s.get("shard", 0)) == shard and s["state"] == "SHARD_RETIRED"
                       for s in c.status().get("shard_map", []))
        wait_for(retired, timeout=120, interval=0.5, what=f"shard {shard} to move its mail and retire")
        self.log(f"chaos: shard {shard} retired; {self.load.count()} accepted so far")

    def check_alive(self):
        for p in self.cluster.procs:
            if not p.alive() and not p.stopped and not p.down:
                self.problems.append(f"{p.name} exited by itself with {p.proc.returncode}")
                raise RuntimeError(self.problems[-1])

    # --- the run ---------------------------------------------------------------------------------------

    def run(self):
        self.workdir.mkdir(parents=True, exist_ok=True)
        no_netns = netns_available()
        kinds = self.kinds = [k for k in KINDS if not (k == "partition-queue" and no_netns)]
        self.netns = self.sink = self.dns = self.cluster = self.load = self.source = None
        try:
            if not no_netns:
                self.netns = Netns()
                self.netns.create()
            port = free_port(MX_HOST)
            self.sink = Sink(MX_HOST, port)
            self.dns = Unbound(self.workdir, {"implicit.test": "static", "sender.test": "static"},
                               [f"implicit.test. 60 IN A {MX_HOST}", "sender.test. 60 IN MX 10 mx.sender.test.",
                                "mx.sender.test. 60 IN A 127.0.0.5"])
            hosts, ns = {}, {}
            if self.netns:
                hosts = {1: self.netns.near_ip, 2: self.netns.near_ip, 3: self.netns.far_ip, 4: self.netns.near_ip}
                ns = {3: self.netns.name}
            self.cluster = Cluster(self.workdir / "cluster", base_port=free_base(queue_nodes=4, shards=8), shards=2,
                                   delivery_cfg={"dns_servers": [self.dns.server], "smtp_port": port,
                                                 "connect_timeout": "3s"},
                                   queue_hosts=hosts, netns=ns)
            self.cluster.start()
            t0 = time.monotonic()
            self.load = Load(self.cluster.smtp_ports(), threads=4, tag="chaos")
            self.source = SmtpSource(self.cluster.smtp_ports()[-1])
            self.source.poll()
            wait_for(lambda: self.load.count() >= 40, timeout=30, what="load to get going")
            plan = list(kinds)
            self.rng.shuffle(plan)
            end = t0 + self.seconds
            while time.monotonic() < end or plan:
                kind = plan.pop(0) if plan else self.rng.choice(kinds)
                self.inject(kind)
                # Progress between faults: new 250s within 30 s, or the cluster is stuck.
                n = self.load.count()
                wait_for(lambda: (self.source.poll(), self.load.count() >= n + 20)[1], timeout=30,
                         interval=0.2, what=f"250s again after {kind}")
                self.check_alive()
                time.sleep(self.rng.uniform(0.5, 2.0))
            self.load.stop()
            self.source.stop()
            return self.finish(t0)
        finally:
            if self.load:
                self.load.stop()
            if self.source:
                self.source.stop()
            if self.cluster:
                self.problems += self.cluster.stop()
                for p in self.cluster.procs:
                    log = p.logtext()
                    for marker in CRASH_MARKERS:
                        if marker in log:
                            self.problems.append(f"{p.name}: '{marker}' in {p.logfile}")
            if self.sink:
                self.sink.stop()
            if self.dns:
                self.dns.stop()
            if self.netns:
                self.netns.delete()

    def finish(self, t0):
        accepted = set(self.load.accepted)
        t_stop = time.monotonic()
        lost = set()
        try:
            wait_for(lambda: accepted <= set(delivered_ids(self.sink)), timeout=180, interval=0.5,
                     what="every accepted message to arrive")
        except AssertionError:
            lost = accepted - set(delivered_ids(self.sink))
        drained = None
        try:
            wait_for(lambda: self._queued() == 0, timeout=120, interval=0.5, what="the queue to drain")
            drained = time.monotonic() - t_stop
        except AssertionError:
            self.problems.append(f"the queue did not drain: {self._queued()} messages left")
        self.check_alive()
        dups, explained = self.classify_duplicates()
        unexplained = {m: v for m, v in dups.items() if not explained.get(m)}
        by_kind = {k: sum(1 for f in self.faults if f["kind"] == k) for k in KINDS}
        leaders = sum(1 for f in self.faults if f["leader"])
        causes = {}
        for why in explained.values():
            if why:
                causes[why] = causes.get(why, 0) + 1
        result = {
            "seed": self.seed, "seconds": round(time.monotonic() - t0, 1), "faults": len(self.faults),
            "by_kind": by_kind, "leader_faults": leaders, "accepted": len(accepted),
            "delivered": len(set(delivered_ids(self.sink))), "lost": len(lost),
            "lost_examples": sorted(lost)[:5], "duplicates": sum(dups.values()),
            "duplicate_causes": causes, "unexplained_duplicates": sorted(unexplained)[:5],
            "smtp_temp_failures": len(self.load.failures), "smtp_source_runs": self.source.runs,
            "drain_seconds": round(drained, 1) if drained is not None else None,
            "killed": sorted(self.killed), "partition": "yes" if self.netns else f"skipped ({netns_available()})",
        }
        for k in self.kinds:
            if not by_kind[k]:
                self.problems.append(f"no {k} fault was injected")
        if unexplained:
            self.problems.append(f"{len(unexplained)} duplicates not explained by a fault: "
                                 f"{sorted(unexplained)[:5]}")
        return result

    def _queued(self):
        try:
            status = self.cluster.status()
        except Exception:
            return -1
        per_shard = {}
        live = self.cluster.live_shards(status)
        for n in status.get("nodes", []):
            for r in n.get("replicas", []):
                if r.get("role") == "leader" and int(r.get("shard", 0)) in live:
                    per_shard[int(r.get("shard", 0))] = int(r.get("messages", 0))
        if len(per_shard) < len(live):
            return -1
        return sum(per_shard.values())

    def classify_duplicates(self):
        """Message-ID -> extra copies, and Message-ID -> the fault that
        explains them ("" if none)."""
        first = {}  # msgid -> (time, helo) of the first copy
        counts = {}
        with self.sink.lock:
            rows = list(zip(self.sink.messages, self.sink.arrivals))
        for (_, _, content), (t, helo) in rows:
            m = re.search(rb"^Message-ID: (\S+)", content, re.M | re.I)
            if not m:
                continue
            mid = m.group(1).decode()
            counts[mid] = counts.get(mid, 0) + 1
            first.setdefault(mid, (t, helo or ""))
        dups = {m: n - 1 for m, n in counts.items() if n > 1}
        explained = {}
        for mid in dups:
            t, helo = first[mid]
            why = ""
            for f in self.faults:
                if f["kind"] == "kill9-delivery" and helo.startswith(f["target"] + ".") and \
                        f["start"] - IN_FLIGHT_BEFORE <= t <= f["start"] + 0.5:
                    why = "delivery killed with it in flight"
                    break
                if f["kind"] in LEADER_MOVES and f["start"] - IN_FLIGHT_BEFORE <= t <= f["end"] + IN_FLIGHT_AFTER:
                    why = f"{f['kind']} lost its Ack"
                    break
            explained[mid] = why
        return dups, explained


def summary_line(r, problems):
    kinds = " ".join(f"{k}={n}" for k, n in r["by_kind"].items())
    causes = ", ".join(f"{n} {why}" for why, n in r["duplicate_causes"].items()) or "none"
    return (f"chaos: seed={r['seed']} {r['seconds']}s faults={r['faults']} ({kinds}; {r['leader_faults']} on leaders; "
            f"partition {r['partition']}) accepted={r['accepted']} delivered={r['delivered']} lost={r['lost']} "
            f"duplicates={r['duplicates']} ({causes}) unexplained_duplicates={len(r['unexplained_duplicates'])} "
            f"smtp_temp_failures={r['smtp_temp_failures']} drained_in={r['drain_seconds']}s "
            f"problems={len(problems)} -> {'PASS' if not problems and r['lost'] == 0 else 'FAIL'}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=float(os.environ.get("MX_CHAOS_SECONDS", 90)),
                    help="how long to keep injecting faults (every kind runs at least once)")
    ap.add_argument("--seed", type=int, default=int(os.environ.get("MX_CHAOS_SEED", time.time_ns() % 100000)))
    ap.add_argument("--dir", help="work directory (kept); default: a temporary one, removed if the run passes")
    ap.add_argument("--json", help="write the result here as JSON")
    args = ap.parse_args()
    workdir = Path(args.dir or tempfile.mkdtemp(prefix="mx-chaos-"))
    chaos = Chaos(workdir, args.seconds, args.seed)
    result = None
    try:
        result = chaos.run()
    except Exception as e:  # a stuck or crashed cluster: still report
        chaos.problems.append(f"{type(e).__name__}: {e}")
    for p in chaos.problems:
        print(f"chaos: problem: {p}")
    if result is None:
        print(f"chaos: seed={args.seed} aborted after {len(chaos.faults)} faults -> FAIL (logs in {workdir})")
        return 1
    print(summary_line(result, chaos.problems))
    if args.json:
        Path(args.json).write_text(json.dumps(dict(result, problems=chaos.problems), indent=2) + "\n")
    ok = not chaos.problems and result["lost"] == 0
    if ok and not args.dir:
        shutil.rmtree(workdir, ignore_errors=True)
    elif not ok:
        print(f"chaos: logs in {workdir}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
