# fnhost python runtime shim. Runs INSIDE the sandbox as the runtime process: Python 3.11 stdlib only.
# Started pre-booted as `python3 -c <this file>`; says HELLO on fd 3, waits for LOAD, then serves INVOKE
# frames one at a time. The wire protocol (framing, messages, log marker) is specified in
# runtime/protocol.ts; the codec below mirrors it and must stay in step with it.
import asyncio
import base64
import importlib
import inspect
import json
import os
import resource
import socket
import struct
import sys
import time
import traceback
import urllib.parse

HELLO, LOAD, READY, INVOKE, RESULT, ERROR = 1, 2, 3, 4, 5, 6  # WAKE = 7 (host → shim) needs no handling: its arrival is the point (protocol.ts)
_HDR = struct.Struct(">IBI")

wire = socket.socket(fileno=3)


def send(kind, meta, body=b""):
    m = json.dumps(meta, separators=(",", ":")).encode()
    # One buffer, one sendall: a frame is never interleaved with anything.
    wire.sendall(_HDR.pack(5 + len(m) + len(body), kind, len(m)) + m + body)


_buf = bytearray()


def _read_exact(n):
    while len(_buf) < n:
        chunk = wire.recv(max(65536, n - len(_buf)))
        if not chunk:
            # The host closed the wire: the instance is being torn down.
            os._exit(0)
        _buf.extend(chunk)
    out = bytes(_buf[:n])
    del _buf[:n]
    return out


def read_frame():
    length, kind, meta_len = _HDR.unpack(_read_exact(9))
    rest = _read_exact(length - 5)
    return kind, json.loads(rest[:meta_len]), rest[meta_len:]


def error_meta(id_, e):
    return {
        "id": id_,
        "type": "FunctionError",
        "message": str(e),
        "stack": "".join(traceback.format_exception(e)),
        "errorType": type(e).__name__,
    }


class Logger:
    def _w(self, stream, level, args):
        stream.write(level + " " + " ".join(a if isinstance(a, str) else repr(a) for a in args) + "\n")

    def debug(self, *a):
        self._w(sys.stdout, "DEBUG", a)

    def info(self, *a):
        self._w(sys.stdout, "INFO", a)

    def warning(self, *a):
        self._w(sys.stderr, "WARN", a)

    warn = warning

    def error(self, *a):
        self._w(sys.stderr, "ERROR", a)


class Context:
    """What Lambda users expect (aws_request_id, get_remaining_time_in_millis()) plus fnhost names."""

    def __init__(self, meta, fn):
        self.invocation_id = self.aws_request_id = meta["id"]
        self.function_name = fn["name"]
        self.function_version = str(fn["version"])
        self.tenant = fn["tenant"]
        self.memory_limit_in_mb = self.memory_mb = fn["memoryMb"]
        self.deadline_ms = meta["deadline"]
        self.logger = _logger

    def get_remaining_time_in_millis(self):
        return max(0, int(self.deadline_ms - time.time() * 1000))

    @property
    def remaining_time_ms(self):
        return self.get_remaining_time_in_millis()


_logger = Logger()
_TEXTUAL = ("text/", "application/json", "application/xml", "application/javascript", "application/x-www-form-urlencoded")


def _textual(ct):
    ct = (ct or "").lower()
    return not ct or ct.startswith(_TEXTUAL) or "+json" in ct or "+xml" in ct


def decode_event(meta, body):
    if not body:
        return None
    ct = meta.get("contentType") or ""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return body
    if "json" in ct.lower() or (not ct and text.lstrip()[:1] in ('{', '[', '"', '-', 't', 'f', 'n') or (not ct and text.lstrip()[:1].isdigit())):
        try:
            return json.loads(text)
        except ValueError:
            if "json" in ct.lower():
                return text
    if _textual(ct):
        return text
    return body


def http_event(meta, body):
    text = None
    if body and _textual(meta["headers"].get("content-type")):
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            text = None
    b64 = bool(body) and text is None
    return {
        "method": meta["method"],
        "path": meta["path"],
        "rawPath": meta["path"],
        "query": meta["query"],
        "rawQueryString": meta["query"],
        "queryStringParameters": dict(urllib.parse.parse_qsl(meta["query"], keep_blank_values=True)),
        "headers": meta["headers"],
        "body": "" if not body else (base64.b64encode(body).decode() if b64 else text),
        "isBase64Encoded": b64,
        "requestContext": {"requestId": meta["id"], "http": {"method": meta["method"], "path": meta["path"]}},
    }


def encode_result(meta, r):
    """bytes → raw, str → UTF-8, None → empty, anything else → JSON; an HTTP proxy dict → the response."""
    if meta["kind"] == "http" and isinstance(r, dict) and isinstance(r.get("statusCode"), int):
        headers = {str(k).lower(): str(v) for k, v in (r.get("headers") or {}).items()}
        b = r.get("body")
        if b is None:
            b = b""
        elif isinstance(b, str):
            b = base64.b64decode(b) if r.get("isBase64Encoded") else b.encode()
        elif isinstance(b, (bytes, bytearray, memoryview)):
            b = bytes(b)
        else:
            b = json.dumps(b).encode()
            headers.setdefault("content-type", "application/json")
        return r["statusCode"], headers, b
    if r is None:
        return 200, {}, b""
    if isinstance(r, (bytes, bytearray, memoryview)):
        return 200, {"content-type": "application/octet-stream"}, bytes(r)
    if isinstance(r, str):
        return 200, {"content-type": "text/plain; charset=utf-8"}, r.encode()
    return 200, {"content-type": "application/json"}, json.dumps(r).encode()


loaded = None
# the instance's log marker prefix from LOAD (protocol.ts log boundaries)
MARKER = ""


def load(msg):
    global loaded, MARKER
    MARKER = msg["logMarker"]
    open_logs()
    try:
        t0 = time.perf_counter()
        os.environ.update(msg["env"])
        code_dir = msg["codeDir"]
        try:
            os.chdir(code_dir)
        except OSError:
            pass
        if code_dir not in sys.path:
            sys.path.insert(0, code_dir)
        h = str(msg["handler"] or "main.handler")
        mod_name, _, fn_name = h.rpartition(".")
        if not mod_name:
            mod_name, fn_name = h, "handler"
        mod = importlib.import_module(mod_name.replace("/", "."))
        target = getattr(mod, fn_name, None)
        if not callable(target):
            raise AttributeError(f"handler {h}: module {mod_name} has no function {fn_name}")
        loaded = {"target": target, "fn": msg["fn"], "cap": msg["responseCapBytes"]}
        out = (READY, {"style": "event", "loadMs": round((time.perf_counter() - t0) * 1000, 3)})
    except BaseException as e:  # noqa: BLE001 — a failed import (even SystemExit) is the function's error
        out = (ERROR, error_meta(None, e))
    close_logs()
    send(*out)


def _marks(kind):
    return (MARKER + kind + "\x1e") if MARKER else ""


def open_logs():
    # BEGIN on both fds right away (after anything a thread printed in between, which stays background):
    # then whatever reaches the pipes during the invocation — print(), os.write(1, ...), a subprocess
    # with inherited stdio — is between BEGIN and END (protocol.ts log boundaries).
    for stream, fd in ((sys.__stdout__, 1), (sys.__stderr__, 2)):
        try:
            stream.flush()
        except (OSError, ValueError, AttributeError):
            pass
        try:
            os.write(fd, _marks("B").encode())
        except OSError:
            pass


def close_logs():
    # END on both real streams after flushing whatever the function's current sys.stdout/err hold, so
    # everything it printed is in the pipes before the result. A function that closed its streams only
    # loses the boundary on that stream (the host stops waiting at EOF): never a reason to crash.
    for current, real in ((sys.stdout, sys.__stdout__), (sys.stderr, sys.__stderr__)):
        try:
            if current is not real:
                current.flush()
        except (OSError, ValueError, AttributeError):
            pass
        try:
            real.write(_marks("E"))
            real.flush()
        except (OSError, ValueError, AttributeError):
            pass


invocations = 0


def invoke(meta, body):
    if loaded is None:
        send(ERROR, {"id": meta["id"], "type": "FunctionError", "message": "no handler loaded", "errorType": "Error"})
        return
    global invocations
    t0 = time.perf_counter()
    # protocol.ts `slept`: sampled, every 8th invocation
    v0 = resource.getrusage(resource.RUSAGE_SELF).ru_nvcsw if invocations % 8 == 0 else -1
    invocations += 1
    open_logs()
    try:
        event = http_event(meta, body) if meta["kind"] == "http" else decode_event(meta, body)
        r = loaded["target"](event, Context(meta, loaded["fn"]))
        if inspect.iscoroutine(r):
            # `async def handler` (not Lambda's shape, but what asyncio users write): run it to completion.
            r = asyncio.run(r)
        status, headers, res = encode_result(meta, r)
        if len(res) > loaded["cap"]:
            out = (ERROR, {"id": meta["id"], "type": "ResponseTooLarge", "sizeBytes": len(res),
                           "message": f"response of {len(res)} bytes exceeds {loaded['cap']}"}, b"")
        else:
            out = (RESULT, {"id": meta["id"], "status": status, "headers": headers}, res)
    except SystemExit:
        # sys.exit() mid-invocation is a crash of the function, reported by the host from the exit status.
        raise
    except BaseException as e:  # noqa: BLE001
        out = (ERROR, error_meta(meta["id"], e), b"")
    close_logs()
    out[1]["ms"] = round((time.perf_counter() - t0) * 1000, 3)
    if v0 >= 0:
        out[1]["slept"] = resource.getrusage(resource.RUSAGE_SELF).ru_nvcsw != v0
    send(*out)


def main():
    send(HELLO, {"runtime": "python", "version": sys.version.split()[0], "pid": os.getpid()})
    while True:
        kind, meta, body = read_frame()
        if kind == INVOKE:
            invoke(meta, body)
        elif kind == LOAD:
            load(meta)


main()
