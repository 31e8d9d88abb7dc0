"""The agent's settings table (flags ``--name``, env ``FLAMEWATCH_NAME``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from ground.settings import Setting, Settings, parse_bool

SETTINGS: list[Setting] = [
    Setting("server", "http://127.0.0.1:4040", "aggregator base URL the agent pushes to"),
    Setting("node_name", "", "node label; empty means $NODE_NAME (downward API), else the hostname"),
    Setting("frequency", 99, "perf sampling frequency per CPU, in Hz", int),
    Setting("push_interval", 10.0, "seconds between pushes (samples are merged per series between pushes)",
            float),
    Setting("push_timeout", 10.0, "seconds before one push attempt is abandoned", float),
    Setting("push_token", "", "bearer token sent as 'Authorization: Bearer ...' with every push"),
    Setting("spool_dir", "/var/tmp/flamewatch-agent-spool",
            "directory for unsent pushes (survives aggregator downtime and agent restarts)"),
    Setting("spool_max_bytes", 64 << 20, "bound on unsent data (memory + disk); the oldest is dropped", int),
    Setting("spool_memory_bytes", 4 << 20, "unsent data kept in memory before it spills to spool_dir", int),
    Setting("perf", True, "sample every CPU (kernel + native frames) with the sampler below", parse_bool),
    Setting("sampler", "perf",
            "how every CPU is sampled: perf (perf record -a -g, every sample read by the agent; measured the "
            "cheaper here, docs/agent.md), bpf (stacks counted in the kernel by bpftrace, each distinct stack "
            "read once per report), auto (bpf, and perf when bpftrace is missing or its program does not "
            "load; the log says which)",
            str, ("perf", "bpf", "auto")),
    Setting("bpf_interval", 2, "seconds between the bpf sampler's reports (each distinct stack read once per "
            "report)", int),
    Setting("perf_path", "perf", "perf executable (Debian package linux-perf)"),
    Setting("perf_mmap_pages", 0,
            "perf ring buffer pages per CPU (a power of 2); 0: 64 where perf takes the agent's pings "
            "(--control, perf 5.10+: a ping writes the buffers out, so a large one costs fewer wake-ups), "
            "else 8 (a small one reaches the agent within seconds on its own)", int),
    Setting("perf_reader", "data",
            "how perf's samples are read: data (its binary stream, named by the agent with address caches; no "
            "perf script) or script (perf script text; the fallback taken by itself when the stream is not readable)",
            str, ("data", "script")),
    Setting("pyspy", True, "add Python function names with py-spy to every Python process perf sees", parse_bool),
    Setting("pyspy_path", "py-spy", "py-spy executable (pip install py-spy)"),
    Setting("pyunwind", "auto",
            "name Python frames in the kernel at perf's rate with bpftrace (CPython 3.11-3.13; py-spy names "
            "the rest); auto: when bpftrace runs here, on: fail without it", str, ("auto", "on", "off")),
    Setting("bpftrace_path", "bpftrace", "bpftrace executable (Debian package bpftrace)"),
    Setting("pyunwind_interval", 2, "seconds between the in-kernel unwinder's reports", int),
    Setting("pyunwind_max_depth", 96,
            "Python frames unwound per sample, leaf first; deeper frames show as one '[deeper frames]' root",
            int),
    Setting("pyunwind_restart_seconds", 5.0,
            "least seconds between bpftrace restarts when Python processes come and go (~0.25 CPU s each)",
            float),
    Setting("pyspy_budget", 25.0,
            "node-wide py-spy samples per second (busy or idle, ~0.09 ms of CPU each, a start ~140 samples' "
            "worth), shared over all Python processes in proportion to their perf samples", float),
    Setting("pyspy_duration", 10.0, "seconds of each py-spy refresh run (and of each wall-clock run)", float),
    Setting("pyspy_probe_seconds", 2,
            "seconds of the first py-spy run on a Python process perf sees without a shape (names in the next push)",
            int),
    Setting("pyspy_target_samples", 20,
            "busy py-spy samples wanted per run; quiet processes get higher rates (up to pyspy_max_rate)", int),
    Setting("pyspy_max_rate", 50, "highest py-spy rate (Hz) of one run", int),
    Setting("pyspy_refresh_samples", 2000,
            "perf samples at 99 Hz (scaled with frequency: the same CPU time) a Python process must have since its "
            "last py-spy run before its shape is refreshed",
            int),
    Setting("pyspy_shape_max_age", 300.0,
            "seconds a Python process's py-spy shape names its perf samples before a new first run must "
            "confirm it (0: forever); bounds how long a quiet process shows names of code it no longer runs",
            float),
    Setting("pyspy_gil", True,
            "py-spy shapes keep only the thread holding the GIL (--gil): the Python code perf sees running, "
            "not threads that woke from a wait and queue for a CPU", parse_bool),
    Setting("pyspy_hold_seconds", 90.0,
            "seconds a Python process's perf samples may wait for its first py-spy shape, to be pushed with "
            "Python names and their own times (0: push at once, unnamed)", float),
    Setting("pyspy_max_processes", 8, "at most this many py-spy runs at once", int),
    Setting("wall", False,
            "also push a wall-clock profile (__name__=wall) of every Python process, idle threads included "
            "(py-spy --idle)", parse_bool),
    Setting("wall_rate", 5, "py-spy samples per second per Python process for the wall-clock profile", int),
    Setting("proc_root", "/proc",
            "procfs root (the host's /proc; /host/proc in a container without hostPID)"),
    Setting("kube", "auto", "where pod metadata comes from", str, ("auto", "kubelet", "apiserver", "off")),
    Setting("kubelet_url", "", "kubelet base URL; empty means https://<node_name>:10250"),
    Setting("kube_api_url", "",
            "API server base URL; empty means https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT"),
    Setting("kube_token_path", "/var/run/secrets/kubernetes.io/serviceaccount/token",
            "service-account token file for the kubelet / API server"),
    Setting("kube_ca_path", "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt",
            "CA bundle for the API server"),
    Setting("kubelet_insecure_tls", True,
            "skip kubelet certificate verification (kubelet serving certs are usually self-signed)",
            parse_bool),
    Setting("kube_refresh_interval", 15.0,
            "least seconds between pod list refreshes triggered by unknown containers", float),
    Setting("metrics_port", 9465, "port of the agent's own /metrics (0 picks a free port, -1 disables)", int),
    Setting("metrics_host", "0.0.0.0", "address the /metrics server binds"),
    Setting("log_level", "info", "log level", str, ("debug", "info", "warning", "error")),
    Setting("stats_interval", 60.0, "seconds between self-observation log lines", float),
]


# <typed-settings> generated by scripts/readme_settings.py from SETTINGS above
class AgentSettings(Settings):
    """Typed attributes of SETTINGS (generated by scripts/readme_settings.py; a misspelt name fails type checking)."""

    table: ClassVar[Sequence[Setting]] = SETTINGS
    server: str
    node_name: str
    frequency: int
    push_interval: float
    push_timeout: float
    push_token: str
    spool_dir: str
    spool_max_bytes: int
    spool_memory_bytes: int
    perf: bool
    sampler: str
    bpf_interval: int
    perf_path: str
    perf_mmap_pages: int
    perf_reader: str
    pyspy: bool
    pyspy_path: str
    pyunwind: str
    bpftrace_path: str
    pyunwind_interval: int
    pyunwind_max_depth: int
    pyunwind_restart_seconds: float
    pyspy_budget: float
    pyspy_duration: float
    pyspy_probe_seconds: int
    pyspy_target_samples: int
    pyspy_max_rate: int
    pyspy_refresh_samples: int
    pyspy_shape_max_age: float
    pyspy_gil: bool
    pyspy_hold_seconds: float
    pyspy_max_processes: int
    wall: bool
    wall_rate: int
    proc_root: str
    kube: str
    kubelet_url: str
    kube_api_url: str
    kube_token_path: str
    kube_ca_path: str
    kubelet_insecure_tls: bool
    kube_refresh_interval: float
    metrics_port: int
    metrics_host: str
    log_level: str
    stats_interval: float
# </typed-settings>
