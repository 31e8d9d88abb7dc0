"""The metadata resolver on fixture /proc trees and a recorded PodList."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest
from aiohttp import web

from profiler.metadata import (
    ContainerRef,
    MetadataResolver,
    PodIndex,
    apiserver_pods_url,
    http_podlist_fetcher,
    kubelet_pods_url,
    node_name,
    parse_cgroup,
    parse_environ,
)

FIXTURES = Path(__file__).parent / "fixtures"
PODLIST = json.loads((FIXTURES / "podlist.json").read_text())

ADMIN_UID = "5f2a9c1e-3b7d-4e8a-9c61-0d4b2e7f8a13"
ADMIN_CID = "3c8a1f4b9d2e7a6c5b4f3e2d1c0b9a8f7e6d5c4b3a2f1e0d9c8b7a6f5e4d3c2b"
SHIPPER_CID = "8e7d6c5b4a3f2e1d0c9b8a7f6e5d4c3b2a1f0e9d8c7b6a5f4e3d2c1b0a9f8e7d"
INIT_CID = "1d6f0e0b2a8c4d3e9f7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d1e0f9a8b7c6d5e"
MANIP_UID = "a81c3e57-2d9b-4f06-8e1a-6b7c9d0e1f24"
MANIP_CID = "f3e2d1c0b9a8f7e6d5c4b3a2f1e0d9c8b7a6f5e4d3c2b1a0f9e8d7c6b5a4f3e2"
DNS_UID = "c2d4e6f8-0a1b-4c3d-9e5f-7a8b9c0d1e2f"
DNS_CID = "0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a1b0c9d8e7f6a5b4c3d2e1f0a9b"
DOCKER_CID = "4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c"


def u(uid: str) -> str:
    return uid.replace("-", "_")


# Real-world shapes of /proc/<pid>/cgroup, one per runtime/driver/cgroup version.
CGROUPS = {
    # cgroup v2, systemd driver, containerd
    "v2-systemd-containerd": (
        f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u(ADMIN_UID)}.slice/"
        f"cri-containerd-{ADMIN_CID}.scope\n",
        ContainerRef(ADMIN_UID, ADMIN_CID, "containerd"),
    ),
    # cgroup v1, cgroupfs driver, docker (dockershim era): many controllers
    "v1-cgroupfs-docker": (
        f"12:pids:/kubepods/besteffort/pod{MANIP_UID}/{MANIP_CID}\n"
        f"11:hugetlb:/kubepods/besteffort/pod{MANIP_UID}/{MANIP_CID}\n"
        f"10:cpu,cpuacct:/kubepods/besteffort/pod{MANIP_UID}/{MANIP_CID}\n"
        "9:rdma:/\n"
        f"1:name=systemd:/kubepods/besteffort/pod{MANIP_UID}/{MANIP_CID}\n"
        "0::/\n",
        ContainerRef(MANIP_UID, MANIP_CID, ""),
    ),
    # cgroup v2, systemd driver, cri-o
    "v2-systemd-crio": (
        f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u(DNS_UID)}.slice/crio-{DNS_CID}.scope\n",
        ContainerRef(DNS_UID, DNS_CID, "cri-o"),
    ),
    # cgroup v1, systemd driver, containerd (the colon form containerd writes)
    "v1-systemd-containerd-colon": (
        f"11:memory:/system.slice/containerd.service/kubepods-burstable-pod{u(ADMIN_UID)}.slice"
        f":cri-containerd:{SHIPPER_CID}\n"
        "2:cpuset:/\n",
        ContainerRef(ADMIN_UID, SHIPPER_CID, "containerd"),
    ),
    # cgroup v2, cgroupfs driver, containerd, guaranteed QoS has no qos level dir
    "v2-cgroupfs-containerd": (
        f"0::/kubepods/pod{ADMIN_UID}/{INIT_CID}\n",
        ContainerRef(ADMIN_UID, INIT_CID, ""),
    ),
    # cgroup v1, systemd driver, cri-o, besteffort
    "v1-systemd-crio": (
        f"4:memory:/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{u(DNS_UID)}.slice/"
        f"crio-{DNS_CID}.scope\n"
        f"1:name=systemd:/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{u(DNS_UID)}.slice/"
        f"crio-{DNS_CID}.scope\n",
        ContainerRef(DNS_UID, DNS_CID, "cri-o"),
    ),
    # conmon (cri-o's monitor) lives in the pod slice but is not a container
    "v2-crio-conmon": (
        f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u(DNS_UID)}.slice/"
        f"crio-conmon-{DNS_CID}.scope\n",
        ContainerRef(DNS_UID, "", ""),
    ),
    # plain docker, cgroupfs driver, v1
    "v1-docker": (
        f"13:pids:/docker/{DOCKER_CID}\n5:memory:/docker/{DOCKER_CID}\n1:name=systemd:/docker/{DOCKER_CID}\n",
        ContainerRef("", DOCKER_CID, "docker"),
    ),
    # plain docker, systemd driver, v2
    "v2-systemd-docker": (
        f"0::/system.slice/docker-{DOCKER_CID}.scope\n", ContainerRef("", DOCKER_CID, "docker")),
    # podman
    "v2-podman": (
        f"0::/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{DOCKER_CID}.scope/container\n",
        ContainerRef("", DOCKER_CID, "podman"),
    ),
    # host processes
    "v2-host-service": ("0::/system.slice/sshd.service\n", ContainerRef()),
    "v1-host": (
        "12:pids:/user.slice/user-0.slice/session-3.scope\n1:name=systemd:/init.scope\n", ContainerRef()),
    "v2-root-namespaced": ("0::/\n", ContainerRef()),
}


@pytest.mark.parametrize("name", sorted(CGROUPS))
def test_parse_cgroup_real_world_lines(name: str) -> None:
    text, want = CGROUPS[name]
    assert parse_cgroup(text) == want


def test_parse_cgroup_ignores_garbage() -> None:
    assert parse_cgroup("not a cgroup file\n\n::\n") == ContainerRef()
    assert not parse_cgroup("")


def make_proc(
    root: Path, pid: int, *, comm: str, cgroup: str | None, environ: dict[str, str] | None = None,
    cmdline: tuple[str, ...] = (),
) -> None:
    d = root / str(pid)
    d.mkdir(parents=True)
    (d / "comm").write_text(comm + "\n")
    if cgroup is not None:
        (d / "cgroup").write_text(cgroup)
    env = {"PATH": "/usr/bin", "HOME": "/root", **(environ or {})}
    (d / "environ").write_bytes(b"\0".join(f"{k}={v}".encode() for k, v in env.items()) + b"\0")
    (d / "cmdline").write_bytes(b"".join(a.encode() + b"\0" for a in cmdline))


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def proc_tree(tmp_path: Path) -> Path:
    root = tmp_path / "proc"
    make_proc(root, 100, comm="python3", cgroup=CGROUPS["v2-systemd-containerd"][0],
              cmdline=("python3", "-u", "/app/admin/server.py", "--port", "8080"))
    make_proc(root, 700, comm="python3.11", cgroup=None,
              cmdline=("python3.11", "-m", "flamewatch.cli", "agent"))
    make_proc(root, 701, comm="python3", cgroup=None, cmdline=("python3", "-c", "print(1)"))
    make_proc(root, 101, comm="fluent-bit", cgroup=CGROUPS["v1-systemd-containerd-colon"][0])
    make_proc(root, 200, comm="node", cgroup=CGROUPS["v1-cgroupfs-docker"][0])
    make_proc(root, 300, comm="coredns", cgroup=CGROUPS["v1-systemd-crio"][0])
    make_proc(root, 400, comm="sshd", cgroup=CGROUPS["v2-host-service"][0])
    make_proc(root, 500, comm="java", cgroup=CGROUPS["v1-docker"][0],
              environ={"POD_NAMESPACE": "shop", "POD_NAME": "cart-0", "CONTAINER_NAME": "cart"})
    make_proc(root, 600, comm="worker", cgroup=None)  # cgroup unreadable
    return root


def test_resolver_with_podlist(proc_tree: Path) -> None:
    clock = FakeClock()
    pods = PodIndex(lambda: PODLIST, clock=clock)
    r = MetadataResolver(proc_tree, pods=pods, clock=clock)
    m = r.resolve(100)
    assert (m.namespace, m.pod, m.container, m.process) == (
        "default", "admin-service-7f9c6d5b8-x2k4q", "admin-service", "python3 server.py")
    assert m.runtime == "containerd" and m.container_id == ADMIN_CID
    assert r.resolve(101).container == "log-shipper"
    manip = r.resolve(200)
    assert (manip.pod, manip.container) == ("manipulation-service-6c8d9f7b4-p9zlm", "manipulation")
    assert (r.resolve(300).namespace, r.resolve(300).container) == ("kube-system", "coredns")
    host = r.resolve(400)
    assert (host.namespace, host.pod, host.container, host.process) == ("", "", "", "sshd")
    labels = r.resolve(100).labels("worker-1")
    assert dict(labels) == {
        "node": "worker-1", "namespace": "default", "pod": "admin-service-7f9c6d5b8-x2k4q",
        "container": "admin-service", "process": "python3 server.py", "service_name": "default/admin-service",
    }
    assert dict(host.labels("worker-1")) == {"node": "worker-1", "process": "sshd", "service_name": "sshd"}


def test_environ_fallback_off_kubernetes(proc_tree: Path) -> None:
    r = MetadataResolver(proc_tree, pods=None)
    m = r.resolve(500)
    assert (m.namespace, m.pod, m.container, m.runtime) == ("shop", "cart-0", "cart", "docker")
    # a container process without pod variables: container id only, named by its process
    assert r.resolve(100).namespace == "" and r.resolve(100).process == "python3 server.py"
    assert r.resolve(700).process == "python3.11 flamewatch.cli"
    assert r.resolve(701).process == "python3"


def test_vanished_and_unreadable_processes(proc_tree: Path) -> None:
    r = MetadataResolver(proc_tree, pods=PodIndex(lambda: PODLIST))
    assert r.resolve(600).process == "worker"
    gone = r.resolve(99999, comm="shortlived")
    assert gone.process == "shortlived" and gone.namespace == ""
    assert r.resolve(99998).process == "pid-99998"


def test_a_gone_pid_is_read_once_and_a_reused_pid_is_read_again(proc_tree: Path, monkeypatch) -> None:
    """A short job gone before its first resolve is asked again every poll and push: one stat then,
    not four failed reads; the same pid started again (a new process) is resolved afresh."""
    import profiler.metadata as md

    clock = FakeClock()
    r = MetadataResolver(proc_tree, pods=None, clock=clock)
    reads: list[str] = []
    real = md.read_file
    monkeypatch.setattr(md, "read_file", lambda path: reads.append(path) or real(path))
    assert r.resolve(4242, comm="gzip").process == "gzip"
    first = len(reads)
    assert first >= 3
    assert r.resolve(4242, comm="gzip").process == "gzip" and len(reads) == first
    assert r.resolve(4242, comm="sh").process == "sh"  # another comm from perf: not the cached answer
    make_proc(proc_tree, 4242, comm="java", cgroup=CGROUPS["v1-docker"][0],
              environ={"POD_NAMESPACE": "shop", "POD_NAME": "cart-1", "CONTAINER_NAME": "cart"})
    m = r.resolve(4242, comm="gzip")
    assert (m.process, m.pod) == ("java", "cart-1")
    clock.t += 61  # the gone entry expires like the cache
    assert r.resolve(4242).pod == "cart-1"
    # priming (the agent's 1 s poll) reads a new pid once, and leaves a known or gone one without a stat
    stats: list[str] = []
    monkeypatch.setattr(md.os.path, "exists", lambda path: stats.append(path) or os.path.lexists(path))
    reads.clear()
    r.prime(4343)  # gone before it was ever read
    assert reads and len(stats) == 1
    reads.clear()
    stats.clear()
    for _ in range(3):
        r.prime(4343)
        r.prime(4242)
    assert reads == [] and stats == []
    assert r.resolve(4343, comm="").process == "pid-4343"  # the push still asks (a reused pid is read again)


def test_pod_index_refreshes_on_miss_rate_limited(proc_tree: Path) -> None:
    clock = FakeClock()
    calls = []
    first = {"items": [i for i in PODLIST["items"] if i["metadata"]["namespace"] != "kube-system"]}

    def fetch():
        calls.append(clock.t)
        return first if len(calls) == 1 else PODLIST

    pods = PodIndex(fetch, min_interval=15, clock=clock)
    r = MetadataResolver(proc_tree, pods=pods, clock=clock, ttl=0)
    assert r.resolve(100).container == "admin-service"  # first lookup loads the index
    assert r.resolve(300).namespace == ""  # coredns is not in the first list; refresh is rate limited
    assert len(calls) == 1
    clock.t += 16
    assert r.resolve(300).container == "coredns"  # miss after the interval refreshes
    assert len(calls) == 2
    assert r.resolve(100).container == "admin-service"  # hits do not refresh
    clock.t += 100
    assert r.resolve(100).pod and len(calls) == 2


def test_pod_index_keeps_old_index_when_fetch_fails() -> None:
    clock = FakeClock()
    state = {"fail": False}

    def fetch():
        if state["fail"]:
            raise OSError("connection refused")
        return PODLIST

    pods = PodIndex(fetch, min_interval=1, clock=clock)
    assert pods.refresh(force=True)
    state["fail"] = True
    clock.t += 5
    assert not pods.refresh()
    assert pods.errors == 1
    assert pods.lookup(ContainerRef(DNS_UID, DNS_CID)).pod == "coredns-5d78c9869d-4hjtr"


def test_parse_environ_and_node_name() -> None:
    raw = b"A=1\0POD_NAME=web-1\0POD_NAMESPACE=prod\0BROKEN\0CONTAINER_NAME=web\0"
    assert parse_environ(raw) == {"POD_NAME": "web-1", "POD_NAMESPACE": "prod", "CONTAINER_NAME": "web"}
    assert node_name({"NODE_NAME": "worker-7"}) == "worker-7"
    assert node_name({"NODE_NAME": "worker-7"}, configured="set") == "set"
    assert node_name({}) != ""


async def test_kubelet_and_apiserver_over_http(tmp_path: Path, proc_tree: Path) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret-token\n")
    seen: list[tuple[str, str, str]] = []

    async def kubelet_pods(request: web.Request) -> web.Response:
        seen.append(("kubelet", request.headers.get("Authorization", ""), request.query_string))
        if request.headers.get("Authorization") != "Bearer s3cret-token":
            return web.json_response({"kind": "Status", "code": 401}, status=401)
        return web.json_response(PODLIST)

    async def api_pods(request: web.Request) -> web.Response:
        seen.append(("api", request.headers.get("Authorization", ""), request.query.get("fieldSelector", "")))
        node = request.query.get("fieldSelector", "").removeprefix("spec.nodeName=")
        items = [i for i in PODLIST["items"] if i["spec"]["nodeName"] == node]
        return web.json_response({"kind": "PodList", "items": items})

    app = web.Application()
    app.router.add_get("/pods", kubelet_pods)
    app.router.add_get("/api/v1/pods", api_pods)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    base = f"http://127.0.0.1:{port}"
    try:
        kubelet = PodIndex(http_podlist_fetcher(kubelet_pods_url(base), str(token)))
        r = MetadataResolver(proc_tree, pods=kubelet)
        m = await asyncio.to_thread(r.resolve, 200)
        assert (m.namespace, m.container) == ("default", "manipulation")

        api = PodIndex(http_podlist_fetcher(apiserver_pods_url(base, "worker-1"), str(token)))
        m2 = await asyncio.to_thread(MetadataResolver(proc_tree, pods=api).resolve, 300)
        assert (m2.namespace, m2.pod) == ("kube-system", "coredns-5d78c9869d-4hjtr")

        elsewhere = PodIndex(http_podlist_fetcher(apiserver_pods_url(base, "worker-2"), str(token)))
        m3 = await asyncio.to_thread(MetadataResolver(proc_tree, pods=elsewhere).resolve, 300)
        assert m3.namespace == ""

        unauth = PodIndex(http_podlist_fetcher(kubelet_pods_url(base), str(tmp_path / "missing")))
        m4 = await asyncio.to_thread(MetadataResolver(proc_tree, pods=unauth).resolve, 100)
        assert m4.namespace == "" and unauth.errors == 1
    finally:
        await runner.cleanup()
    assert ("kubelet", "Bearer s3cret-token", "") in seen
    assert ("api", "Bearer s3cret-token", "spec.nodeName=worker-1") in seen
