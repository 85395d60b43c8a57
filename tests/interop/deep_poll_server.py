#!/usr/bin/env python3
"""A minimal Deep-compatible poll server, built from Deep's published protobuf package.

Test tool for `tests/sonde_agent_polls_a_deep_server.rs`: Sonde's agent polls this server
the way it would poll Intergral's Deep, and must fire the one tracepoint served here. The
messages and the service come from the `deep-proto` package on PyPI (module `deepproto`,
installed into `.venv` by `.ci/python-env.sh`); nothing of Deep is vendored here.

It implements only `deepproto.proto.poll.v1.PollConfig/poll`, with Deep's semantics:
UPDATE with the configured tracepoint list, unless the request's `current_hash` is
non-empty and equal to the current hash, then NO_CHANGE. The hash is Deep's: FNV-1 (32
bit) over the tracepoint IDs. Every other method (Sonde's watch stream and status
reports among them) answers UNIMPLEMENTED, as Deep's server does.

Output:
    stdout  `listening on 127.0.0.1:PORT` once the port is bound (then nothing else)
    stderr  one line per poll with its resource attributes and the answer, one line per
            call of an unimplemented method, and the reason for exiting

The server exits by itself after `--lifetime` seconds (exit 0), so a test that forgets it
cannot leave it running. Exit 4: bad usage, or `deepproto`/`grpcio` not importable.

Example:
    .venv/bin/python tests/interop/deep_poll_server.py --path examples/shop.rs --line 42 \\
        --metric checkout_value --expression order.total --label country=order.country
"""

import argparse
import signal
import sys
import threading
import time
from concurrent import futures

try:
    import grpc
    from deepproto.proto.common.v1 import common_pb2
    from deepproto.proto.poll.v1 import poll_pb2, poll_pb2_grpc
    from deepproto.proto.tracepoint.v1 import tracepoint_pb2
except ImportError as e:  # pragma: no cover - reported to the caller
    print("deep_poll_server: cannot import grpcio/deepproto: %s" % e, file=sys.stderr, flush=True)
    sys.exit(4)


def log(msg):
    print("deep_poll_server: " + msg, file=sys.stderr, flush=True)


def fnv1_32(data):
    """FNV-1 (multiply, then xor), 32 bit: how Deep's server hashes tracepoint IDs."""
    h = 0x811C9DC5
    for byte in data:
        h = (h * 0x01000193) & 0xFFFFFFFF
        h ^= byte
    return h


def any_value_text(value):
    kind = value.WhichOneof("value")
    if kind is None:
        return ""
    if kind in ("array_value", "kvlist_value"):
        return "<%s>" % kind
    return str(getattr(value, kind))


def metric_type(name):
    try:
        return tracepoint_pb2.MetricType.Value(name.upper())
    except ValueError:
        raise argparse.ArgumentTypeError("metric type must be COUNTER, GAUGE, HISTOGRAM or SUMMARY")


def key_value(text):
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError("expected KEY=VALUE, got %r" % text)
    return key, value


def build_tracepoint(args):
    metric = tracepoint_pb2.Metric(name=args.metric, type=args.type)
    if args.expression:
        metric.expression = args.expression
    for key, expr in args.label:
        metric.labelExpressions.add(key=key, expression=expr)
    for key, value in args.static_label:
        metric.labelExpressions.add(key=key, static=common_pb2.AnyValue(string_value=value))
    tracepoint = tracepoint_pb2.TracePointConfig(
        ID=args.id, path=args.path, line_number=args.line, metrics=[metric]
    )
    for key, value in args.arg:
        tracepoint.args[key] = value
    for key, value in args.target:
        tracepoint.targeting.add(key=key, value=common_pb2.AnyValue(string_value=value))
    return tracepoint


def matches(tracepoint, attributes):
    """Deep's targeting: every key present with an equal value; no attributes match all."""
    if not attributes:
        return True
    return all(attributes.get(kv.key) == any_value_text(kv.value) for kv in tracepoint.targeting)


class PollConfig(poll_pb2_grpc.PollConfigServicer):
    def __init__(self, tracepoints):
        self.tracepoints = tracepoints
        self.hash = str(fnv1_32("".join(tp.ID for tp in tracepoints).encode("utf-8")))
        self.polls = 0
        self.lock = threading.Lock()

    def poll(self, request, context):
        with self.lock:
            self.polls += 1
            number = self.polls
        attributes = {kv.key: any_value_text(kv.value) for kv in request.resource.attributes}
        if request.current_hash and request.current_hash == self.hash:
            response = poll_pb2.PollResponse(
                ts_nanos=time.time_ns(),
                current_hash=self.hash,
                response_type=poll_pb2.ResponseType.NO_CHANGE,
            )
        else:
            response = poll_pb2.PollResponse(
                ts_nanos=time.time_ns(),
                current_hash=self.hash,
                response=[tp for tp in self.tracepoints if matches(tp, attributes)],
                response_type=poll_pb2.ResponseType.UPDATE,
            )
        log(
            "poll #%d from %s hash=%r -> %s (%d tracepoints) resource: %s"
            % (
                number,
                context.peer(),
                request.current_hash,
                poll_pb2.ResponseType.Name(response.response_type),
                len(response.response),
                ", ".join("%s=%s" % kv for kv in sorted(attributes.items())) or "(none)",
            )
        )
        return response


class LogUnimplemented(grpc.GenericRpcHandler):
    """Last in line: logs calls no service handles; grpcio then answers UNIMPLEMENTED."""

    def service(self, handler_call_details):
        log("unimplemented %s -> UNIMPLEMENTED" % handler_call_details.method)
        return None


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--path", required=True, help="the tracepoint's path")
    parser.add_argument("--line", required=True, type=int, help="the tracepoint's line")
    parser.add_argument("--metric", required=True, help="the metric's name")
    parser.add_argument("--type", type=metric_type, default=tracepoint_pb2.MetricType.COUNTER,
                        help="COUNTER (default), GAUGE, HISTOGRAM or SUMMARY")
    parser.add_argument("--expression", default="", help="the metric's value expression (default 1)")
    parser.add_argument("--label", type=key_value, action="append", default=[],
                        metavar="KEY=EXPR", help="a label from an expression (repeatable)")
    parser.add_argument("--static-label", type=key_value, action="append", default=[],
                        metavar="KEY=VALUE", help="a label with a fixed value (repeatable)")
    parser.add_argument("--arg", type=key_value, action="append", default=[],
                        metavar="KEY=VALUE", help="a tracepoint arg (repeatable)")
    parser.add_argument("--target", type=key_value, action="append", default=[],
                        metavar="KEY=VALUE", help="targeting by resource attribute (repeatable)")
    parser.add_argument("--id", default="deep-interop-1", help="the tracepoint's ID")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 (default): any free port")
    parser.add_argument("--lifetime", type=float, default=60.0,
                        help="seconds until the server exits by itself (default 60)")
    try:
        args = parser.parse_args()
    except SystemExit as e:
        sys.exit(0 if e.code == 0 else 4)

    tracepoint = build_tracepoint(args)
    servicer = PollConfig([tracepoint])
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    poll_pb2_grpc.add_PollConfigServicer_to_server(servicer, server)
    server.add_generic_rpc_handlers((LogUnimplemented(),))
    port = server.add_insecure_port("%s:%d" % (args.host, args.port))
    if port == 0:
        log("cannot bind %s:%d" % (args.host, args.port))
        sys.exit(4)
    server.start()
    log("serving %s:%d metric %r (hash %s) for %.0f s"
        % (tracepoint.path, tracepoint.line_number, args.metric, servicer.hash, args.lifetime))
    print("listening on %s:%d" % (args.host, port), flush=True)

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    reason = "stopped by a signal" if stop.wait(args.lifetime) else "lifetime over"
    log("%s after %d polls; exiting" % (reason, servicer.polls))
    server.stop(grace=1).wait()


if __name__ == "__main__":
    main()
