"""The Grafana dashboard (helm/mx/files/mx-dashboard.json): templated data
source and namespace, every panel laid out with queries, and every query
valid PromQL (promtool parses them as recording rules, with the Grafana
variables filled in). That the queries name only exported metrics is checked
against the metrics catalog in tests/functional/test_metrics.py."""
import json
import re
import shutil
import subprocess
from pathlib import Path

import yaml

DASHBOARD = Path(__file__).resolve().parents[2] / "helm" / "mx" / "files" / "mx-dashboard.json"


def load():
    return json.loads(DASHBOARD.read_text())


def panels(dash):
    for p in dash["panels"]:
        yield p
        yield from p.get("panels", [])


def test_dashboard_is_templated_and_every_panel_has_queries():
    dash = load()
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert {"namespace", "shard"} <= set(variables)
    ids = [p["id"] for p in panels(dash)]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    rows = [p["title"] for p in panels(dash) if p["type"] == "row"]
    assert {"Ingress", "Queue and Raft", "Per shard", "Delivery", "DNS"} <= set(rows)
    for p in panels(dash):
        assert {"x", "y", "w", "h"} <= set(p["gridPos"]) and p["gridPos"]["x"] + p["gridPos"]["w"] <= 24, p["title"]
        if p["type"] == "row":
            continue
        assert p["datasource"]["uid"] == "${datasource}", p["title"]
        assert p["targets"], p["title"]
        for t in p["targets"]:
            assert t["datasource"]["uid"] == "${datasource}" and t["refId"], p["title"]
            assert 'namespace=~"$namespace"' in t["expr"], f"{p['title']}: not filtered by namespace"
        if p["title"].endswith("by shard") or p["title"].startswith("Leader by shard"):
            assert all('shard=~"$shard"' in t["expr"] for t in p["targets"]), p["title"]


def test_every_query_is_valid_promql(tmp_path):
    promtool = shutil.which("promtool")
    assert promtool, "promtool not found: scripts/install-deps installs prometheus"
    exprs = [t["expr"] for p in panels(load()) for t in p.get("targets", [])]
    rules = [{"record": f"dashboard:query_{i}", "expr": re.sub(r"\$\{?\w+\}?", ".*", e)} for i, e in enumerate(exprs)]
    path = tmp_path / "dashboard-rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    r = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"{len(rules)} rules found" in r.stdout
    # The check is real: a broken query fails it.
    path.write_text(yaml.safe_dump({"groups": [{"name": "d", "rules": [{"record": "x:y", "expr": "sum(rate(mx_a[5m])"}]}]}))
    assert subprocess.run([promtool, "check", "rules", str(path)], capture_output=True).returncode != 0
