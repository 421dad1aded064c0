"""Traffic shaping by site against real peers (aiosmtpd) and a real DNS server:
domains sharing an MX set share one site's limits and connections, across two
delivery processes; a site named by MX suffix; messages per connection, message
and connection rates; TLS required for a site; reputation backoff (a reply rule
suspends a site for every worker) and mxctl suspend/resume/sites; egress
sources and pools (bound addresses, EHLO names, weights, per-sender pools,
a source's rate)."""
import smtplib
import time

import pytest

from conftest import MX_GOOD, MX_GOOD2
from mxtest import ExtraDelivery, TinyDns, free_port, metric_value, wait_for

# Two customer domains hosted by one provider (one MX set), and other sites.
RECORDS = {
    ("a.test", "MX"): ["10 mx1.provider.test"],
    ("b.test", "MX"): ["10 mx1.provider.test"],
    ("mx1.provider.test", "A"): [MX_GOOD],
    ("rate.test", "MX"): ["10 mx.rate.test"],
    ("mx.rate.test", "A"): [MX_GOOD],
    ("conn.test", "MX"): ["10 mx.conn.test"],
    ("mx.conn.test", "A"): [MX_GOOD2],
    ("secure.test", "MX"): ["10 in.secure.test"],
    ("in.secure.test", "A"): [MX_GOOD],
    ("plain.test", "MX"): ["10 mx.plain.test"],
    ("mx.plain.test", "A"): [MX_GOOD],
    ("c.test", "MX"): ["10 mx.ts.test"],
    ("d.test", "MX"): ["10 mx.ts.test"],
    ("mx.ts.test", "A"): [MX_GOOD],
}


@pytest.fixture
def tinydns():
    d = TinyDns(records=RECORDS)
    yield d
    d.stop()


def send(node, rcpts_per_message):
    with smtplib.SMTP("127.0.0.1", node.smtp_port) as s:
        for i, rcpts in enumerate(rcpts_per_message):
            s.sendmail("a@sender.test", rcpts, f"Subject: m{i}\r\n\r\nx\r\n".encode())


def shaping(tmp_path, text):
    path = tmp_path / "shaping.yaml"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("rules,most", [
    ("sites:\n  provider:\n    mx: [.provider.test]\n    max_connections: 2\n", 2),
    # No rule names it: the MX set is the site (per domain, a.test and b.test would have one each).
    ("default:\n  max_connections: 1\n", 1),
], ids=["named_by_mx_suffix", "by_mx_set"])
def test_a_site_limit_holds_across_its_domains_and_delivery_processes(tinydns, sinks, mxd_factory, tmp_path, rules,
                                                                       most):
    port = free_port(MX_GOOD)
    sink = sinks(MX_GOOD, port, slow_data=1000, data_delay=0.2)  # every DATA takes a while
    node = mxd_factory(delivery__dns_servers=[tinydns.server], delivery__smtp_port=port, delivery__concurrency=8,
                       delivery__connection_cache_timeout="1s", delivery__shaping_file=shaping(tmp_path, rules))
    second = ExtraDelivery(node, tmp_path)
    try:
        send(node, [[f"u{i}@{'ab'[i % 2]}.test"] for i in range(30)])
        wait_for(lambda: sink.count() == 30, timeout=120, what="30 messages under the site's limit")
        _, max_open, _ = sink.stats()
        assert max_open <= most, sink.stats()
        refused = metric_value(node.metrics(), "mx_queue_permits_total", {"op": "acquire", "result": "refused"})
        assert refused and refused > 0  # the limit was contended
        assert "stat=Sent" in node.logtext() and "stat=Sent" in second.logtext()  # both workers delivered
        if most == 2:
            assert "site=provider" in node.logtext()
    finally:
        second.stop()
    assert {r[0].split("@")[1] for _, rcpts, _ in sink.messages for r in [rcpts]} == {"a.test", "b.test"}


def test_messages_per_connection_count_across_the_domains_of_a_site(tinydns, sinks, mxd_factory, tmp_path):
    port = free_port(MX_GOOD)
    sink = sinks(MX_GOOD, port)
    rules = "sites:\n  provider:\n    mx: [mx1.provider.test]\n    max_messages_per_connection: 3\n"
    node = mxd_factory(delivery__dns_servers=[tinydns.server], delivery__smtp_port=port, delivery__concurrency=1,
                       delivery__shaping_file=shaping(tmp_path, rules))
    send(node, [[f"u{i}@{'ab'[i % 2]}.test"] for i in range(10)])
    wait_for(lambda: sink.count() == 10, timeout=60, what="10 messages")
    connections, max_open, rsets = sink.stats()
    # 3 + 3 + 3 + 1, a connection opened for a.test carrying b.test's mail too
    assert (connections, max_open, rsets) == (4, 1, 6), sink.stats()


def test_message_and_connection_rates_space_deliveries(tinydns, sinks, mxd_factory, tmp_path):
    port = free_port(MX_GOOD)
    messages = sinks(MX_GOOD, port)
    connections = sinks(MX_GOOD2, port)
    rules = ("sites:\n"
             "  rated:\n    domains: [rate.test]\n    max_message_rate: 4/s\n"
             "  conns:\n    domains: [conn.test]\n    max_connection_rate: 4/s\n"
             "    max_messages_per_connection: 1\n")
    node = mxd_factory(delivery__dns_servers=[tinydns.server], delivery__smtp_port=port, delivery__concurrency=16,
                       delivery__shaping_file=shaping(tmp_path, rules))
    send(node, [[f"r{i}@rate.test"] for i in range(8)] + [[f"c{i}@conn.test"] for i in range(8)])
    wait_for(lambda: messages.count() == 8 and connections.count() == 8, timeout=60, what="16 messages")
    # Evenly spaced, 250 ms apart, cluster-wide (timer slack allowed: 10 %).
    arrivals = sorted(t for t, _ in messages.arrivals)
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:])]
    assert arrivals[-1] - arrivals[0] >= 7 * 0.25 * 0.9, gaps
    opened = sorted(connections.conn_times)
    assert len(opened) == 8
    assert opened[-1] - opened[0] >= 7 * 0.25 * 0.9, opened
    assert "Deferred" not in node.logtext()  # waited for the turn, not put back
    granted = metric_value(node.metrics(), "mx_queue_permits_total", {"op": "rate", "result": "granted"})
    assert granted and granted >= 16


def test_a_site_that_requires_tls_is_not_delivered_in_the_clear(tinydns, sinks, mxd_factory, tmp_path):
    port = free_port(MX_GOOD)
    sink = sinks(MX_GOOD, port)  # offers no STARTTLS
    rules = "sites:\n  secure:\n    mx: [.secure.test]\n    tls: required\n"
    node = mxd_factory(delivery__dns_servers=[tinydns.server], delivery__smtp_port=port,
                       delivery__shaping_file=shaping(tmp_path, rules))
    send(node, [["x@secure.test"], ["y@plain.test"]])
    wait_for(lambda: sink.count() == 1, what="the plain.test delivery")
    assert sink.messages[0][1] == ["y@plain.test"]
    wait_for(lambda: "did not offer STARTTLS" in node.mxctl("mailq"), what="the secure.test deferral")
    assert "<x@secure.test>" in node.mxctl("mailq")
    assert sink.count() == 1


def test_a_bad_shaping_file_stops_the_start_with_its_name_and_key(tmp_path, mxd_factory):
    bad = shaping(tmp_path, "sites:\n  p:\n    mx: [.p.test]\n    max_message_rate: lots\n")
    with pytest.raises(AssertionError, match="mxd exited with"):
        mxd_factory(delivery__shaping_file=bad)
    log = (tmp_path / "mx" / "mxd.log").read_text()
    assert "shaping.yaml: sites.p.max_message_rate: expected a rate like 10/s" in log, log


TS04 = "421 4.7.0 [TS04] Messages from 127.0.0.1 temporarily deferred due to user complaints"


def test_a_reply_rule_suspends_the_site_for_every_worker(tinydns, sinks, mxd_factory, tmp_path):
    port = free_port(MX_GOOD)
    sink = sinks(MX_GOOD, port, rcpt_replies={"bad@c.test": TS04})
    rules = ("sites:\n  ts:\n    mx: [.ts.test]\n    replies:\n"
             "      - match: '\\[TSS?04\\]'\n        action: suspend\n        duration: 8s\n")
    node = mxd_factory(delivery__dns_servers=[tinydns.server], delivery__smtp_port=port,
                       delivery__shaping_file=shaping(tmp_path, rules), queue__min_backoff="1h",
                       queue__max_backoff="2h")
    second = ExtraDelivery(node, tmp_path)
    try:
        send(node, [["bad@c.test"]])
        wait_for(lambda: ("bad@c.test", TS04) in sink.rcpt_log, what="the [TS04] reply")
        triggered = time.monotonic()
        # Both workers hold the suspension: the one that saw the reply at once,
        # the other from shard 0 within its refresh.
        held = lambda p: metric_value(p.metrics(), "mx_delivery_sites", {"state": "suspended"}) == 1  # noqa: E731
        wait_for(lambda: held(node) and held(second), what="both workers to hold the suspension")
        sites = node.mxctl("sites")
        assert "ts" in sites and "suspended" in sites and "[TS04]" in sites, sites
        # Another domain of the same site waits, on either worker.
        send(node, [[f"good{i}@d.test"] for i in range(6)])
        wait_for(lambda: "is suspended" in node.mxctl("mailq"), what="the suspension in mailq")
        assert sink.count() == 0
        wait_for(lambda: sink.count() == 6, timeout=60, what="the 6 messages after the suspension")
        firsts = min(t for t, _ in sink.arrivals)
        assert firsts >= triggered + 8 - 2.5, firsts - triggered  # not before it ended (2 s refresh slack)
        fired = sum(metric_value(p.metrics(), "mx_delivery_reply_rules_fired_total",
                                 {"site": "ts", "action": "suspend"}) or 0 for p in (node, second))
        assert fired == 1  # one trigger for the episode
        assert "<bad@c.test>" in node.mxctl("mailq")  # deferred by the 421 itself (backoff 1h)
    finally:
        second.stop()


def test_mxctl_suspends_and_resumes_a_site(tinydns, sinks, mxd_factory):
    port = free_port(MX_GOOD)
    sink = sinks(MX_GOOD, port)
    node = mxd_factory(delivery__dns_servers=[tinydns.server], delivery__smtp_port=port)
    site = "mx:mx.ts.test"  # no rule names it: its MX set is the site
    out = node.mxctl("suspend", site, "1h", "complaints", "spike")
    assert "suspended for 1h" in out, out
    sites = node.mxctl("sites")
    assert site in sites and "complaints spike" in sites and "mxctl" in sites, sites
    # Workers learn it from shard 0 within their refresh (2 s).
    wait_for(lambda: metric_value(node.metrics(), "mx_delivery_sites", {"state": "suspended"}) == 1,
             what="the worker to hold the suspension")
    send(node, [["u@c.test"], ["v@d.test"]])
    wait_for(lambda: node.mxctl("mailq").count("is suspended") == 2, what="both put back for the suspension")
    assert sink.count() == 0
    assert "resumed" in node.mxctl("resume", site)
    assert "No site is suspended" in node.mxctl("sites")
    wait_for(lambda: metric_value(node.metrics(), "mx_delivery_sites", {"state": "suspended"}) == 0,
             what="the worker to drop the suspension")
    node.mxctl("qrun")
    wait_for(lambda: sink.count() == 2, what="delivery after resume and qrun")
    bad = node.mxctl_run("suspend", site, "forever")
    assert bad.returncode == 64 and "not a duration" in bad.stderr


def test_egress_sources_bind_addresses_by_pool_and_weight(tinydns, sinks, mxd_factory):
    port = free_port(MX_GOOD)
    sink = sinks(MX_GOOD, port)
    sources = {"out1": {"address": "127.0.0.20", "ehlo": "out1.sender.test"},
               "out2": {"address": "127.0.0.21", "ehlo": "out2.sender.test"},
               "news": {"address": "127.0.0.22", "ehlo": "news-out.sender.test", "max_message_rate": "5/s"}}
    pools = {"default": {"sources": {"out1": 3, "out2": 1}},
             "newsletters": {"sources": {"news": 1}, "senders": ["news.test"]}}
    node = mxd_factory(delivery__dns_servers=[tinydns.server], delivery__smtp_port=port,
                       delivery__sources=sources, delivery__pools=pools, delivery__concurrency=8,
                       delivery__connection_cache_size=0)  # a new connection (and pick) per message
    send(node, [[f"u{i}@a.test"] for i in range(40)])
    with smtplib.SMTP("127.0.0.1", node.smtp_port) as s:
        for i in range(6):
            s.sendmail("list@news.test", [f"n{i}@b.test"], f"Subject: n{i}\r\n\r\nx\r\n".encode())
    wait_for(lambda: sink.count() == 46, timeout=60, what="46 messages")
    by_sender = {}
    for (mail_from, _, _), peer in zip(sink.messages, sink.peers):
        by_sender.setdefault(mail_from.split("@")[1], []).append(peer)
    regular = by_sender["sender.test"]
    # Each source with its own EHLO name; both default sources used, 3:1.
    assert set(regular) == {("127.0.0.20", "out1.sender.test"), ("127.0.0.21", "out2.sender.test")}, set(regular)
    assert sum(p[0] == "127.0.0.20" for p in regular) > sum(p[0] == "127.0.0.21" for p in regular)
    assert set(by_sender["news.test"]) == {("127.0.0.22", "news-out.sender.test")}
    assert "source=out1" in node.logtext() and "source=news" in node.logtext()
    # The newsletter source's warm-up rate: 5/s, spaced evenly.
    news = sorted(t for (t, _), (mf, _, _) in zip(sink.arrivals, sink.messages) if mf.endswith("@news.test"))
    assert news[-1] - news[0] >= 5 * 0.2 * 0.9, news


def test_bad_egress_config_is_refused(mxd_factory):
    with pytest.raises(AssertionError, match="delivery.pools.p.sources.t: no such source in delivery.sources"):
        mxd_factory(delivery__sources={"s": {"address": "127.0.0.20"}}, delivery__pools={"p": {"sources": {"t": 1}}})
    with pytest.raises(AssertionError, match="delivery.sources.s.address: expected an IP address, got 'nowhere'"):
        mxd_factory("two", delivery__sources={"s": {"address": "nowhere"}})
    with pytest.raises(AssertionError, match="delivery.sources.s.max_message_rate: expected a rate like 10/s"):
        mxd_factory("three", delivery__sources={"s": {"address": "127.0.0.20", "max_message_rate": "lots"}})
