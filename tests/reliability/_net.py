"""Small raw-HTTP helpers for the reliability tests and benches (stdlib only).

``raw_request`` sends the request line exactly as given (no client-side path
normalisation), so traversal attempts reach the server byte for byte.
"""

from __future__ import annotations

import gzip
import http.client
import json
import random
from collections.abc import Iterable, Mapping
from urllib.parse import urlsplit

from stacks import pprof, push
from stacks.model import Frame, Kind, Profile, StackTable

LABEL_KEYS = ("node", "namespace", "pod", "container", "process")


def raw_request(url: str, method: str, target: str, body: bytes | Iterable[bytes] | None = None,
                headers: Mapping[str, str] | None = None, timeout: float = 30) -> tuple[int, bytes]:
    """One request with an untouched target; returns (status, body). Tolerates the server
    closing early (as it does after a 413) by reading whatever response it sent."""
    u = urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    try:
        conn.putrequest(method, target, skip_accept_encoding=True)
        hdrs = dict(headers or {})
        chunked = body is not None and not isinstance(body, bytes | bytearray)
        if isinstance(body, bytes | bytearray):
            hdrs.setdefault("Content-Length", str(len(body)))
        elif chunked:
            hdrs.setdefault("Transfer-Encoding", "chunked")
        for k, v in hdrs.items():
            conn.putheader(k, v)
        conn.endheaders()
        try:
            if isinstance(body, bytes | bytearray):
                view = memoryview(body)
                for i in range(0, len(view), 1 << 20):
                    conn.send(view[i : i + (1 << 20)])
            elif chunked:
                for piece in body:  # type: ignore[union-attr]
                    conn.send(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
                conn.send(b"0\r\n\r\n")
        except (TimeoutError, BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed before taking the whole body
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def error_text(body: bytes) -> str:
    """The ``error`` of a JSON error body, or the text itself."""
    try:
        doc = json.loads(body)
    except ValueError:
        return body.decode("utf-8", "replace")
    return str(doc.get("error", doc)) if isinstance(doc, dict) else str(doc)


def agent_profile(rng: random.Random, n_stacks: int, table: StackTable | None = None) -> Profile:
    """A realistic host profile: ``n_stacks`` distinct stacks 8-40 frames deep, kernel leaves."""
    table = table if table is not None else StackTable()
    mods = [f"mod{i}" for i in range(40)]
    funcs = [f"{m}.fn{j}" for m in mods for j in range(25)]
    kfuncs = ["do_syscall_64", "entry_SYSCALL_64", "vfs_read", "tcp_sendmsg", "schedule", "__x64_sys_futex"]
    pairs: dict[tuple[Frame, ...], int] = {}
    while len(pairs) < n_stacks:
        depth = rng.randint(8, 40)
        stack = [Frame("main", Kind.USER)] + [Frame(rng.choice(funcs), Kind.USER) for _ in range(depth)]
        if rng.random() < 0.3:
            stack += [Frame(k, Kind.KERNEL) for k in rng.sample(kfuncs, 2)]
        pairs[tuple(stack)] = rng.randint(1, 20)
    return Profile.from_pairs(list(pairs.items()), table)


def push_body(profile: Profile, labels: Mapping[str, str], start_ns: int = 0) -> bytes:
    """A gzip PushRequest carrying one gzip pprof of ``profile`` under ``labels``."""
    raw = gzip.compress(pprof.encode_pprof(profile, time_nanos=start_ns, duration_nanos=10_000_000_000), 1)
    series = push.PushSeries(tuple([("__name__", "process_cpu"), *labels.items()]), (push.RawSample(raw),))
    return gzip.compress(push.encode_push_request([series]), 1)
