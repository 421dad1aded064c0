"""The image, for real: scripts/image builds the root filesystem from the
Debian mirror (mmdebstrap) and `podman import`s it; then a cluster of the
chart's pods — the queue StatefulSet's 3 replicas, one ingress, one delivery
and one control — runs from that root filesystem, each pod with exactly the
command line, environment, volumes, user and readiness probe the rendered
chart gives it, in a network namespace of its own (a pod's network) on a
bridge, with /etc/hosts naming the StatefulSet's pods as cluster DNS would.
Mail sent to the ingress pod reaches a sink; `mxctl` runs inside the control
pod as the chart's NOTES tell operators to (`kubectl exec`).

`podman run` is tried too, and skipped with podman's own error where the
machine cannot run containers (crun cannot set RLIMIT_NOFILE here).
Needs root, mmdebstrap, podman and iproute2 (scripts/install-deps)."""
import os
import secrets
import shutil
import signal
import smtplib
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from test_chart import CHART, RELEASE, ROOT, objects, pod_specs, render  # noqa: F401 (render is a fixture)

sys.path.insert(0, str(ROOT / "tests" / "functional"))
from mxtest import Sink, Unbound, wait_for  # noqa: E402

BUILD_DIR = Path(os.environ.get("MX_BUILD_DIR", ROOT / "build" / "release"))
TOKEN = "0f3c2a9b7e614d58a1c2e3f4a5b6c7d8e9f0a1b2"


def missing():
    if os.geteuid() != 0:
        return "root (mmdebstrap, network namespaces, chroot)"
    for tool in ("mmdebstrap", "podman", "ip", "unshare", "chroot"):
        if not shutil.which(tool):
            return f"{tool} (scripts/install-deps installs it)"
    ldd = subprocess.run(["ldd", str(BUILD_DIR / "mxd" / "mxd")], capture_output=True, text=True).stdout
    if "libasan" in ldd or "libtsan" in ldd:
        return "a release build (this mxd links a sanitizer runtime the image does not have)"
    return None


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    why = missing()
    if why:
        pytest.skip(f"needs {why}")
    out = tmp_path_factory.mktemp("image")
    tag = f"localhost/mx:test-{secrets.token_hex(3)}"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "image"), "--build", str(BUILD_DIR), "--out", str(out),
                    "--tag", tag], check=True, timeout=600)
    rootfs = out / "rootfs"
    rootfs.mkdir()
    subprocess.run(["tar", "-xf", str(out / "mx-rootfs.tar"), "-C", str(rootfs)], check=True)
    yield tag, rootfs
    subprocess.run(["podman", "rmi", "-f", tag], capture_output=True)


def podman_config(tag):
    import json
    out = subprocess.run(["podman", "inspect", tag], check=True, capture_output=True, text=True).stdout
    return json.loads(out)[0]["Config"]


def test_imported_image_matches_the_chart(image, render):
    """What podman imported runs as the chart's user and exposes the chart's ports."""
    tag, _ = image
    config = podman_config(tag)
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert config["Entrypoint"] == ["/usr/local/bin/mxd"]
    assert config["User"] == f"{values['podSecurityContext']['runAsUser']}:{values['podSecurityContext']['runAsGroup']}"
    exposed = {int(p.split("/")[0]) for p in config["ExposedPorts"]}
    ports = values["ports"]
    assert {ports["smtp"], ports["queue"], ports["control"], ports["raft"], ports["metrics"], ports["health"]} <= exposed


def test_podman_runs_the_image(image):
    tag, _ = image
    r = subprocess.run(["podman", "run", "--rm", "--network", "host", tag, "--check"], capture_output=True, text=True,
                       timeout=120)
    if r.returncode != 0 and "RLIMIT_NOFILE" in r.stderr:
        pytest.skip(f"podman run does not work on this machine: {r.stderr.strip()}")
    # No /etc/mx/mx.yaml in the bare image: mxd answers with the missing file.
    assert "/etc/mx/mx.yaml" in r.stdout + r.stderr, r.stdout + r.stderr


def inside(root, path):
    """path as seen from a chroot into root: symlinks resolved within root."""
    cur = Path(root)
    for part in Path(path).relative_to("/").parts:
        nxt = cur / part
        for _ in range(20):
            if not nxt.is_symlink():
                break
            target = os.readlink(nxt)
            nxt = (Path(root) / target.lstrip("/")) if target.startswith("/") else (nxt.parent / target)
        cur = nxt
    return cur


class Pods:
    """The chart's pods as processes in network namespaces on one bridge."""

    def __init__(self, rootfs, work):
        self.rootfs, self.work = rootfs, work
        self.tag = secrets.token_hex(2)
        self.bridge = f"mxbr{self.tag}"
        self.subnet = f"10.{200 + int(self.tag, 16) % 50}.{int(self.tag, 16) % 250}"
        self.gateway = f"{self.subnet}.1"
        self.pods = {}  # name -> {"ns", "ip", "proc", "log"}
        self.ip_run("link", "add", self.bridge, "type", "bridge")
        self.ip_run("addr", "add", f"{self.gateway}/24", "dev", self.bridge)
        self.ip_run("link", "set", self.bridge, "up")

    @staticmethod
    def ip_run(*args, ns=None):
        subprocess.run(["ip"] + (["-n", ns] if ns else []) + list(args), check=True, capture_output=True)

    def add(self, name):
        n = len(self.pods)
        ns, ip = f"mxpod{self.tag}{n}", f"{self.subnet}.{10 + n}"
        self.ip_run("netns", "add", ns)
        host_end, pod_end = f"mxv{self.tag}{n}", "eth0"
        self.ip_run("link", "add", host_end, "type", "veth", "peer", "name", f"mxp{self.tag}{n}")
        self.ip_run("link", "set", f"mxp{self.tag}{n}", "netns", ns)
        self.ip_run("link", "set", f"mxp{self.tag}{n}", "name", pod_end, ns=ns)
        self.ip_run("link", "set", host_end, "master", self.bridge, "up")
        self.ip_run("addr", "add", f"{ip}/24", "dev", pod_end, ns=ns)
        self.ip_run("link", "set", pod_end, "up", ns=ns)
        self.ip_run("link", "set", "lo", "up", ns=ns)
        self.ip_run("route", "add", "default", "via", self.gateway, ns=ns)
        self.pods[name] = {"ns": ns, "ip": ip, "proc": None}
        return self.pods[name]

    def command(self, name, argv, mounts, user):
        """argv run in pod name: its network, its own mounts over the shared root filesystem, as user."""
        script = []
        for host_dir, pod_path in mounts:
            target = inside(self.rootfs, pod_path)
            target.mkdir(parents=True, exist_ok=True)
            script.append(f"{shutil.which('mount')} --bind '{host_dir}' '{target}'")
        script.append(f"exec {shutil.which('chroot')} --userspec={user} '{self.rootfs}' \"$@\"")
        return ["ip", "netns", "exec", self.pods[name]["ns"], "unshare", "--mount", "--propagation", "private",
                "--", "/bin/sh", "-c", " && ".join(script), "pod"] + argv

    def start(self, name, argv, env, mounts, user):
        log = open(self.work / f"{name}.log", "a")
        self.pods[name]["log"] = self.work / f"{name}.log"
        self.pods[name]["proc"] = subprocess.Popen(self.command(name, argv, mounts, user), stdout=log,
                                                   stderr=subprocess.STDOUT,
                                                   env=dict(env, PATH="/usr/local/bin:/usr/bin:/bin"))
        log.close()

    def run(self, name, argv, env, mounts, user):
        return subprocess.run(self.command(name, argv, mounts, user), capture_output=True, text=True, timeout=60,
                              env=dict(env, PATH="/usr/local/bin:/usr/bin:/bin"))

    def stop(self):
        problems = []
        for name, p in self.pods.items():
            proc = p.get("proc")
            if proc and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    if proc.wait(30) != 0:
                        problems.append(f"{name} exited with {proc.returncode} on SIGTERM")
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                    problems.append(f"{name} did not stop on SIGTERM")
        for p in self.pods.values():
            subprocess.run(["ip", "netns", "delete", p["ns"]], capture_output=True)
        subprocess.run(["ip", "link", "delete", self.bridge], capture_output=True)
        return problems


def probe(ip, port, service):
    """The chart's gRPC probe: grpc.health.v1.Health/Check for service; True when SERVING."""
    import grpc
    request = b"\x0a" + bytes([len(service)]) + service.encode() if service else b""
    with grpc.insecure_channel(f"{ip}:{port}") as ch:
        check = ch.unary_unary("/grpc.health.v1.Health/Check", request_serializer=None, response_deserializer=None)
        try:
            reply = check(request, timeout=2)
        except grpc.RpcError:
            return False
    return reply == b"\x08\x01"  # status: SERVING


def k8s_expand(arg, env):
    import re
    arg = re.sub(r"(?<!\$)\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m.group(1), m.group(0)), arg)
    return arg.replace("$$", "$")


def test_the_charts_pods_run_from_the_image_and_deliver_mail(image, render, tmp_path):
    tag, rootfs = image
    pods = Pods(rootfs, tmp_path)
    sink = dns = None
    try:
        sink = Sink(pods.gateway)
        values = tmp_path / "values.yaml"
        values.write_text(yaml.safe_dump({
            "hostname": "mx.example.com",
            "control": {"adminTokens": {"tokens": [{"name": "ops", "role": "operator", "token": TOKEN}]}},
            "queue": {"shards": 2},
            "config": {"delivery": {"smart_host": f"[{pods.gateway}]:{sink.port}"},
                       "ingress": {"mynetworks": [f"{pods.subnet}.0/24"]}},
        }))
        objs = objects(render(values).stdout)
        values_all = yaml.safe_load((CHART / "values.yaml").read_text())
        sc = values_all["securityContext"] if "runAsUser" in values_all.get("securityContext", {}) \
            else values_all["podSecurityContext"]
        user = f"{sc['runAsUser']}:{values_all['podSecurityContext'].get('runAsGroup', sc['runAsUser'])}"
        uid = int(user.split(":")[0])

        # One pod per StatefulSet ordinal, one of each Deployment.
        plan = []
        for key, (labels, spec) in sorted(pod_specs(objs).items()):
            o = objs[key]
            count = o["spec"]["replicas"] if o["kind"] == "StatefulSet" else 1
            for ordinal in range(count):
                name = f"{o['metadata']['name']}-{ordinal}" if o["kind"] == "StatefulSet" else \
                    f"{o['metadata']['name']}-test{ordinal}"
                plan.append((name, labels["app.kubernetes.io/component"], spec))
        for name, _, _ in plan:
            pods.add(name)
        # Cluster DNS: the StatefulSet's pods under its headless peers
        # Service, served by a real DNS server the pods' resolv.conf names.
        sts = next(o for o in objs.values() if o["kind"] == "StatefulSet")
        namespace = sts["metadata"].get("namespace", "mail")
        domain = f"{sts['spec']['serviceName']}.{namespace}.svc.cluster.local"
        records = [f"{name}.{domain}. 30 IN A {pods.pods[name]['ip']}" for name, comp, _ in plan if comp == "queue"]
        dns_dir = tmp_path / "dns"
        dns_dir.mkdir()
        dns = Unbound(dns_dir, {"cluster.local": "static"}, records, interface=pods.gateway, port=53,
                      allow=(f"{pods.subnet}.0/24", "127.0.0.0/8"))
        inside(rootfs, "/etc/hosts").write_text("127.0.0.1 localhost\n")
        inside(rootfs, "/etc/resolv.conf").write_text(
            f"nameserver {pods.gateway}\nsearch {namespace}.svc.cluster.local svc.cluster.local cluster.local\n"
            "options ndots:5\n")

        sources = {k: o for k, o in objs.items() if o["kind"] in ("ConfigMap", "Secret")}
        started = {}
        for name, component, spec in plan:
            c = spec["containers"][0]
            env = {"POD_NAME": name}
            for e in c.get("env", []):
                if "value" in e:
                    env[e["name"]] = k8s_expand(e["value"], env)
                elif e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.name":
                    env[e["name"]] = name
            mounts = []
            for m in c.get("volumeMounts", []):
                host_dir = tmp_path / "volumes" / name / m["name"]
                host_dir.mkdir(parents=True, exist_ok=True)
                vol = next((v for v in spec.get("volumes", []) if v["name"] == m["name"]), None)
                if vol is not None:
                    ref = vol.get("configMap", {}).get("name") or vol.get("secret", {}).get("secretName")
                    kind = "ConfigMap" if "configMap" in vol else "Secret"
                    o = sources[f"{kind}/{ref}"]
                    data = dict(o.get("data", {}), **o.get("stringData", {}))
                    for file, text in data.items():
                        (host_dir / file).write_text(text)
                        os.chown(host_dir / file, 0, uid)  # fsGroup
                        os.chmod(host_dir / file, 0o440 if kind == "Secret" else 0o644)
                else:  # a volumeClaimTemplate: the pod's own disk
                    os.chown(host_dir, uid, uid)
                mounts.append((host_dir, m["mountPath"]))
            argv = [k8s_expand(a, env) for a in c["command"] + c.get("args", [])]
            pods.start(name, argv, env, mounts, user)
            started[name] = (component, env, mounts)

        health = values_all["ports"]["health"]

        def ready():
            return all(probe(pods.pods[n]["ip"], health, "mx.ready") for n in started)

        def alive():
            for n, p in pods.pods.items():
                if p["proc"].poll() is not None:
                    raise AssertionError(f"{n} exited with {p['proc'].returncode}:\n{p['log'].read_text()[-3000:]}")
            return True

        wait_for(lambda: alive() and ready(), timeout=90, interval=0.5, what="every pod's readiness probe")
        ingress = next(n for n, (comp, _, _) in started.items() if comp == "ingress")
        control = next(n for n, (comp, _, _) in started.items() if comp == "control")
        smtp = values_all["ports"]["smtp"]
        ids = []
        for i in range(10):
            with smtplib.SMTP(pods.pods[ingress]["ip"], smtp, timeout=60) as s:
                mid = f"<image-{i}@mx.example.com>"
                s.sendmail("ops@mx.example.com", [f"user{i}@example.net"],
                           f"Message-ID: {mid}\r\nSubject: from the image\r\n\r\nhello\r\n")
                ids.append(mid)
        wait_for(lambda: sink.count() >= 10, timeout=60, interval=0.5, what="10 messages through the image's pods")
        got = {m for _, _, content in sink.messages for m in ids if m.encode() in content}
        assert got == set(ids)
        # The operator's view, from inside the control pod (kubectl exec … mxctl).
        _, env, mounts = started[control]
        r = pods.run(control, ["/usr/local/bin/mxctl", "cluster", "status"], env, mounts, user)
        assert r.returncode == 0, r.stderr
        assert r.stdout.count("leader") >= 2, r.stdout  # both shards have a leader
    finally:
        problems = pods.stop()
        if sink:
            sink.stop()
        if dns:
            dns.stop()
    assert not problems, problems
