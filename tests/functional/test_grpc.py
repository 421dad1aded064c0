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
    assert (b"mx.v1.Queue" if which == "queue" else b"mx.v1.Admin") in services
    assert b"grpc.health.v1.Health" in services


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
