"""deploy/: the Kubernetes manifests and the Dockerfile, checked offline.

- every YAML file parses; `kubectl kustomize` builds both the base and the
  ClickHouse overlay (no cluster needed);
- a schema check: each object is decoded into the official Kubernetes client's
  model of its kind and encoded back; a misspelt or misplaced field is dropped
  on the way and shows up as a difference. (`kubectl apply --dry-run=client`
  needs API discovery from a live cluster even with --validate=false, so it
  cannot run here; see docs/demo.md.)
- the DaemonSet has what sampling needs, the names that tie the objects
  together agree, and every FLAMEWATCH_* variable is a real setting.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from ground.settings import resolve

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
OVERLAYS = ("kubernetes", "clickhouse")


def _kustomize(name: str) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip(reason="kubectl is not installed (apt-get install kubectl, or use the Kubernetes apt repo)")
    proc = subprocess.run([kubectl, "kustomize", str(DEPLOY / name)], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


@pytest.fixture(scope="module", params=OVERLAYS)
def built(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    return request.param, _kustomize(request.param)


@pytest.fixture(scope="module")
def base() -> list[dict[str, Any]]:
    return _kustomize("kubernetes")


@pytest.fixture(scope="module")
def clickhouse() -> list[dict[str, Any]]:
    return _kustomize("clickhouse")


def one(objs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


# --------------------------------------------------------------------------- parsing and schema

def test_every_yaml_file_parses() -> None:
    files = sorted(DEPLOY.rglob("*.yaml"))
    assert len(files) >= 7, files
    for f in files:
        docs = [d for d in yaml.safe_load_all(f.read_text()) if d]
        assert docs, f"{f} is empty"
        for d in docs:
            assert "kind" in d and ("metadata" in d or d["kind"] == "Kustomization"), f"{f}: {d}"


def _roundtrip_problems(obj: dict[str, Any]) -> list[str]:
    client = pytest.importorskip("kubernetes.client", reason="the schema check uses the kubernetes client "
                                 "(pip install 'kubernetes>=29,<40')")
    api = client.ApiClient()
    model = api._ApiClient__deserialize(obj, "V1" + obj["kind"])  # the generated model of the kind
    back = api.sanitize_for_serialization(model)
    problems: list[str] = []

    def walk(a: Any, b: Any, path: str) -> None:
        if isinstance(a, dict) and isinstance(b, dict):
            for k in a:
                if k not in b:
                    problems.append(f"{path}.{k}: not a field of this object")
                else:
                    walk(a[k], b[k], f"{path}.{k}")
        elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
            for i, (x, y) in enumerate(zip(a, b, strict=True)):
                walk(x, y, f"{path}[{i}]")
        elif a != b:
            problems.append(f"{path}: {a!r} became {b!r}")

    walk(obj, back, f"{obj['kind']}/{obj['metadata'].get('name')}")
    return problems


def test_schema_roundtrip_catches_a_typo() -> None:
    bad = {"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "x"},
           "spec": {"selector": {"matchLabels": {"a": "b"}},
                    "template": {"spec": {"hostPid": True, "containers": [{"name": "c", "image": "i"}]}}}}
    assert _roundtrip_problems(bad) == ["DaemonSet/x.spec.template.spec.hostPid: not a field of this object"]


def test_objects_match_the_kubernetes_schema(built: tuple[str, list[dict[str, Any]]]) -> None:
    name, objs = built
    problems = [p for o in objs for p in _roundtrip_problems(o)]
    assert not problems, f"deploy/{name}: " + "\n".join(problems)
    for o in objs:
        assert o["metadata"].get("namespace", "flamewatch") == "flamewatch" or o["kind"] in (
            "Namespace", "ClusterRole", "ClusterRoleBinding")


# --------------------------------------------------------------------------- the agent DaemonSet

def test_daemonset_has_what_sampling_needs(base: list[dict[str, Any]]) -> None:
    ds = one(base, "DaemonSet", "flamewatch-agent")
    pod = ds["spec"]["template"]["spec"]
    assert pod["hostPID"] is True
    (agent,) = pod["containers"]
    sc = agent["securityContext"]
    caps = set(sc.get("capabilities", {}).get("add", []))
    assert sc.get("privileged") is True or {"PERFMON", "SYS_PTRACE", "SYS_ADMIN"} <= caps, caps
    env = env_of(agent)
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    limits = agent["resources"]["limits"]
    assert {"cpu", "memory"} <= set(limits) and {"cpu", "memory"} <= set(agent["resources"]["requests"])
    assert {"operator": "Exists"} in pod["tolerations"]  # no key: tolerates every taint
    mounts = {m["mountPath"] for m in agent["volumeMounts"]}
    assert "/sys/kernel/debug" in mounts
    host_paths = {v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v}
    assert {"/sys/kernel/debug", "/proc"} <= host_paths
    assert agent["image"].startswith("flamewatch/agent")


def test_agent_pushes_to_the_server_service(base: list[dict[str, Any]]) -> None:
    agent = one(base, "DaemonSet")["spec"]["template"]["spec"]["containers"][0]
    svc = one(base, "Service", "flamewatch-server")
    port = svc["spec"]["ports"][0]["port"]
    ns = svc["metadata"]["namespace"]
    assert env_of(agent)["FLAMEWATCH_SERVER"]["value"] == f"http://flamewatch-server.{ns}.svc:{port}"


def test_rbac_lets_the_agent_read_pods(base: list[dict[str, Any]]) -> None:
    ds = one(base, "DaemonSet")
    sa_name = ds["spec"]["template"]["spec"]["serviceAccountName"]
    sa = one(base, "ServiceAccount", sa_name)
    binding = one(base, "ClusterRoleBinding")
    assert {"kind": "ServiceAccount", "name": sa_name, "namespace": sa["metadata"]["namespace"]} in (
        binding["subjects"])
    role = one(base, "ClusterRole", binding["roleRef"]["name"])
    grants = {(r, v) for rule in role["rules"] for r in rule["resources"] for v in rule["verbs"]}
    assert {("pods", "get"), ("pods", "list"), ("pods", "watch"), ("nodes/proxy", "get")} <= grants
    assert not any(v in ("create", "update", "patch", "delete", "*") for _, v in grants)  # read-only


# --------------------------------------------------------------------------- the server

def test_server_deployment_service_and_volume(base: list[dict[str, Any]]) -> None:
    dep = one(base, "Deployment", "flamewatch-server")
    pod = dep["spec"]["template"]
    (server,) = pod["spec"]["containers"]
    svc = one(base, "Service", "flamewatch-server")
    assert svc["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert dep["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    port_names = {p["name"]: p["containerPort"] for p in server["ports"]}
    assert svc["spec"]["ports"][0]["targetPort"] in port_names
    assert server["readinessProbe"]["httpGet"]["path"] == "/readyz"
    claim = {v["name"]: v for v in pod["spec"]["volumes"]}["data"]["persistentVolumeClaim"]["claimName"]
    one(base, "PersistentVolumeClaim", claim)
    data_mount = {m["name"]: m["mountPath"] for m in server["volumeMounts"]}["data"]
    env = env_of(server)
    assert env["FLAMEWATCH_DATA_DIR"]["value"] == data_mount
    assert int(env["FLAMEWATCH_PORT"]["value"]) == port_names["http"]
    assert dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"]["type"] == "Recreate"  # one SQLite writer


def test_environment_names_are_real_settings(built: tuple[str, list[dict[str, Any]]]) -> None:
    """A misspelt FLAMEWATCH_* variable would be silently ignored; and every value must parse."""
    from aggregator.settings import SETTINGS as SERVER
    from profiler.settings import SETTINGS as AGENT

    _, objs = built
    for kind, table in (("Deployment", SERVER), ("DaemonSet", AGENT)):
        obj = one(objs, kind, "flamewatch-server" if kind == "Deployment" else "flamewatch-agent")
        env = env_of(obj["spec"]["template"]["spec"]["containers"][0])
        known = {s.env: s for s in table}
        ours = {k: e for k, e in env.items() if k.startswith("FLAMEWATCH_")}
        assert ours, kind
        unknown = sorted(set(ours) - set(known))
        assert not unknown, f"{kind} sets unknown settings {unknown}"
        plain = {k: e["value"] for k, e in ours.items() if "value" in e and "$(" not in e["value"]}
        resolve(table, {}, environ=plain)  # raises ValueError naming a bad value


# --------------------------------------------------------------------------- the ClickHouse overlay

def test_clickhouse_overlay_points_the_server_at_clickhouse(clickhouse: list[dict[str, Any]]) -> None:
    from aggregator.settings import SETTINGS as SERVER

    dep = one(clickhouse, "Deployment", "flamewatch-server")
    env = env_of(dep["spec"]["template"]["spec"]["containers"][0])
    storage = env["FLAMEWATCH_STORAGE"]["value"]
    assert resolve(SERVER, {}, environ={"FLAMEWATCH_STORAGE": storage}).storage == storage
    host_port = storage.removeprefix("clickhouse://").split("/")[0]
    ch = one(clickhouse, "Service", "clickhouse")
    assert host_port == f"clickhouse:{ch['spec']['ports'][0]['port']}"
    one(clickhouse, "StatefulSet", "clickhouse")
    assert not [o for o in clickhouse if o["kind"] == "PersistentVolumeClaim"]  # no SQLite volume
    assert dep["spec"]["replicas"] >= 2
    # The rest of the base is still there.
    one(clickhouse, "DaemonSet", "flamewatch-agent")


# --------------------------------------------------------------------------- the Dockerfile

def _stages(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    current = ""
    for line in text.splitlines():
        words = line.split()
        if words[:1] == ["FROM"]:
            current = words[-1] if "AS" in words else words[1]
            out[current] = ""
        elif current:
            out[current] += line + "\n"
    return out


def test_dockerfile_builds_agent_and_server_images() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    stages = _stages(text)
    assert {"build", "base", "agent", "server"} <= set(stages), list(stages)
    agent, server = stages["agent"], stages["server"]
    assert "apt-get install" in agent and "linux-perf" in agent
    assert "py-spy --version" in agent and "perf --version" in agent  # fail the build if either is missing
    assert "bpftrace --version" in agent  # the in-kernel Python unwinder
    assert 'ENTRYPOINT ["flamewatch", "agent"]' in agent
    assert 'ENTRYPOINT ["flamewatch", "serve"]' in server and "USER 10001" in server
    assert "pip wheel" in stages["build"] and "pip install /wheels/*.whl" in stages["base"]


def test_dockerfile_copies_every_package_of_the_distribution(tmp_path: Path) -> None:
    """Replay the build stage's COPY lines into a scratch context and let setuptools find the
    packages there, with the include patterns of pyproject.toml: a package missing from the
    Dockerfile fails here, not in a registry build. (No Docker daemon runs here.)"""
    import tomllib

    from setuptools import find_packages

    build = _stages((DEPLOY / "Dockerfile").read_text())["build"]
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    for line in build.splitlines():
        words = line.split()
        if words[:1] != ["COPY"] or any(w.startswith("--from") for w in words):
            continue
        *sources, _dest = words[1:]
        for src in sources:
            path = REPO / src
            if not path.exists() and src == "README.md":  # written by the lead; metadata only
                (ctx / src).write_text("placeholder\n")
                continue
            assert path.exists(), f"the Dockerfile copies {src}, which is not in the repository"
            if path.is_dir():
                shutil.copytree(path, ctx / src, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy(path, ctx / src)
    include = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"][
        "include"]
    wanted = set(find_packages(str(REPO), include=include))
    copied = set(find_packages(str(ctx), include=include))
    assert {"stacks", "profiler", "aggregator", "viewer", "flamewatch", "flamewatch.demo"} <= wanted
    assert wanted <= copied, f"packages not copied into the image: {sorted(wanted - copied)}"
    assert (ctx / "viewer" / "static").is_dir() and list((ctx / "viewer" / "static").glob("*.js"))
    # The compiled readers: setup.py and every Cython source it builds, and a compiler to build them.
    assert (ctx / "setup.py").is_file()
    pyx = sorted(p.relative_to(REPO) for p in REPO.glob("stacks/*.pyx"))
    assert pyx and all((ctx / p).is_file() for p in pyx)
    assert all(str(p) in (REPO / "setup.py").read_text() for p in pyx)
    assert "gcc" in build
