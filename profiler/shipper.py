"""Turn an interval's labelled stacks into a Pyroscope push and deliver it.

:func:`build_push` makes one gzip ``PushRequest`` per interval: one series
per label set (``node``, ``namespace``, ``pod``, ``container``, ``process``,
``service_name``, ``__name__=process_cpu``), each with a cpu/nanoseconds
pprof whose period is ``1e9 / frequency``. Any Pyroscope-compatible server
accepts it.

:class:`Shipper` is the delivery thread: it sends the oldest spooled push,
retrying with exponential backoff and full jitter while the aggregator is
unreachable, and only removes a push from the spool once the server said
2xx. A 4xx other than 401/403/408/429 means the server will never take it:
it is dropped and counted as rejected instead of blocking the queue.
"""

from __future__ import annotations

import gzip
import logging
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Mapping

from profiler.samplers.base import Backoff
from profiler.spool import Entry, Spool
from stacks import _proto
from stacks.model import Labels, Stack
from stacks.pprof import encode_pprof
from stacks.push import PushSeries, RawSample, encode_push_request

log = logging.getLogger(__name__)

PUSH_PATH = "/push.v1.PusherService/Push"
PROFILE_NAME = "process_cpu"
WALL = "wall"
# __name__ -> (sample type, period type): the aggregator derives the Pyroscope profile type
# (process_cpu:cpu:nanoseconds:cpu:nanoseconds, wall:wall:nanoseconds:wall:nanoseconds) from these
PROFILE_TYPES = {PROFILE_NAME: ("cpu", "nanoseconds"), WALL: ("wall", "nanoseconds")}
_RETRYABLE_4XX = {401, 403, 408, 425, 429}


def build_push(
    series: Mapping[Labels, Mapping[Stack, int]],
    *,
    frequency: int,
    start_ns: int,
    duration_ns: int,
    profile: str = PROFILE_NAME,
) -> tuple[bytes, int]:
    """A gzip PushRequest for one interval and the number of samples in it.

    ``profile`` is the series' ``__name__``: ``process_cpu`` (perf + py-spy) or ``wall`` (py-spy --idle);
    both are pprof with values ``count * period`` nanoseconds, period ``1e9 / frequency``.
    """
    sample_type = PROFILE_TYPES[profile]
    period = round(1e9 / frequency)
    out: list[PushSeries] = []
    total = 0
    for labels, stacks in sorted(series.items(), key=lambda kv: kv[0].items_):
        if not stacks:
            continue
        # the stacks are distinct already (dict keys): encoded as they are, not interned into a table first
        counts = {k: int(c) for k, c in stacks.items() if c > 0}
        n = sum(counts.values())
        if n <= 0:
            continue
        total += n
        raw = encode_pprof(counts, period_nanos=period, time_nanos=start_ns, duration_nanos=duration_ns,
                           sample_type=sample_type)
        if sample_type[0] != "cpu":
            raw = _set_period_type(raw, sample_type)
        names = (("__name__", profile), *labels.items_)
        out.append(PushSeries(names, (RawSample(raw, str(uuid.uuid4())),)))
    # level 1: about a third of level 6's CPU for ~8 % more bytes; at a busy 16-CPU node's sample rate level 6 alone
    # was a third of a percent of a core (issue 25), and bytes inside a cluster are cheaper than the agent's CPU
    body = gzip.compress(encode_push_request(out), compresslevel=1)
    return body, total


def _set_period_type(raw: bytes, period_type: tuple[str, str]) -> bytes:
    """``encode_pprof`` always writes period type cpu/nanoseconds; wall profiles need wall/nanoseconds."""
    p = _proto.Profile()
    p.ParseFromString(raw)
    table = list(p.string_table)  # this proto keeps strings as bytes
    for text in (t.encode() for t in period_type):
        if text not in table:
            table.append(text)
            p.string_table.append(text)
    p.period_type.type = table.index(period_type[0].encode())
    p.period_type.unit = table.index(period_type[1].encode())
    return p.SerializeToString()


class Shipper:
    """Delivers spooled pushes to ``server`` in order; counts what happens."""

    def __init__(
        self,
        spool: Spool,
        server: str,
        *,
        token: str = "",
        timeout: float = 10.0,
        backoff: Backoff | None = None,
        post: Callable[[str, bytes, dict[str, str], float], int] | None = None,
        sleep_event: threading.Event | None = None,
    ) -> None:
        self.spool = spool
        self.url = server.rstrip("/") + PUSH_PATH
        self.headers = {"Content-Type": "application/proto", "Content-Encoding": "gzip",
                        "Connect-Protocol-Version": "1",
                        # The aggregator names the series' producer from it (pyroscope_spy=flamewatch-agent).
                        "User-Agent": "flamewatch-agent"}
        if token:
            self.headers["Authorization"] = "Bearer " + token
        self.timeout = timeout
        self.backoff = backoff or Backoff(0.5, 15.0)
        self.post = post or http_post
        self.pushes = 0
        self.failures = 0
        self.rejected_pushes = 0
        self.rejected_samples = 0
        self.samples_pushed = 0
        self.bytes_pushed = 0
        self.last_error = ""
        self.last_success = 0.0
        self._wake = threading.Event()
        self._stop = sleep_event or threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="shipper", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """New data: try now instead of waiting out an idle wait (not a backoff wait)."""
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(self.timeout + 5)

    def send_one(self, entry: Entry) -> bool:
        """One attempt; True when the entry left the queue (delivered or rejected)."""
        try:
            body = entry.body()
        except OSError as e:  # spool file vanished: nothing to send
            log.warning("spool entry %d unreadable (%s); dropping it", entry.seq, e)
            self.spool.pop(entry)
            return True
        try:
            status = self.post(self.url, body, self.headers, self.timeout)
        except Exception as e:  # connection refused, timeout, reset...
            status, self.last_error = 0, f"{type(e).__name__}: {e}"
        if 200 <= status < 300:
            self.spool.pop(entry)
            self.pushes += 1
            self.samples_pushed += entry.samples
            self.bytes_pushed += entry.size
            self.last_success = time.time()
            return True
        self.failures += 1
        if 400 <= status < 500 and status not in _RETRYABLE_4XX:
            self.spool.pop(entry)
            self.rejected_pushes += 1
            self.rejected_samples += entry.samples
            log.error("aggregator rejected a push of %d samples with HTTP %d; dropped it",
                      entry.samples, status)
            return True
        if status:
            self.last_error = f"HTTP {status}"
        return False

    def flush(self, deadline: float) -> bool:
        """Send everything until ``deadline`` (monotonic); True when the spool is empty."""
        while time.monotonic() < deadline:
            e = self.spool.peek()
            if e is None:
                return True
            if not self.send_one(e):
                time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
        return self.spool.peek() is None

    def _loop(self) -> None:
        while not self._stop.is_set():
            e = self.spool.peek()
            if e is None:
                # every put wakes this thread (``wake``), and so does stop: the timeout is only a safety
                # net (waking every second was most of this thread's CPU on a quiet node: issue 25)
                self._wake.wait(30.0)
                self._wake.clear()
                continue
            if self.send_one(e):
                self.backoff.reset()
                continue
            delay = self.backoff.next()
            log.warning("push failed (%s); %d pushes spooled (%d bytes); retrying in %.1f s",
                        self.last_error, len(self.spool), self.spool.bytes, delay)
            self._stop.wait(delay)


def http_post(url: str, body: bytes, headers: dict[str, str], timeout: float) -> int:
    """POST and return the HTTP status (errors with a status are returned, not raised)."""
    req = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            resp.read()
            return resp.status
    except urllib.error.HTTPError as e:
        try:
            detail = e.read(300).decode("utf-8", "replace")
        except OSError:
            detail = ""
        log.debug("push answered HTTP %d: %s", e.code, detail)
        return e.code
