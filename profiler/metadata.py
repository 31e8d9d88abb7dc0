"""pid -> cgroup -> container -> pod/namespace/container labels.

Three steps, each replaceable in tests:

1. :func:`parse_cgroup` reads the text of ``/proc/<pid>/cgroup`` (v1 or v2,
   cgroupfs or systemd driver; docker, containerd, cri-o, podman) and returns
   a :class:`ContainerRef` (pod UID, container id, runtime).
2. :class:`PodIndex` maps pod UIDs and container ids to pod name, namespace
   and container name, from a Kubernetes ``PodList`` fetched from the kubelet
   ``/pods`` endpoint or the API server (``fieldSelector=spec.nodeName=``).
   It is cached and refreshed, rate limited, when a container is unknown.
3. :class:`MetadataResolver` puts it together per pid, with the off-cluster
   fallback (``POD_NAMESPACE``/``POD_NAME``/``CONTAINER_NAME`` in
   ``/proc/<pid>/environ``) and the process name. Every ``/proc`` read may fail
   because processes exit at any moment; that only loses labels, never raises.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import ssl
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from profiler.procfs import read_file
from stacks.model import Labels

log = logging.getLogger(__name__)

_UID = r"[0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12}"
# "pod<uid>" as a cgroupfs directory or inside a systemd slice name
# (kubepods-burstable-pod<uid_with_underscores>.slice).
_POD_RE = re.compile(r"pod(" + _UID + r")(?:\.slice)?(?:/|$|:)")
# Container id in the last path part, with or without a runtime prefix:
#   cri-containerd-<id>.scope, crio-<id>.scope, docker-<id>.scope, libpod-<id>.scope (systemd driver)
#   <id>                      (cgroupfs driver: /kubepods/besteffort/pod<uid>/<id>, /docker/<id>)
#   ...slice:cri-containerd:<id>  (containerd with the systemd driver on cgroup v1)
_SCOPE_RE = re.compile(
    r"(?:^|/)(?:(docker|cri-containerd|crio|libpod|containerd)-)?([0-9a-f]{64})(?:\.scope)?(?=/|$)"
)
_COLON_RE = re.compile(r":(cri-containerd|crio|docker):([0-9a-f]{64})$")
_RUNTIME = {
    "cri-containerd": "containerd",
    "containerd": "containerd",
    "crio": "cri-o",
    "docker": "docker",
    "libpod": "podman",
}


@dataclass(frozen=True)
class ContainerRef:
    """What a cgroup path says about a process."""

    pod_uid: str = ""
    container_id: str = ""
    runtime: str = ""  # docker | containerd | cri-o | podman | "" when the path does not say

    def __bool__(self) -> bool:
        return bool(self.pod_uid or self.container_id)


def _parse_path(path: str) -> ContainerRef:
    path = path.strip()
    pod = ""
    m = _POD_RE.search(path)
    if m:
        pod = m.group(1).replace("_", "-")
    cid, runtime = "", ""
    m2 = _COLON_RE.search(path)
    if m2 is None:
        # the deepest container-looking part wins (podman nests ".../libpod-<id>.scope/container")
        for m2 in _SCOPE_RE.finditer(path):  # noqa: B007
            pass
    if m2:
        prefix, cid = m2.group(1), m2.group(2)
        runtime = _RUNTIME.get(prefix or "", "")
        if not runtime and path.startswith("/docker/"):
            runtime = "docker"
    return ContainerRef(pod, cid, runtime)


def parse_cgroup(text: str) -> ContainerRef:
    """Pod UID, container id and runtime from the text of ``/proc/<pid>/cgroup``.

    Lines are ``hierarchy:controllers:path``. cgroup v2 has one ``0::path``
    line; v1 has one line per controller, usually with the same path, but some
    controllers may be at the root, so the most informative line wins.
    Returns an empty (falsy) ref for host processes.
    """
    best = ContainerRef()
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        ref = _parse_path(parts[2])
        if ref.container_id and ref.pod_uid:
            return ref
        if (ref.container_id and not best.container_id) or (ref.pod_uid and not best):
            best = ref
    return best


# ---------------------------------------------------------------- pod index


@dataclass(frozen=True)
class PodInfo:
    """Names of one container of one pod."""

    namespace: str
    pod: str
    container: str = ""


def _strip_runtime(container_id: str) -> str:
    # PodList statuses carry "containerd://<id>", "cri-o://<id>", "docker://<id>"
    return container_id.rpartition("://")[2]


class PodIndex:
    """Pod UID and container id -> names, from a PodList, refreshed on misses.

    ``fetch`` returns the decoded PodList JSON (or raises); ``clock`` is a
    monotonic clock. A miss triggers a refresh at most once per
    ``min_interval`` seconds so a burst of short-lived or host containers
    cannot hammer the kubelet.
    """

    def __init__(
        self,
        fetch: Callable[[], Mapping[str, Any]],
        *,
        min_interval: float = 15.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._fetch = fetch
        self._min_interval = min_interval
        self._clock = clock
        self._last: float | None = None
        self._by_container: dict[str, PodInfo] = {}
        self._by_pod: dict[str, PodInfo] = {}
        self._lock = threading.Lock()
        self.refreshes = 0
        self.errors = 0

    def load(self, podlist: Mapping[str, Any]) -> None:
        """Replace the index with the pods of a PodList."""
        by_c: dict[str, PodInfo] = {}
        by_p: dict[str, PodInfo] = {}
        for item in podlist.get("items") or ():
            meta = item.get("metadata") or {}
            ns, name, uid = meta.get("namespace", ""), meta.get("name", ""), meta.get("uid", "")
            if uid:
                by_p[uid] = PodInfo(ns, name)
            status = item.get("status") or {}
            for key in ("containerStatuses", "initContainerStatuses", "ephemeralContainerStatuses"):
                for cs in status.get(key) or ():
                    cid = _strip_runtime(cs.get("containerID") or "")
                    if cid:
                        by_c[cid] = PodInfo(ns, name, cs.get("name", ""))
        self._by_container, self._by_pod = by_c, by_p

    def refresh(self, force: bool = False) -> bool:
        """Fetch the pod list again unless done within ``min_interval``. True if it ran and worked."""
        with self._lock:
            now = self._clock()
            if not force and self._last is not None and now - self._last < self._min_interval:
                return False
            self._last = now
            try:
                podlist = self._fetch()
            except Exception as e:  # network, TLS, JSON: keep the old index
                self.errors += 1
                log.warning("pod list refresh failed: %s", e)
                return False
            self.load(podlist)
            self.refreshes += 1
            return True

    def lookup(self, ref: ContainerRef) -> PodInfo | None:
        """Names for a container ref, refreshing once (rate limited) on a miss."""
        if not ref:
            return None
        hit = self._find(ref)
        if (hit is None or (ref.container_id and not hit.container)) and self.refresh():
            hit = self._find(ref) or hit
        return hit

    def _find(self, ref: ContainerRef) -> PodInfo | None:
        if ref.container_id:
            info = self._by_container.get(ref.container_id)
            if info is not None:
                return info
        if ref.pod_uid:
            return self._by_pod.get(ref.pod_uid)
        return None


def http_podlist_fetcher(
    url: str,
    token_path: str | None = None,
    *,
    ca_path: str | None = None,
    insecure: bool = False,
    timeout: float = 5.0,
) -> Callable[[], Mapping[str, Any]]:
    """A fetch function for :class:`PodIndex`: GET ``url`` with the service-account token.

    The token is re-read on every call because projected tokens rotate.
    """

    ctx: ssl.SSLContext | None = None
    if url.startswith("https:"):
        if insecure:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        else:
            ctx = ssl.create_default_context(cafile=ca_path if ca_path and os.path.exists(ca_path) else None)

    def fetch() -> Mapping[str, Any]:
        headers = {"Accept": "application/json"}
        if token_path and os.path.exists(token_path):
            headers["Authorization"] = "Bearer " + Path(token_path).read_text().strip()
        req = urllib.request.Request(url, headers=headers)
        with urllib.request.urlopen(req, timeout=timeout, context=ctx) as resp:
            return json.loads(resp.read())

    return fetch


def kubelet_pods_url(base: str) -> str:
    return base.rstrip("/") + "/pods"


def apiserver_pods_url(base: str, node: str) -> str:
    q = urllib.parse.urlencode({"fieldSelector": f"spec.nodeName={node}"})
    return base.rstrip("/") + "/api/v1/pods?" + q


def node_name(environ: Mapping[str, str] | None = None, configured: str = "") -> str:
    """The node label: the setting, else ``NODE_NAME`` (downward API), else the hostname."""
    environ = os.environ if environ is None else environ
    return configured or environ.get("NODE_NAME", "") or socket.gethostname()


# ---------------------------------------------------------------- resolver


@dataclass(frozen=True)
class ProcessMeta:
    """Everything the agent labels a process with."""

    process: str
    namespace: str = ""
    pod: str = ""
    container: str = ""
    container_id: str = ""
    runtime: str = ""

    def labels(self, node: str) -> Labels:
        """Series labels; ``service_name`` is namespace/container on Kubernetes, else the process."""
        if self.namespace and (self.container or self.pod):
            service = f"{self.namespace}/{self.container or self.pod}"
        else:
            service = self.container or self.process
        return Labels.of(
            node=node,
            namespace=self.namespace,
            pod=self.pod,
            container=self.container,
            process=self.process,
            service_name=service,
        )


_INTERPRETER = re.compile(r"^(python[\d.]*|pypy[\d.]*|node|ruby[\d.]*|perl[\d.]*)$")


def _script(argv: list[bytes]) -> str:
    """The script or ``-m`` module an interpreter runs, by its base name ('' if none)."""
    args = [a.decode("utf-8", "replace") for a in argv[1:] if a]
    for i, a in enumerate(args):
        if a == "-m" and i + 1 < len(args):
            return args[i + 1]
        if a in ("-c", "-e"):
            return ""
        if not a.startswith("-"):
            return os.path.basename(a)
    return ""


_ENV_KEYS = ("POD_NAMESPACE", "POD_NAME", "CONTAINER_NAME")


def parse_environ(raw: bytes, keys: tuple[str, ...] = _ENV_KEYS) -> dict[str, str]:
    """Selected variables of a NUL-separated ``/proc/<pid>/environ``."""
    out: dict[str, str] = {}
    for item in raw.split(b"\0"):
        k, sep, v = item.partition(b"=")
        if sep:
            key = k.decode("utf-8", "replace")
            if key in keys:
                out[key] = v.decode("utf-8", "replace")
    return out


class MetadataResolver:
    """pid -> :class:`ProcessMeta`, cached per pid for ``ttl`` seconds.

    ``proc_root`` is the procfs root (a fixture directory in tests).
    ``pods`` is optional (None off Kubernetes). Never raises for a vanished pid.
    """

    def __init__(
        self,
        proc_root: str | os.PathLike[str] = "/proc",
        *,
        pods: PodIndex | None = None,
        ttl: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._root = os.fspath(proc_root)
        self.pods = pods
        self.ttl = ttl
        self.clock = clock
        self._cache: dict[int, tuple[float, ProcessMeta]] = {}
        # pids found gone before they were resolved: (time, comm given, meta). Asked again every poll
        # and push while their samples wait, they cost one stat each instead of four failed reads.
        self._gone: dict[int, tuple[float, str, ProcessMeta]] = {}

    def resolve(self, pid: int, comm: str = "") -> ProcessMeta:
        """Metadata of ``pid``; ``comm`` (e.g. from perf) names it if /proc is gone."""
        now = self.clock()
        hit = self._cache.get(pid)
        if hit is not None and now - hit[0] < self.ttl:
            return hit[1]
        gone = self._gone.get(pid)
        base = f"{self._root}/{pid}"
        if gone is not None and now - gone[0] < self.ttl and gone[1] == comm and not os.path.exists(base):
            return gone[2]
        meta = self._resolve(pid, comm)
        if not os.path.exists(base):  # gone: what was read may be partial, and the pid is free
            self._gone[pid] = (now, comm, meta)
            if len(self._gone) > 8192:
                self._gone = {p: e for p, e in self._gone.items() if now - e[0] < self.ttl}
            return meta
        self._gone.pop(pid, None)
        self._cache[pid] = (now, meta)
        if len(self._cache) > 8192:  # pids churn; drop expired entries
            self._cache = {p: e for p, e in self._cache.items() if now - e[0] < self.ttl}
        return meta

    def prime(self, pid: int) -> None:
        """Resolve ``pid`` now unless it is known: a running short job's labels are read while it runs. A
        pid already found gone is left alone (nothing can be read for it; its answer is kept): checking each
        such pid every second was a third of the agent's main thread under a shell loop of short jobs."""
        now = self.clock()
        hit = self._cache.get(pid)
        if hit is not None and now - hit[0] < self.ttl:
            return
        gone = self._gone.get(pid)
        if gone is not None and now - gone[0] < self.ttl:
            return
        self.resolve(pid)

    def process_name(self, pid: int, comm: str = "") -> str:
        """``comm``; for interpreters also the script or module (``python3 app.py``)."""
        base = f"{self._root}/{pid}"
        raw = read_file(f"{base}/comm")
        name = raw.decode("utf-8", "replace").strip() if raw else ""
        name = name or comm or f"pid-{pid}"
        if _INTERPRETER.match(name):
            cmd = read_file(f"{base}/cmdline")
            script = _script(cmd.split(b"\0")) if cmd else ""
            if script:
                return f"{name} {script}"
        return name

    def _resolve(self, pid: int, comm: str) -> ProcessMeta:
        base = f"{self._root}/{pid}"
        process = self.process_name(pid, comm)
        raw = read_file(f"{base}/cgroup")
        ref = parse_cgroup(raw.decode("utf-8", "replace")) if raw else ContainerRef()
        if ref and self.pods is not None:
            info = self.pods.lookup(ref)
            if info is not None:
                return ProcessMeta(process, info.namespace, info.pod, info.container, ref.container_id,
                                   ref.runtime)
        env_raw = read_file(f"{base}/environ")
        env = parse_environ(env_raw) if env_raw else {}
        if env.get("POD_NAMESPACE") or env.get("POD_NAME"):
            return ProcessMeta(process, env.get("POD_NAMESPACE", ""), env.get("POD_NAME", ""),
                               env.get("CONTAINER_NAME", ""), ref.container_id, ref.runtime)
        return ProcessMeta(process, container_id=ref.container_id, runtime=ref.runtime)
