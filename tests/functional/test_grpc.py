"""Every gRPC server answers health checks and reflection; RPC misuse gets a precise status."""
import grpc
import pytest


def health(target, service=""):
    # grpc.health.v1.HealthCheckRequest{service} / HealthCheckResponse{status}, hand-encoded.
    req = b"" if not service else b"\x0a" + bytes([len(service)]) + service.encode()
    with grpc.insecure_channel(target) as ch:
        return ch.unary_unary("/grpc.health.v1.Health/Check")(req, timeout=5)


def reflected_services(target):
    # ServerReflectionRequest{list_services: ""} (field 7), response lists service names.
    with grpc.insecure_channel(target) as ch:
        call = ch.stream_stream("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo")
        return b"".join(call(iter([b"\x3a\x00"]), timeout=5))


@pytest.mark.parametrize("which", ["queue", "control"])
def test_health_and_reflection(mxd_factory, which):
    node = mxd_factory()
    target = f"127.0.0.1:{node.queue_port if which == 'queue' else node.control_port}"
    assert health(target) == b"\x08\x01"  # SERVING
    services = reflected_services(target)
    for name in [b"mx.v1.Queue", b"mx.v1.Metadata"] if which == "queue" else [b"mx.v1.Admin"]:
        assert name in services
    assert b"grpc.health.v1.Health" in services


def test_health_port_of_an_ingress_follows_drain(mxd_factory, tmp_path):
    """health_listen (set here with mxd --set, as the Helm chart does): the
    process is live ("") and ready ("mx.ready") until drained, when it leaves
    its Service's endpoints; undrain brings it back."""
    from mxtest import ExtraDelivery, free_port, wait_for

    node = mxd_factory()
    port = free_port()
    ing = ExtraDelivery(node, tmp_path, name="ingress-h", role="ingress",
                        args=["--set", f"health_listen=127.0.0.1:{port}", "--set", "node_name=ingress-k8s"])
    target = f"127.0.0.1:{port}"
    serving, not_serving = b"\x08\x01", b"\x08\x02"

    def answer():  # the health port opens just after the SMTP listener's log line
        try:
            return health(target)
        except grpc.RpcError:
            return None

    try:
        assert wait_for(answer, what="the health port") == serving
        assert health(target, "mx.ready") == serving
        wait_for(lambda: "ingress-k8s" in node.mxctl("cluster", "status"), what="the ingress in the node table")
        node.mxctl("drain", "ingress-k8s")
        wait_for(lambda: health(target, "mx.ready") == not_serving, what="mx.ready NOT_SERVING when drained")
        assert health(target) == serving  # still alive: liveness must not restart it
        node.mxctl("undrain", "ingress-k8s")
        wait_for(lambda: health(target, "mx.ready") == serving, what="mx.ready SERVING again")
    finally:
        ing.stop()
    with pytest.raises(grpc.RpcError):  # gone with the process
        health(target)


def test_enqueue_misuse_is_invalid_argument(mxd_factory):
    node = mxd_factory()
    with grpc.insecure_channel(f"127.0.0.1:{node.queue_port}") as ch:
        enqueue = ch.unary_unary("/mx.v1.Queue/Enqueue")
        # EnqueueRequest{message: NewMessage{envelope: Envelope{qid: "bad"}}}: invalid qid, no recipients.
        env = b"\x0a\x03bad"
        msg = b"\x0a" + bytes([len(env)]) + env
        with pytest.raises(grpc.RpcError) as e:
            enqueue(b"\x0a" + bytes([len(msg)]) + msg, timeout=5)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "not a valid queue id" in e.value.details()
