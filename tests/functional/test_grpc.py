"""Every gRPC server answers health checks and reflection; RPC misuse gets a precise status."""
import time

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


def _field(num, payload):  # a length-delimited protobuf field
    assert len(payload) < 128
    return bytes([num << 3 | 2, len(payload)]) + payload


def _varint_field(num, v):
    out = bytes([num << 3])
    while True:
        b, v = v & 0x7F, v >> 7
        out += bytes([b | (0x80 if v else 0)])
        if not v:
            return out


def _read_varint(buf, i):
    v = shift = 0
    while True:
        b = buf[i]
        i += 1
        v |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return v, i


def _fields(buf):
    """(field number, value) of a protobuf message: ints for varints, bytes otherwise."""
    i, out = 0, []
    while i < len(buf):
        key, i = _read_varint(buf, i)
        if key & 7 == 0:
            v, i = _read_varint(buf, i)
        else:
            n, i = _read_varint(buf, i)
            v, i = buf[i:i + n], i + n
        out.append((key >> 3, v))
    return out


def _qid():
    digits = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
    t, s = int(time.time() * 1e6), ""
    for _ in range(10):
        s, t = digits[t % 62] + s, t // 62
    return s + "Bt0k"


def test_enqueue_batch_answers_each_message(mxd_factory):
    """EnqueueBatch (ingress's first attempts): every message gets its own
    answer, as Enqueue would give it; the call fails only when nothing could
    be proposed."""
    node = mxd_factory()
    qid, body = _qid(), b"Subject: batch\r\n\r\nhello\r\n"
    good = (_field(1, _field(1, qid.encode()) + _varint_field(3, len(body))) +
            _field(2, _field(2, b"batch@nowhere.invalid")) + _field(3, body))
    bad = _field(1, _field(1, b"bad"))  # not a queue id, no recipient
    with grpc.insecure_channel(f"127.0.0.1:{node.queue_port}") as ch:
        batch = ch.unary_unary("/mx.v1.Queue/EnqueueBatch")

        def results(*messages, shard=0):
            resp = batch(_varint_field(1, shard) + b"".join(_field(2, m) for m in messages), timeout=10)
            return [dict(_fields(v)) for f, v in _fields(resp) if f == 1]

        first = results(good, bad)
        assert len(first) == 2
        assert first[0].get(1, 0) == 0  # OK: committed
        assert first[1][1] == grpc.StatusCode.INVALID_ARGUMENT.value[0]
        assert b"not a valid queue id" in first[1][2] and first[1].get(3) == 1  # rejected: never proposed
        again = results(good)
        assert again[0][1] == grpc.StatusCode.ALREADY_EXISTS.value[0]  # the first call's commit stands
        with pytest.raises(grpc.RpcError) as e:
            results()
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.RpcError) as e:
            results(good, shard=9)  # a shard this node does not serve
        assert e.value.code() != grpc.StatusCode.OK
