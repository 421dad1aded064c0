"""The Helm chart (helm/mx), rendered without helm: Go's text/template and
sprig from Debian (tests/helm/render) play `helm template`. Every scenario
under helm/mx/ci/ must validate against values.schema.json, render to its
golden file, pass yamllint, and hold together as Kubernetes objects
(selectors match pods, ports and volumes resolve, every referenced
ConfigMap/Secret exists); the mx.yaml it writes must pass `mxd --check` with
each pod's own command line.

MX_UPDATE_GOLDEN=1 rewrites the golden files (review the diff)."""
import json
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "mx"
GOLDEN = Path(__file__).resolve().parent / "golden"
YAMLLINT = Path(__file__).resolve().parent / "yamllint.yaml"
BUILD_DIR = Path(os.environ.get("MX_BUILD_DIR", ROOT / "build" / "release"))
SCENARIOS = sorted(p.name[: -len("-values.yaml")] for p in (CHART / "ci").glob("*-values.yaml"))
NAMESPACE, RELEASE = "mail", "mx"
# Secrets a scenario names but leaves to the operator (cert-manager, sealed secrets).
EXTERNAL = {"full": {"Secret/mail-example-net-tls", "Secret/regcred", "Secret/mail-example-net-dkim"},
            "existing-secrets": {"Secret/mx-admin-tokens", "Secret/mx-smtp-users"}}


@pytest.fixture(scope="session")
def render(tmp_path_factory):
    go = shutil.which("go")
    assert go, "go not found: scripts/install-deps installs golang-go"
    out = tmp_path_factory.mktemp("render") / "render"
    env = dict(os.environ, GO111MODULE="off", GOPATH="/usr/share/gocode",
               GOCACHE=str(tmp_path_factory.mktemp("gocache")), GOFLAGS="")
    subprocess.run([go, "build", "-o", str(out), "./tests/helm/render"], cwd=ROOT, env=env, check=True)

    def run(*values, notes=False, check=True):
        args = [str(out), "-namespace", NAMESPACE, "-release", RELEASE]
        for v in values:
            args += ["-f", str(v)]
        if notes:
            args.append("-notes")
        r = subprocess.run(args + [str(CHART)], capture_output=True, text=True)
        if check:
            assert r.returncode == 0, r.stderr
        return r

    return run


def merge(dst, src):
    """Overlays src on dst as helm does for -f files (maps merge, the rest replaces)."""
    for k, v in src.items():
        if isinstance(v, dict) and isinstance(dst.get(k), dict):
            merge(dst[k], v)
        else:
            dst[k] = v
    return dst


def values_of(scenario):
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    return merge(values, yaml.safe_load((CHART / "ci" / f"{scenario}-values.yaml").read_text()))


def objects(text):
    docs = [d for d in yaml.safe_load_all(text) if d]
    return {f"{d['kind']}/{d['metadata']['name']}": d for d in docs}


def pod_specs(objs):
    """Workload name -> (pod template labels, pod spec)."""
    return {k: (o["spec"]["template"]["metadata"]["labels"], o["spec"]["template"]["spec"])
            for k, o in objs.items() if o["kind"] in ("Deployment", "StatefulSet")}


def selects(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


# ---- the renderer itself ---------------------------------------------------

def test_required_values_fail_with_their_message(render, tmp_path):
    r = render(check=False)  # chart defaults alone: no hostname
    assert r.returncode == 1 and "hostname is required" in r.stderr
    v = tmp_path / "v.yaml"
    v.write_text("hostname: mx.example.com\n")
    r = render(v, check=False)
    assert r.returncode == 1 and "control.adminTokens: list tokens or name an existingSecret" in r.stderr
    v.write_text("hostname: mx.example.com\ncontrol: {adminTokens: {tokens: "
                 "[{name: g, role: read, token: 0123456789abcdef0123456789}]}}\n")
    r = render(v, check=False)
    assert r.returncode == 1 and "at least one token with role operator" in r.stderr
    v.write_text((CHART / "ci" / "default-values.yaml").read_text() + "queue: {replicas: 3, bootstrapReplicas: 4}\n")
    r = render(v, check=False)
    assert r.returncode == 1 and "bootstrapReplicas cannot exceed queue.replicas" in r.stderr
    v.write_text((CHART / "ci" / "default-values.yaml").read_text() +
                 "ingress: {dkim: {keys: [{domain: example.com, selector: s, file: k.pem}]}}\n")
    r = render(v, check=False)
    assert r.returncode == 1 and "ingress.dkim.existingSecret names the Secret" in r.stderr


# ---- values.schema.json ----------------------------------------------------

@pytest.mark.parametrize("scenario", SCENARIOS)
def test_scenario_values_match_the_schema(scenario):
    schema = json.loads((CHART / "values.schema.json").read_text())
    jsonschema.validate(values_of(scenario), schema)


@pytest.mark.parametrize("bad, where", [
    ({"queue": {"replicas": "three"}}, "replicas"),
    ({"queue": {"shards": 0}}, "shards"),
    ({"ingress": {"service": {"type": "Ingress"}}}, "type"),
    ({"control": {"adminTokens": {"tokens": [{"name": "x", "role": "admin", "token": "0" * 24}]}}}, "role"),
    ({"control": {"adminTokens": {"tokens": [{"name": "x", "role": "read", "token": "short"}]}}}, "token"),
    ({"queue": {"storrage": {"size": "1Gi"}}}, "storrage"),
    ({"metrics": {"serviceMonitor": {"interval": "often"}}}, "interval"),
    ({"ingress": {"dkim": {"keys": [{"domain": "example.com", "selector": "s"}]}}}, "file"),
])
def test_schema_refuses_bad_values(bad, where):
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = merge(values_of("default"), bad)
    with pytest.raises(jsonschema.ValidationError) as e:
        jsonschema.validate(values, schema)
    assert where in str(e.value.path) or where in e.value.message


# ---- rendered scenarios ----------------------------------------------------

@pytest.mark.parametrize("scenario", SCENARIOS)
def test_render_matches_golden_and_passes_yamllint(render, scenario, tmp_path):
    out = render(CHART / "ci" / f"{scenario}-values.yaml").stdout
    golden = GOLDEN / f"{scenario}.yaml"
    if os.environ.get("MX_UPDATE_GOLDEN"):
        golden.parent.mkdir(exist_ok=True)
        golden.write_text(out)
    assert golden.exists(), f"no golden file {golden}: run with MX_UPDATE_GOLDEN=1"
    assert out == golden.read_text(), f"rendering of {scenario} changed; MX_UPDATE_GOLDEN=1 and review the diff"
    rendered = tmp_path / f"{scenario}.yaml"
    rendered.write_text(out)
    lint = subprocess.run(["yamllint", "-f", "parsable", "-c", str(YAMLLINT), str(rendered)],
                          capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr


def test_chart_sources_pass_yamllint():
    paths = [CHART / "values.yaml", CHART / "Chart.yaml", CHART / "ci", CHART / "files" / "mx-alerts.yaml"]
    lint = subprocess.run(["yamllint", "-f", "parsable", "-c", str(YAMLLINT), *map(str, paths)],
                          capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_rendered_objects_hold_together(render, scenario):
    values = values_of(scenario)
    objs = objects(render(CHART / "ci" / f"{scenario}-values.yaml").stdout)
    pods = pod_specs(objs)
    kinds = {k.split("/")[0] for k in objs}
    assert {"ConfigMap", "Secret", "StatefulSet", "Deployment", "Service", "PodDisruptionBudget"} <= kinds | (
        {"Secret"} if values["control"]["adminTokens"].get("existingSecret") else set())

    for key, o in objs.items():
        assert o.get("apiVersion") and o.get("kind"), key
        name = o["metadata"]["name"]
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name) and len(name) <= 63, key
        labels = o["metadata"].get("labels", {})
        for label in ("app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/managed-by"):
            assert label in labels, f"{key} lacks {label}"

    existing = set(objs) | EXTERNAL.get(scenario, set())
    for key, (labels, spec) in pods.items():
        workload = objs[key]
        assert selects(workload["spec"]["selector"]["matchLabels"], labels), f"{key}: selector misses its pods"
        assert spec["securityContext"]["runAsNonRoot"] is True
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        claims = {c["metadata"]["name"] for c in workload["spec"].get("volumeClaimTemplates", [])}
        for ref in spec.get("imagePullSecrets", []):
            assert f"Secret/{ref['name']}" in existing, f"{key}: pull secret {ref['name']}"
        for v in volumes.values():
            if "configMap" in v:
                assert f"ConfigMap/{v['configMap']['name']}" in existing, f"{key}: {v}"
            if "secret" in v:
                assert f"Secret/{v['secret']['secretName']}" in existing, f"{key}: {v}"
        for c in spec["containers"]:
            ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
            assert len(ports) == len(c.get("ports", [])), f"{key}: duplicate port names"
            assert all(len(n) <= 15 for n in ports), f"{key}: port name too long"
            for m in c.get("volumeMounts", []):
                assert m["name"] in volumes or m["name"] in claims, f"{key}: mount {m['name']} has no volume"
            for probe in ("livenessProbe", "readinessProbe"):
                assert c[probe]["grpc"]["port"] == ports["health"], f"{key}: {probe} is not on the health port"
            assert c["readinessProbe"]["grpc"].get("service") == "mx.ready"
            assert c["securityContext"]["readOnlyRootFilesystem"] is True
            assert c["image"].startswith(values["image"]["repository"] + ":")
            assert "memory" in c["resources"]["limits"], f"{key}: no memory limit"

    def matched(selector):
        return [(k, labels, spec) for k, (labels, spec) in pods.items() if selects(selector, labels)]

    for key, o in objs.items():
        kind = o["kind"]
        if kind == "Service":
            hits = matched(o["spec"]["selector"])
            assert hits, f"{key} selects no pods"
            for port in o["spec"]["ports"]:
                for k, _, spec in hits:
                    names = {p["name"] for c in spec["containers"] for p in c.get("ports", [])}
                    assert port["targetPort"] in names, f"{key}: targetPort {port['targetPort']} not in {k}"
        elif kind == "PodDisruptionBudget":
            assert matched(o["spec"]["selector"]["matchLabels"]), f"{key} selects no pods"
        elif kind == "HorizontalPodAutoscaler":
            ref = o["spec"]["scaleTargetRef"]
            target = f"{ref['kind']}/{ref['name']}"
            assert target in objs, f"{key} scales a missing {target}"
            assert "replicas" not in objs[target]["spec"], f"{target} sets replicas under an HPA"
        elif kind == "NetworkPolicy":
            hits = matched(o["spec"]["podSelector"]["matchLabels"])
            assert hits, f"{key} selects no pods"
            names = {p["name"] for _, _, spec in hits for c in spec["containers"] for p in c.get("ports", [])}
            numbers = {p["containerPort"] for _, _, spec in hits for c in spec["containers"]
                       for p in c.get("ports", [])}
            for rule in o["spec"]["ingress"]:
                for p in rule["ports"]:
                    if isinstance(p["port"], int):  # a range (the Raft ports of shards added online)
                        span = set(range(p["port"], p.get("endPort", p["port"]) + 1))
                        assert span & numbers, f"{key}: ports {p['port']}-{p.get('endPort')} not on its pods"
                        continue
                    assert p["port"] in names, f"{key}: port {p['port']} not on its pods"
        elif kind == "ServiceMonitor":
            sel = o["spec"]["selector"]["matchLabels"]
            svcs = [s for s in objs.values() if s["kind"] == "Service" and selects(sel, s["metadata"]["labels"])]
            assert svcs and all(any(p["name"] == "metrics" for p in s["spec"]["ports"]) for s in svcs), key
        elif kind == "PrometheusRule":
            shipped = yaml.safe_load((CHART / "files" / "mx-alerts.yaml").read_text())
            assert o["spec"] == shipped
        elif kind == "ConfigMap" and key.endswith("-dashboard"):
            assert json.loads(o["data"]["mx.json"]) == json.loads((CHART / "files" / "mx-dashboard.json").read_text())

    # The queue: a headless peer Service that publishes unready pods, stable
    # names in mx.yaml, founders and joiners as the values say.
    sts = objs[f"StatefulSet/{RELEASE}-queue"]
    peers_svc = objs[f"Service/{sts['spec']['serviceName']}"]
    assert peers_svc["spec"]["clusterIP"] == "None" and peers_svc["spec"]["publishNotReadyAddresses"] is True
    assert sts["spec"]["replicas"] == values["queue"]["replicas"]
    mx_yaml = yaml.safe_load(objs[f"ConfigMap/{RELEASE}-config"]["data"]["mx.yaml"])
    peers = mx_yaml["queue"]["peers"]
    assert [p["id"] for p in peers] == list(range(1, values["queue"]["replicas"] + 1))
    for i, p in enumerate(peers):
        host = f"{RELEASE}-queue-{i}.{sts['spec']['serviceName']}.{NAMESPACE}.svc.cluster.local"
        assert p["grpc"] == f"{host}:{values['ports']['queue']}" and p["raft"] == f"{host}:{values['ports']['raft']}"
        assert p.get("join", False) == (i >= values["queue"]["bootstrapReplicas"])
    raft_ports = [p["containerPort"] for c in sts["spec"]["template"]["spec"]["containers"] for p in c["ports"]
                  if p["name"].startswith("raft-")]
    assert raft_ports == [values["ports"]["raft"] + s for s in range(values["queue"]["shards"])]
    pdb = objs[f"PodDisruptionBudget/{RELEASE}-queue"]
    assert pdb["spec"]["maxUnavailable"] == 1
    # Every workload rolls when the configuration changes.
    sums = {o["spec"]["template"]["metadata"]["annotations"]["checksum/config"] for k, o in objs.items() if k in pods}
    assert len(sums) == 1


def self_signed(tmp, name="mx.test.example"):
    """A fresh certificate and key (PEM text) for a TLS Secret."""
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-keyout", str(tmp / "k.pem"), "-out", str(tmp / "c.pem"), "-days", "2", "-subj", f"/CN={name}"],
                   check=True, capture_output=True)
    return (tmp / "c.pem").read_text(), (tmp / "k.pem").read_text()


def materialise(objs, root, external=None):
    """Writes what the pods would see (ConfigMap and Secret volumes) under
    root, so that /etc/mx/mx.yaml is root/etc/mx/mx.yaml, and returns a
    function that maps a pod path to the local one (mx.yaml's secret paths
    already point at the local copies). external: contents of
    Secrets the operator provides ({"Secret/name": {key: text}})."""
    sources = {k: o for k, o in objs.items() if o["kind"] in ("ConfigMap", "Secret")}
    for key, data in (external or {}).items():
        sources.setdefault(key, {"kind": "Secret", "metadata": {"name": key.split("/", 1)[1]}, "stringData": data})
    for key, o in sources.items():
        data = dict(o.get("data", {}), **o.get("stringData", {}))
        for _, (_, spec) in pod_specs(objs).items():
            for v in spec.get("volumes", []):
                ref = v.get("configMap", {}).get("name") or v.get("secret", {}).get("secretName")
                if f"{o['kind']}/{ref}" != key:
                    continue
                for c in spec["containers"]:
                    for m in c.get("volumeMounts", []):
                        if m["name"] == v["name"]:
                            d = root / m["mountPath"].lstrip("/")
                            d.mkdir(parents=True, exist_ok=True)
                            for name, text in data.items():
                                (d / name).write_text(text)
    local = lambda path: str(root / path.lstrip("/"))  # noqa: E731
    # mx.yaml names the Secrets' pod paths; point them at their local copies.
    cfg = Path(local("/etc/mx/mx.yaml"))
    cfg.write_text(cfg.read_text().replace("/var/run/mx-secrets/", local("/var/run/mx-secrets") + "/"))
    return local


@pytest.mark.parametrize("scenario", ["default", "full", "inline-tls"])
def test_each_pod_command_line_passes_mxd_check(render, scenario, tmp_path):
    """The ConfigMap's mx.yaml and maps, with the Secrets mounted where the
    pods mount them, pass `mxd ROLE --check` run with the pod's own
    arguments (the queue's through its shell, for every ordinal)."""
    mxd = BUILD_DIR / "mxd" / "mxd"
    assert mxd.exists(), f"{mxd}: build first"
    objs = objects(render(CHART / "ci" / f"{scenario}-values.yaml").stdout)
    cert, key = self_signed(tmp_path)
    external = {s: {"tls.crt": cert, "tls.key": key} for s in EXTERNAL.get(scenario, ()) if s.endswith("-tls")}
    if scenario == "full":  # the DKIM keys the values name, made as an operator would
        keys = {}
        for name, algo in (("example.net.rsa.pem", ["RSA", "-pkeyopt", "rsa_keygen_bits:2048"]),
                           ("example.net.ed25519.pem", ["ED25519"])):
            keys[name] = subprocess.run(["openssl", "genpkey", "-algorithm", *algo], check=True, capture_output=True,
                                        text=True).stdout
        external["Secret/mail-example-net-dkim"] = keys
    local = materialise(objs, tmp_path, external)
    cfg = Path(local("/etc/mx/mx.yaml"))

    def k8s_expand(arg, env):
        # Kubernetes: $(VAR) from the container's env, $$ is a literal $.
        arg = re.sub(r"(?<!\$)\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m.group(1), m.group(0)), arg)
        return arg.replace("$$", "$")

    checked = []
    for key, (labels, spec) in pod_specs(objs).items():
        c = spec["containers"][0]
        replicas = objs[key]["spec"].get("replicas", 1)
        for ordinal in range(replicas if objs[key]["kind"] == "StatefulSet" else 1):
            pod = f"{objs[key]['metadata']['name']}-{ordinal}"
            env = {"POD_NAME": pod}
            argv = [k8s_expand(a, env) for a in c["command"] + c.get("args", [])]
            argv = [a.replace("/usr/local/bin/mxd", str(mxd)).replace("/etc/mx/mx.yaml", str(cfg)) for a in argv]
            if argv[:2] == ["/bin/sh", "-c"]:
                argv = ["/bin/sh", "-c", argv[2] + " --check"]
            else:
                argv = argv + ["--check"]
            r = subprocess.run(argv, capture_output=True, text=True, env=dict(os.environ, **env), timeout=30)
            assert r.returncode == 0, f"{key} ({pod}): {shlex.join(argv)}\n{r.stdout}{r.stderr}"
            assert "configuration OK" in r.stdout
            checked.append(labels["app.kubernetes.io/component"])
    assert sorted(set(checked)) == ["control", "delivery", "ingress", "queue"]
    # The queue's shell gives replica i the id i + 1 and marks the joiners.
    sts = objs[f"StatefulSet/{RELEASE}-queue"]
    script = k8s_expand(sts["spec"]["template"]["spec"]["containers"][0]["args"][0], {})
    shown = subprocess.run(["/bin/sh", "-c", script.replace("exec ", "echo ", 1)], capture_output=True, text=True,
                           env=dict(os.environ, POD_NAME=f"{RELEASE}-queue-4"))
    assert "--set queue.node_id=5" in shown.stdout and "node_name=mx-queue-4" in shown.stdout


def test_bad_map_in_values_fails_mxd_check(render, tmp_path):
    """The check is real: a map with a syntax error makes the ingress refuse."""
    v = tmp_path / "v.yaml"
    v.write_text((CHART / "ci" / "default-values.yaml").read_text() +
                 "config: {ingress: {access_map: access}}\nmaps:\n  access: |\n    Connect:10.0.0.1 FROBNICATE\n")
    objs = objects(render(v).stdout)
    local = materialise(objs, tmp_path / "root")
    r = subprocess.run([str(BUILD_DIR / "mxd" / "mxd"), "ingress", "--config", local("/etc/mx/mx.yaml"), "--check"],
                       capture_output=True, text=True)
    assert r.returncode == 1 and "access" in r.stderr and ":1" in r.stderr, r.stderr


def test_mismatched_tls_key_in_values_fails_mxd_check(render, tmp_path):
    cert, _ = self_signed(tmp_path)
    _, other_key = self_signed(tmp_path)
    v = tmp_path / "v.yaml"
    values = yaml.safe_load((CHART / "ci" / "default-values.yaml").read_text())
    values["ingress"] = {"tls": {"certificate": cert, "key": other_key}}
    v.write_text(yaml.safe_dump(values))
    objs = objects(render(v).stdout)
    assert objs[f"Secret/{RELEASE}-tls"]["type"] == "kubernetes.io/tls"
    local = materialise(objs, tmp_path / "root")
    cfg = Path(local("/etc/mx/mx.yaml"))
    r = subprocess.run([str(BUILD_DIR / "mxd" / "mxd"), "ingress", "--config", str(cfg), "--check"],
                       capture_output=True, text=True)
    assert r.returncode == 1 and "ingress.tls_key_file" in r.stderr, r.stderr


def test_notes_tell_how_to_add_the_joining_replicas(render):
    notes = render(CHART / "ci" / "full-values.yaml", notes=True).stdout
    lines = [l.strip() for l in notes.splitlines() if "add-replica" in l]
    assert len(lines) == 2
    assert lines[0].endswith("mxctl queue add-replica --id 4 --grpc "
                             "mx-queue-3.mx-queue-peers.mail.svc.cluster.local:7400 "
                             "--raft mx-queue-3.mx-queue-peers.mail.svc.cluster.local:7500")
    assert "add-replica" not in render(CHART / "ci" / "default-values.yaml", notes=True).stdout
