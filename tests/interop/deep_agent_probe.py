#!/usr/bin/env python3
"""Interop probe: run Deep's own Python agent against a Sonde server.

This program is a test tool for `tests/deep_python_agent_interop.rs`. It starts
the `deep-agent` package (installed from PyPI into `.venv` by
`.ci/python-env.sh`; nothing of it is vendored here) pointed at a plaintext gRPC
server, polls with a short interval, and keeps calling `probe_target()` until
the agent has delivered a snapshot for the line marked
`SONDE-INTEROP-TRACEPOINT-TARGET` below through `SnapshotService/send`.

The tracepoint to create on the server side is:

    path        = "deep_agent_probe.py"   (Deep's Python agent compares the bare
                                           file name of the running code with
                                           `path`, so no directories)
    line_number = the line holding the marker (see `--print-target-line`)

Exit codes:
    0  a snapshot for the target line was sent and the server answered OK
    2  timeout: no snapshot was sent in time (diagnostics are printed)
    3  the server answered a SnapshotService/send call with an error
    4  usage error, or the deep-agent package is not importable
    5  with --expect-refused N: N polls were refused (UNAUTHENTICATED) and none succeeded
    6  with --expect-refused N: a poll succeeded

Everything the probe reports goes to stderr prefixed with `probe:`; the agent's
own log lines go to stdout. The last line on success is
`probe: OK snapshot sent ...`.
"""

import argparse
import os
import sys
import threading
import time

MARKER = "SONDE-INTEROP-TRACEPOINT-TARGET"
PROBE_FILE = os.path.basename(__file__)


def log(msg):
    print("probe: " + msg, file=sys.stderr, flush=True)


def target_line():
    """Line number (1-based) of the marker line in this file."""
    with open(os.path.abspath(__file__), encoding="utf-8") as f:
        for number, text in enumerate(f, start=1):
            # The marker as a trailing comment on code, not this function's own text.
            if text.rstrip().endswith("# " + MARKER):
                return number
    raise RuntimeError("marker line not found in " + __file__)


def probe_target(iteration):
    """The function whose marked line the tracepoint targets."""
    basket = {"items": ["apple", "pear"], "iteration": iteration}
    user_id = "user-%d" % (iteration % 7)
    total = len(basket["items"]) * 21  # SONDE-INTEROP-TRACEPOINT-TARGET
    return total, user_id


class Recorder:
    """What the probe saw on the wire, filled by the gRPC client interceptor."""

    def __init__(self, expect_tracepoint_id, expect_line):
        self.lock = threading.Lock()
        self.expect_tracepoint_id = expect_tracepoint_id
        self.expect_line = expect_line
        self.polls = 0
        self.poll_errors = 0
        self.poll_refusals = 0
        self.last_poll = None
        self.last_error = None
        self.sends = 0
        self.done = threading.Event()
        self.failed = threading.Event()
        self.outcome = None
        self.printed_metadata = False
        self.printed_first_poll = False


def _any_value(value):
    field = value.WhichOneof("value")
    return getattr(value, field) if field else None


def _describe_poll_response(resp):
    # Imported lazily: deepproto comes with deep-agent's dependency deep-proto.
    from deepproto.proto.poll.v1.poll_pb2 import ResponseType

    tps = ["%s %s:%d args=%s" % (tp.ID, tp.path, tp.line_number, dict(tp.args)) for tp in resp.response]
    # ts_nanos is left out so that identical answers compare equal (it is logged on the first poll).
    return "type=%s hash=%r tracepoints=[%s]" % (
        ResponseType.Name(resp.response_type),
        resp.current_hash,
        "; ".join(tps),
    )


def _make_interceptor(rec):
    import grpc

    class Interceptor(grpc.UnaryUnaryClientInterceptor):
        def intercept_unary_unary(self, continuation, details, request):
            method = details.method
            if isinstance(method, bytes):
                method = method.decode()
            with rec.lock:
                if not rec.printed_metadata:
                    rec.printed_metadata = True
                    keys = sorted(k for k, _ in (details.metadata or []))
                    log("agent call metadata keys: %s" % (keys or "none"))
            is_poll = method.endswith("/poll")
            is_send = method.endswith("/send")
            if is_poll:
                attrs = {kv.key: _any_value(kv.value) for kv in request.resource.attributes}
                with rec.lock:
                    first = not rec.printed_first_poll
                    rec.printed_first_poll = True
                if first:
                    log("first poll: ts_nanos=%d current_hash=%r resource=%s"
                        % (request.ts_nanos, request.current_hash, attrs))
            call = continuation(details, request)
            try:
                resp = call.result()
            except grpc.RpcError as err:
                msg = "%s failed: %s %s" % (method, err.code(), err.details())
                with rec.lock:
                    repeated = msg == rec.last_error
                    rec.last_error = msg
                    if is_poll:
                        rec.poll_errors += 1
                        if err.code() == grpc.StatusCode.UNAUTHENTICATED:
                            rec.poll_refusals += 1
                if not repeated:
                    log(msg)
                if is_send:
                    rec.outcome = msg
                    rec.failed.set()
                return call
            if is_poll:
                desc = _describe_poll_response(resp)
                with rec.lock:
                    rec.polls += 1
                    changed = desc != rec.last_poll
                    rec.last_poll = desc
                    n = rec.polls
                if n == 1:
                    log("poll #1 answer ts_nanos=%d" % resp.ts_nanos)
                if n == 1 or changed:
                    log("poll #%d -> %s" % (n, desc))
            elif is_send:
                frame = request.frames[0] if request.frames else None
                summary = "snapshot id=%s tracepoint=%s file=%s line=%s frames=%d vars=%d ts_nanos=%d" % (
                    request.ID.hex(),
                    request.tracepoint.ID,
                    frame.file_name if frame else None,
                    frame.line_number if frame else None,
                    len(request.frames),
                    len(request.var_lookup),
                    request.ts_nanos,
                )
                log("sent " + summary)
                with rec.lock:
                    rec.sends += 1
                ok = (
                    frame is not None
                    and os.path.basename(frame.file_name) == PROBE_FILE
                    and frame.line_number == rec.expect_line
                    and (not rec.expect_tracepoint_id or request.tracepoint.ID == rec.expect_tracepoint_id)
                )
                if ok:
                    rec.outcome = summary
                    rec.done.set()
                else:
                    log("that snapshot is not the expected one (line %d, tracepoint %r); still waiting"
                        % (rec.expect_line, rec.expect_tracepoint_id))
            return call

    return Interceptor()


def _install_interceptor(rec):
    """Wrap the agent's gRPC channel right after it is created, before the first poll."""
    import grpc
    from deep.grpc.grpc_service import GRPCService

    original_start = GRPCService.start

    def start(self):
        original_start(self)
        self.channel = grpc.intercept_channel(self.channel, _make_interceptor(rec))

    GRPCService.start = start


class _DropRpcErrorTraceback:
    """Logging filter: the interceptor already reports failed calls in one line, so the agent's
    tracebacks for them (one per failed poll) are cut down to their message."""

    def filter(self, record):
        import grpc

        if record.exc_info and isinstance(record.exc_info[1], grpc.RpcError):
            record.exc_info = None
            record.exc_text = None
        return True


def _quiet_rpc_tracebacks():
    """Install the filter right after the agent sets up its logging (inside deep.start)."""
    import logging

    import deep.logging as deep_logging

    original_init = deep_logging.init

    def init(cfg=None):
        original_init(cfg)
        for name in (None, "deep"):
            for handler in logging.getLogger(name).handlers:
                handler.addFilter(_DropRpcErrorTraceback())

    deep_logging.init = init


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--server", default=os.environ.get("SONDE_GRPC_ADDR"),
                   help="gRPC address host:port of the server (env SONDE_GRPC_ADDR)")
    p.add_argument("--service-name", default=os.environ.get("SONDE_PROBE_SERVICE_NAME", "sonde-interop-probe"),
                   help="service.name resource attribute the agent reports (env SONDE_PROBE_SERVICE_NAME)")
    p.add_argument("--tracepoint-id", default=os.environ.get("SONDE_TRACEPOINT_ID", ""),
                   help="if set, only a snapshot for this tracepoint ID counts (env SONDE_TRACEPOINT_ID)")
    p.add_argument("--timeout", type=float, default=float(os.environ.get("SONDE_PROBE_TIMEOUT", "60")),
                   help="give up after this many seconds (default 60)")
    p.add_argument("--poll-interval", type=int, default=1,
                   help="agent poll interval in seconds (default 1; Deep's default is 10)")
    p.add_argument("--username", default=os.environ.get("SONDE_PROBE_USERNAME"),
                   help="use Deep's basic-auth provider with this user (with --password)")
    p.add_argument("--password", default=os.environ.get("SONDE_PROBE_PASSWORD"))
    p.add_argument("--linger", type=float, default=0.0,
                   help="after the snapshot, keep the agent polling this many seconds (to watch NO_CHANGE)")
    p.add_argument("--expect-refused", type=int, default=0, metavar="N",
                   help="stop after N polls refused as UNAUTHENTICATED (exit 5), or at the first "
                        "successful poll (exit 6)")
    p.add_argument("--debug", action="store_true", help="turn the agent's own logging up to DEBUG")
    p.add_argument("--print-target-line", action="store_true",
                   help="print the marker line number and exit")
    return p.parse_args(argv)


def main(argv):
    args = parse_args(argv)
    line = target_line()
    if args.print_target_line:
        print(line)
        return 0
    if not args.server:
        log("no server address: pass --server HOST:PORT or set SONDE_GRPC_ADDR")
        return 4
    try:
        import deep
        import grpc  # noqa: F401
    except ImportError as err:
        log("cannot import the deep-agent package (%s); run .ci/python-env.sh and use .venv/bin/python" % err)
        return 4

    # The agent reads service.name from DEEP_SERVICE_NAME when it builds its resource.
    os.environ["DEEP_SERVICE_NAME"] = args.service_name
    rec = Recorder(args.tracepoint_id, line)
    _install_interceptor(rec)

    # Config keys of deep-agent 1.1.2. Values given here win over DEEP_* env vars. POLL_TIMER must
    # be a number: the agent does arithmetic on it, so DEEP_POLL_TIMER (a string) would break it.
    config = {
        "SERVICE_URL": args.server,
        "SERVICE_SECURE": "False",  # parsed as a string by the agent
        "POLL_TIMER": args.poll_interval,
    }
    if args.username is not None and args.password is not None:
        config["SERVICE_AUTH_PROVIDER"] = "deep.api.auth.BasicAuthProvider"
        config["SERVICE_USERNAME"] = args.username
        config["SERVICE_PASSWORD"] = args.password

    log("starting deep-agent: server=%s service.name=%s poll=%ss target=%s:%d tracepoint=%s timeout=%ss"
        % (args.server, args.service_name, args.poll_interval, PROBE_FILE, line,
           args.tracepoint_id or "(any)", args.timeout))
    started = time.monotonic()
    if not args.debug:
        _quiet_rpc_tracebacks()
    agent = deep.start(config)
    if args.debug:
        import logging
        logging.getLogger("deep").setLevel(logging.DEBUG)
        for handler in logging.getLogger("deep").handlers:
            handler.setLevel(logging.DEBUG)

    deadline = started + args.timeout
    iteration = 0
    code = 2
    while True:
        if args.expect_refused:
            with rec.lock:
                refusals, polls = rec.poll_refusals, rec.polls
            if polls > 0:
                code = 6
                break
            if refusals >= args.expect_refused:
                code = 5
                break
        if rec.done.is_set():
            code = 0
            break
        if rec.failed.is_set():
            code = 3
            break
        if time.monotonic() >= deadline:
            break
        iteration += 1
        probe_target(iteration)
        time.sleep(0.05)

    elapsed = time.monotonic() - started
    if code == 0 and args.linger > 0:
        polls_before = rec.polls
        time.sleep(args.linger)
        log("lingered %.1fs: %d more polls, last: %s" % (args.linger, rec.polls - polls_before, rec.last_poll))
    # Stop tracing on this thread first (the agent's own shutdown resets only the calling thread),
    # then let the agent wind down in the background, but never hang on it.
    sys.settrace(None)
    threading.settrace(None)
    stopper = threading.Thread(target=agent.shutdown, daemon=True)
    stopper.start()
    stopper.join(5)

    if code == 0:
        log("OK snapshot sent after %.1fs (%d polls, %d calls of the target): %s"
            % (elapsed, rec.polls, iteration, rec.outcome))
    elif code == 5:
        log("REFUSED as expected: %d polls refused, none succeeded, after %.1fs; last error: %s"
            % (rec.poll_refusals, elapsed, rec.last_error))
    elif code == 6:
        log("UNEXPECTED: a poll succeeded after %.1fs: %s" % (elapsed, rec.last_poll))
    elif code == 3:
        log("FAILED: the server rejected the snapshot after %.1fs: %s" % (elapsed, rec.outcome))
    else:
        log("TIMEOUT after %.1fs: no snapshot for %s:%d was sent. polls ok=%d failed=%d, snapshots sent=%d, "
            "last poll: %s, last error: %s"
            % (elapsed, PROBE_FILE, line, rec.polls, rec.poll_errors, rec.sends, rec.last_poll, rec.last_error))
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
