"""Every role's /metrics passes `promtool check metrics`; every metric the
shipped alert rules and the Grafana dashboard use is one some role exports;
the metrics reference in docs/OPERATIONS.md lists exactly what is exported."""
import re
import smtplib
import subprocess
from pathlib import Path

from conftest import MX_GOOD
from mxtest import ExtraDelivery, free_port, metric_value, wait_for

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "helm" / "mx" / "files" / "mx-alerts.yaml"
DASHBOARD = ROOT / "helm" / "mx" / "files" / "mx-dashboard.json"
OPERATIONS = ROOT / "docs" / "OPERATIONS.md"
HISTOGRAM_SERIES = re.compile(r"_(bucket|sum|count)$")


def dashboard_exprs():
    import json

    def walk(panels):
        for p in panels:
            yield from (t["expr"] for t in p.get("targets", []))
            yield from walk(p.get("panels", []))

    dash = json.loads(DASHBOARD.read_text())
    return list(walk(dash["panels"])) + [v["definition"] for v in dash["templating"]["list"] if "definition" in v]


def metric_names(expr):
    """Metric names in a PromQL expression; histogram series map to their family."""
    return {HISTOGRAM_SERIES.sub("", n) for n in re.findall(r"\b(mx_[a-z_]+)", expr)}


def documented_metrics():
    """Names in the Metrics table of docs/OPERATIONS.md (first column)."""
    section = OPERATIONS.read_text().split("\n## Metrics\n", 1)[1].split("\n## ", 1)[0]
    names = set()
    for line in section.splitlines():
        if line.startswith("| `mx_"):
            names |= set(re.findall(r"`(mx_[a-z_]+)", line.split("|")[1]))
    return names


def registered_metrics(kinds=None):
    """The catalog: metric name -> the source file that registers it (and,
    into kinds, name -> Counter | Gauge | Histogram)."""
    found = {}
    for path in ROOT.glob("*/src/*.cc"):
        text = path.read_text()
        for name in re.findall(r'\.Name\("(mx_[a-z_]+)"\)', text):
            found[name] = path.relative_to(ROOT)
        for kind, name in re.findall(r'Build(Counter|Gauge|Histogram)\(\)\s*\.Name\("(mx_[a-z_]+)"\)', text):
            if kinds is not None:
                kinds[name] = kind
    return found


def test_metrics_catalog_is_one_probe_class_per_component_and_documented():
    kinds = {}
    catalog = registered_metrics(kinds)
    assert len(catalog) > 40 and set(kinds) == set(catalog)
    for name, path in catalog.items():
        component = name.split("_")[1]
        assert str(path) == f"{component}/src/probe.cc", f"{name} is registered in {path}, not {component}'s probe"
        if kinds[name] == "Counter":
            assert name.endswith("_total"), f"counter {name} must end in _total"
        else:
            assert not name.endswith("_total"), f"{kinds[name].lower()} {name} must not end in _total"
        if kinds[name] == "Histogram":
            assert name.endswith(("_seconds", "_bytes", "_commands", "_messages")), f"histogram {name} needs a unit suffix"
    documented = documented_metrics()
    assert not set(catalog) - documented, f"not in OPERATIONS.md's Metrics table: {sorted(set(catalog) - documented)}"
    assert not documented - set(catalog), f"in OPERATIONS.md, registered nowhere: {sorted(documented - set(catalog))}"
    panels = {n for e in dashboard_exprs() for n in metric_names(e)}
    assert len(panels) > 30, f"the dashboard names only {sorted(panels)}"
    assert not panels - set(catalog), f"dashboard panels name metrics that do not exist: {sorted(panels - set(catalog))}"


def scrape(port):
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return r.read().decode()


def test_each_role_exports_clean_metrics_that_cover_the_alert_rules(dns, sinks, mxd_factory, tmp_path):
    port = free_port(MX_GOOD)
    d = dns(port)
    sink = sinks(MX_GOOD, port)
    node = mxd_factory(delivery__dns_servers=[d.server], delivery__smtp_port=port)
    extra = {role: ExtraDelivery(node, tmp_path, name=f"mx-{role}", role=role)
             for role in ("ingress", "delivery", "control")}
    try:
        with smtplib.SMTP("127.0.0.1", extra["ingress"].smtp_port) as s:
            s.ehlo("client.test")
            assert s.docmd("RCPT", "TO:<u@implicit.test>")[0] == 503  # out of sequence: a rejection to count
            s.sendmail("a@sender.test", ["u@implicit.test"], b"Subject: m\r\n\r\nx\r\n")
        wait_for(lambda: sink.count() == 1, what="the delivery")
        texts = {"all": scrape(node.metrics_port)}
        texts.update({role: scrape(p.metrics_port) for role, p in extra.items()})
        for role, text in texts.items():
            out = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
            assert out.returncode == 0, f"{role}: {out.stdout}{out.stderr}"
        assert "mx_ingress_sessions_total" in texts["ingress"] and "mx_queue_" not in texts["ingress"]
        assert "mx_delivery_messages_in_flight" in texts["delivery"]

        exported = set()
        for text in texts.values():
            exported |= {m.group(1) for m in re.finditer(r"^# TYPE (\w+) ", text, re.M)}
        import yaml

        exprs = [r["expr"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]
        used = {n for e in exprs for n in metric_names(e)}
        assert used, "no metric names found in the rules"
        missing = sorted(n for n in used if n not in exported)
        assert not missing, f"the alert rules name metrics no role exports: {missing}"

        # Everything scraped is in the catalog (the probe classes), and the
        # families that need no particular event are there from the start.
        mx_exported = {n for n in exported if n.startswith("mx_")}
        catalog = registered_metrics()
        assert not mx_exported - set(catalog), f"exported outside a probe class: {sorted(mx_exported - set(catalog))}"
        assert len(mx_exported) >= len(catalog) - 3, f"not exported yet: {sorted(set(catalog) - mx_exported)}"

        # Metrics this traffic must have moved, on the process that owns them.
        assert metric_value(texts["ingress"], "mx_ingress_policy_info", {"version": "local"}) == 1
        assert sum(metric_value(texts[r], "mx_delivery_delay_seconds_count", {"result": "delivered"})
                   for r in ("all", "delivery")) == 1
        node.mxctl("mailq")
        assert metric_value(scrape(node.metrics_port), "mx_control_admin_requests_total", {"method": "Mailq"}) >= 1
    finally:
        for p in extra.values():
            p.stop()
