"""Relay requests a real producer sent to a capture server on to a real ``flamewatch serve``, and
read multipart bodies: the tests then hold exactly the bytes the producer sent beside what
flamewatch stored of them."""

from __future__ import annotations

from collections.abc import Sequence
from email.parser import BytesParser
from email.policy import HTTP

from tests.support.capture import Recorded
from tests.support.server import Server

_KEPT = ("Content-Type", "Content-Encoding", "User-Agent")


def relay(srv: Server, reqs: Sequence[Recorded]) -> list[tuple[int, bytes]]:
    """POST every recorded request (path, query, body, content headers) to ``srv``."""
    out = []
    for r in reqs:
        headers = {k: r.headers[k] for k in _KEPT if k in r.headers}
        path = r.path + (f"?{r.query}" if r.query else "")
        out.append(srv.post(path, r.body, headers=headers))
    return out


def multipart_parts(content_type: str, body: bytes) -> dict[str, bytes]:
    """name -> bytes of a ``multipart/form-data`` body (the standard library's MIME parser)."""
    msg = BytesParser(policy=HTTP).parsebytes(b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body)
    out = {}
    for part in msg.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if name:
            out[str(name)] = part.get_payload(decode=True) or b""
    return out
