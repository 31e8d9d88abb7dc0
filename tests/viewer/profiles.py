"""Realistic folded profiles for the viewer's browser tests, screenshot and benchmark.

The shape follows the demo story: in namespace ``default`` the
``admin-service`` spends its time in ``createSampleImages`` calling
``manipulation-service``; ``kube-system`` runs coredns. Kernel frames carry
the ``_[k]`` suffix. Everything is deterministic (seeded), so tests can name
exact frames and counts.
"""

from __future__ import annotations

import json
import random
import urllib.parse
import urllib.request
from collections.abc import Iterable

HOSTILE = "<img src=x onerror=alert(1)>"
GROWN = "admin.images:createSampleImages"

# (labels, [(stack, count)]) per series; counts are per 30 s window.
_ADMIN = [
    ("python;gunicorn.arbiter:run;gunicorn.workers.sync:handle;flask.app:wsgi_app;"
     "admin.views:admin_page;admin.images:createSampleImages;requests.api:post;"
     "urllib3.connectionpool:urlopen;socket:recv_into;__x64_sys_recvfrom_[k];tcp_recvmsg_[k]", 40),
    ("python;gunicorn.arbiter:run;gunicorn.workers.sync:handle;flask.app:wsgi_app;"
     "admin.views:admin_page;admin.images:createSampleImages;admin.images:encode_png;zlib:compress", 25),
    ("python;gunicorn.arbiter:run;gunicorn.workers.sync:handle;flask.app:wsgi_app;"
     "admin.views:admin_page;jinja2.environment:render;jinja2.runtime:call", 30),
    ("python;gunicorn.arbiter:run;gunicorn.workers.sync:handle;flask.app:wsgi_app;"
     "admin.views:list_users;sqlalchemy.orm.query:all;psycopg2:execute;"
     "__x64_sys_sendto_[k];tcp_sendmsg_[k]", 18),
    ("python;gunicorn.arbiter:run;select:select;__x64_sys_select_[k];do_select_[k]", 12),
]
_MANIP = [
    ("python;flask.app:wsgi_app;manipulation.api:resize;PIL.Image:resize;ImagingResampleHorizontal", 70),
    ("python;flask.app:wsgi_app;manipulation.api:resize;PIL.Image:open;PIL.PngImagePlugin:load;"
     "zlib:decompress", 35),
    ("python;flask.app:wsgi_app;manipulation.api:watermark;PIL.ImageDraw:text;FT_Load_Glyph", 22),
    ("python;flask.app:wsgi_app;werkzeug.serving:handle;socket:sendall;__x64_sys_sendto_[k];"
     "tcp_sendmsg_[k];ip_output_[k]", 9),
]
_COREDNS = [
    ("coredns;runtime.main;main.main;github.com/coredns/caddy.(*Instance).Start;"
     "plugin/cache.(*Cache).ServeDNS;plugin/forward.(*Forward).ServeDNS;net.(*conn).Read;"
     "entry_SYSCALL_64_[k];__x64_sys_read_[k]", 14),
    ("coredns;runtime.main;runtime.gcBgMarkWorker;runtime.gcDrain;runtime.scanobject", 8),
    ("coredns;runtime.mstart;runtime.schedule;runtime.netpoll;entry_SYSCALL_64_[k];"
     "__x64_sys_epoll_wait_[k];do_epoll_wait_[k]", 11),
]


def _labels(node: str, ns: str, pod: str, container: str, process: str, service: str) -> dict[str, str]:
    return {"node": node, "namespace": ns, "pod": pod, "container": container,
            "process": process, "service_name": service}


SERIES = [
    (_labels("node-a", "default", "admin-service-7f9c", "admin", "python", "admin-service"), _ADMIN),
    (_labels("node-b", "default", "admin-service-5d2e", "admin", "python", "admin-service"), _ADMIN),
    (_labels("node-a", "default", "manipulation-service-86b1", "manip", "python", "manipulation-service"),
     _MANIP),
    (_labels("node-b", "kube-system", "coredns-6d4b", "coredns", "coredns", "coredns"), _COREDNS),
]


def app_name(labels: dict[str, str], app: str = "flamewatch.cpu") -> str:
    """``app{k=v,...}`` as /ingest's ``name`` parameter."""
    return app + "{" + ",".join(f"{k}={v}" for k, v in sorted(labels.items())) + "}"


def window_folded(stacks: list[tuple[str, int]], rng: random.Random, grow: float = 1.0,
                  extra: Iterable[tuple[str, int]] = ()) -> str:
    """One window's folded text: counts jittered ±20%, frames under GROWN scaled by ``grow``."""
    lines = []
    for stack, count in [*stacks, *extra]:
        c = count * rng.uniform(0.8, 1.2)
        if GROWN in stack:
            c *= grow
        lines.append(f"{stack} {max(1, round(c))}")
    return "\n".join(lines) + "\n"


def post(url: str, path: str, params: dict[str, str], body: bytes) -> dict:
    """POST to the server; returns the JSON reply (raises on HTTP errors with the server's message)."""
    req = urllib.request.Request(url + path + "?" + urllib.parse.urlencode(params), data=body, method="POST")
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read() or b"{}")


def ingest_story(url: str, base_start: int, compare_start: int, windows: int = 4, window: int = 30,
                 grow: float = 4.0, hostile: bool = False, seed: int = 7) -> None:
    """Ingest SERIES into ``windows`` windows from each start; GROWN is ``grow`` x bigger in compare."""
    rng = random.Random(seed)
    for start, factor in ((base_start, 1.0), (compare_start, grow)):
        for w in range(windows):
            t = start + w * window
            for labels, stacks in SERIES:
                extra = []
                if hostile and labels["namespace"] == "default" and labels["container"] == "admin":
                    extra = [(f"python;flask.app:wsgi_app;{HOSTILE}", 30)]
                text = window_folded(stacks, rng, factor, extra)
                post(url, "/ingest", {"name": app_name(labels), "from": str(t), "until": str(t + 10),
                                      "format": "folded"}, text.encode())


def big_profile(n_stacks: int = 20000, seed: int = 1) -> str:
    """Folded text of ``n_stacks`` distinct stacks shaped like a large service (for the benchmark)."""
    rng = random.Random(seed)
    modules = [f"svc.{m}" for m in ("api", "db", "cache", "auth", "render", "queue", "search", "billing")]
    funcs = [f"{verb}_{noun}" for verb in ("get", "load", "parse", "check", "build", "send", "hash", "merge")
             for noun in ("user", "order", "item", "page", "token", "row", "blob", "event")]
    kernel = ["entry_SYSCALL_64_[k]", "__x64_sys_read_[k]", "vfs_read_[k]", "tcp_recvmsg_[k]"]
    seen: set[str] = set()
    lines = []
    while len(lines) < n_stacks:
        depth = rng.randint(4, 22)
        frames = ["python", "runtime.main", f"{rng.choice(modules)}:serve"]
        for _ in range(depth):
            frames.append(f"{rng.choice(modules)}:{rng.choice(funcs)}")
        if rng.random() < 0.25:
            frames += kernel[: rng.randint(1, 4)]
        stack = ";".join(frames)
        if stack in seen:
            continue
        seen.add(stack)
        lines.append(f"{stack} {rng.randint(1, 40)}")
    return "\n".join(lines) + "\n"


# -- memory (issue 13): a Go-heap-like pprof with alloc_objects/count and alloc_space/bytes --------

MIB = 1024 * 1024
# (stack root-first, objects, bytes) in one profile; "PIL.Image:open" totals exactly 1.50 MiB.
MEMORY = [
    ("python;admin.views:admin_page;admin.images:createSampleImages;PIL.Image:open", 3, 1 * MIB),
    ("python;admin.views:admin_page;admin.images:createSampleImages;PIL.Image:open;zlib:decompress",
     2, MIB // 2),
    ("python;admin.views:admin_page;jinja2.environment:render", 40, 256 * 1024),
    ("python;admin.views:list_users;sqlalchemy.orm.query:all", 1000, 3 * MIB),
]
MEMORY_NAME = "PIL.Image:open"
MEMORY_BYTES = 1.5 * MIB  # PIL.Image:open's total in one profile


def memory_pprof(stacks: list[tuple[str, int, int]] = MEMORY, scale: int = 1) -> bytes:
    """A pprof as Go's heap profile writes its alloc columns: sample types alloc_objects/count and
    alloc_space/bytes, period type space/bytes (period 512 KiB). ``scale`` multiplies the values."""
    from stacks import _proto

    strings: dict[str, int] = {"": 0}

    def sx(text: str) -> int:
        return strings.setdefault(text, len(strings))

    p = _proto.Profile()
    p.sample_type.add(type=sx("alloc_objects"), unit=sx("count"))
    p.sample_type.add(type=sx("alloc_space"), unit=sx("bytes"))
    p.period_type.type = sx("space")
    p.period_type.unit = sx("bytes")
    p.period = 512 * 1024
    locs: dict[str, int] = {}
    for stack, objects, size in stacks:
        ids = []
        for name in stack.split(";"):
            if name not in locs:
                locs[name] = len(locs) + 1
                p.function.add(id=locs[name], name=sx(name), system_name=sx(name))
                p.location.add(id=locs[name]).line.add(function_id=locs[name])
            ids.append(locs[name])
        p.sample.add(location_id=list(reversed(ids)), value=[objects * scale, size * scale])
    p.string_table.extend(t.encode("utf-8") for t in strings)
    return p.SerializeToString()


def ingest_memory(url: str, start: int, labels: dict[str, str], scale: int = 1) -> dict:
    """One memory pprof through ``/ingest?format=pprof`` under ``__name__`` = memory."""
    return post(url, "/ingest", {"name": app_name(labels, "memory"), "from": str(start),
                                 "until": str(start + 10), "format": "pprof"}, memory_pprof(scale=scale))
