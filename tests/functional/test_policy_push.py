"""Policy distribution: `mxctl policy apply` checks a policy whole, stores
it, and every node swaps to it; `policy show` and the node table say what
each node runs; a bad policy is refused with file:line and changes nothing;
only the operator role may push."""
import signal
import smtplib

from mxtest import ExtraDelivery, wait_for


def write_policy(d, access):
    (d / "maps").mkdir(parents=True, exist_ok=True)
    (d / "maps" / "access").write_text(access)
    (d / "mx.yaml").write_text("ingress:\n  local_domains: [corp.test]\n  access_map: maps/access\n")
    return d / "mx.yaml"


def mail_from(port, sender):
    with smtplib.SMTP("127.0.0.1", port) as s:
        s.ehlo("client.test")
        return s.mail(sender)


def versions(node):
    out = node.mxctl("policy", "show")
    rows = [l.split() for l in out.splitlines() if l.startswith("mx-test")]
    return {r[0]: r[1] for r in rows}, out


def test_a_pushed_policy_reaches_every_node_and_a_bad_one_changes_nothing(mxd_factory, tmp_path):
    node = mxd_factory()
    second = ExtraDelivery(node, tmp_path, role="ingress")  # "mx-test-2": another ingress
    try:
        wait_for(lambda: versions(node)[0] == {"mx-test": "local", "mx-test-2": "local"}, what="both nodes")
        assert "No policy pushed" in versions(node)[1]
        assert mail_from(node.smtp_port, "x@bad.test")[0] == 250  # nothing against it yet

        good = write_policy(tmp_path / "v1", 'From:bad.test  ERROR:"550 5.7.1 Pushed policy says no"\n')
        denied = node.mxctl_run("policy", "apply", "--config", str(good), token_file="read")
        assert denied.returncode == 77 and "needs operator" in denied.stderr
        out = node.mxctl("policy", "apply", "--config", str(good))
        assert out.startswith("policy v1-") and "access=maps/access (1)" in out, out
        v1 = out.split()[1]
        wait_for(lambda: versions(node)[0] == {"mx-test": v1, "mx-test-2": v1}, what="every node on v1")
        processes = node.mxctl("cluster", "status").split("Processes:")[1]
        assert [l.split()[3] for l in processes.splitlines() if l.startswith("mx-test")] == [v1, v1], processes
        for port in (node.smtp_port, second.smtp_port):
            assert mail_from(port, "x@bad.test") == (550, b"5.7.1 Pushed policy says no")
        assert f"pushed policy loaded: version={v1}" in second.logtext()

        bad = write_policy(tmp_path / "v2", 'From:bad.test  ERROR:"550 5.7.1 no"\nFrom:worse.test  MAYBE\n')
        refused = node.mxctl_run("policy", "apply", "--config", str(bad))
        assert refused.returncode == 65, refused.stderr
        assert "policy refused: maps/access:2: unknown action 'MAYBE'" in refused.stderr, refused.stderr
        _, shown = versions(node)
        assert f"Current: {v1}" in shown and "behind" not in shown and "refused" not in shown

        # SIGHUP: a node reloads its own files and runs them until the next push.
        node.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: versions(node)[0]["mx-test"] == "local", what="the node's own files after SIGHUP")
        assert mail_from(node.smtp_port, "x@bad.test")[0] == 250
        v2_path = write_policy(tmp_path / "v3", 'From:bad.test  REJECT\n')
        v2 = node.mxctl("policy", "apply", "--config", str(v2_path)).split()[1]
        assert v2.startswith("v2-")
        wait_for(lambda: versions(node)[0] == {"mx-test": v2, "mx-test-2": v2}, what="every node on v2")
        assert mail_from(second.smtp_port, "x@bad.test")[0] == 550
        assert "admin: ops: policy v1-" in node.logtext()  # the audit trail names the token
    finally:
        second.stop()
