"""Every role's /metrics passes `promtool check metrics`, and every metric the
shipped alert rules use is one some role exports."""
import re
import smtplib
import subprocess
from pathlib import Path

from conftest import MX_GOOD
from mxtest import ExtraDelivery, free_port, wait_for

RULES = Path(__file__).resolve().parents[2] / "helm" / "mx" / "files" / "mx-alerts.yaml"


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
        used = {n for e in exprs for n in re.findall(r"\b(mx_[a-z_]+)", e)}
        assert used, "no metric names found in the rules"
        missing = sorted(n for n in used if n not in exported)
        assert not missing, f"the alert rules name metrics no role exports: {missing}"
    finally:
        for p in extra.values():
            p.stop()
