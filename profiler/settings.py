"""The agent's settings table (flags ``--name``, env ``FLAMEWATCH_NAME``)."""

from __future__ import annotations

from flamewatch.settings import Setting, parse_bool

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
    Setting("perf", True, "sample every CPU with perf record -a -g (kernel + native frames)", parse_bool),
    Setting("perf_path", "perf", "perf executable (Debian package linux-perf)"),
    Setting("perf_mmap_pages", 8,
            "perf ring buffer pages per CPU; small means samples reach the agent within ~2 s", int),
    Setting("pyspy", True, "add Python frames with py-spy for busy Python processes", parse_bool),
    Setting("pyspy_path", "py-spy", "py-spy executable (pip install py-spy)"),
    Setting("pyspy_rate", 10,
            "py-spy samples per second per profiled Python process (only the shape; perf gives the counts)", int),
    Setting("pyspy_duration", 60.0,
            "seconds of each py-spy run after a process's first (one push interval); longer runs pay "
            "py-spy's start-up less often but name Python time from an older profile", float),
    Setting("pyspy_threshold", 20.0,
            "a Python process is profiled with py-spy when it used more than this percentage of one core "
            "in two push intervals in a row", float),
    Setting("pyspy_max_processes", 2, "at most this many Python processes are profiled with py-spy at once",
            int),
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
