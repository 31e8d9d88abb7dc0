#!/usr/bin/env bash
# Set up flamewatch on a fresh Debian machine: system packages (perf, chromium,
# clickhouse-server, bpftrace) and a virtualenv at .venv with the package and its
# test extras. Safe to run again. Set FLAMEWATCH_SKIP_APT=1 to skip apt.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '[setup] %s\n' "$*" >&2; }

apt_done=0
if [ "${FLAMEWATCH_SKIP_APT:-0}" != 1 ] && command -v apt-get >/dev/null; then
  SUDO=""
  [ "$(id -u)" = 0 ] || SUDO="sudo"
  pkgs=(linux-perf chromium clickhouse-server clickhouse-client bpftrace gcc)
  command -v kubectl >/dev/null || pkgs+=(kubernetes-client)
  missing=()
  for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing Debian packages: ${missing[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    log "Debian packages already installed"
  fi
  apt_done=1
fi

# speedscope (npm) validates and loads our speedscope exports in the tests.
if command -v npm >/dev/null && ! command -v speedscope >/dev/null; then
  log "installing speedscope from npm (export conformance tests)"
  npm install -g --silent speedscope@1.25.0 >/dev/null 2>&1 || log "speedscope install failed; its tests will skip"
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  log "creating virtualenv .venv"
  "$PY" -m venv .venv
fi
log "installing flamewatch and its test extras into .venv"
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e '.[test,clickhouse]'
# @pyroscope/nodejs for tests/aggregator/test_real_profiles.py (issue 13): a real Node SDK
# producing wall, CPU-time and heap pprofs. Where it cannot install, the test skips with npm's error
# (and fails on a machine this script prepared: see tests/conftest.py).
NODE_DEPS="${FLAMEWATCH_NODE_DEPS:-$HOME/.cache/flamewatch/pyroscope-nodejs}"
if command -v npm >/dev/null && [ ! -d "$NODE_DEPS/node_modules/@pyroscope/nodejs" ]; then
  log "installing @pyroscope/nodejs into $NODE_DEPS"
  mkdir -p "$NODE_DEPS"
  [ -f "$NODE_DEPS/package.json" ] || echo '{"name": "fw-node-app", "version": "1.0.0", "private": true}' > "$NODE_DEPS/package.json"
  (cd "$NODE_DEPS" && npm install --no-audit --no-fund "@pyroscope/nodejs@0.6" >/dev/null 2>&1) \
    || log "npm install @pyroscope/nodejs failed; tests/aggregator/test_real_profiles.py will skip its Node test"
fi
# Pyroscope read-API clients (issue 26, tests/aggregator/test_pyroscope_clients.py): the Perses
# Pyroscope plugin's client under Node (its CommonJS build needs @perses-dev/core, date-fns and react
# of its peer dependencies; the UI peers are not installed), and the Go modules of the Go program
# that uses Pyroscope's own generated Connect client, fetched now so the test does not pay for it.
PERSES_DEPS="${FLAMEWATCH_PERSES_DEPS:-$HOME/.cache/flamewatch/perses-pyroscope}"
if command -v npm >/dev/null && [ ! -d "$PERSES_DEPS/node_modules/@perses-dev/pyroscope-plugin" ]; then
  log "installing @perses-dev/pyroscope-plugin into $PERSES_DEPS"
  mkdir -p "$PERSES_DEPS"
  [ -f "$PERSES_DEPS/package.json" ] || echo '{"name": "fw-perses-client", "version": "1.0.0", "private": true}' > "$PERSES_DEPS/package.json"
  (cd "$PERSES_DEPS" && npm install --no-audit --no-fund --legacy-peer-deps "@perses-dev/pyroscope-plugin@0.4.0" \
      "@perses-dev/core@0.52" "date-fns@4" "react@18" >/dev/null 2>&1) \
    || log "npm install @perses-dev/pyroscope-plugin failed; its test will skip"
fi
GO=$(command -v go || { [ -x /usr/local/go/bin/go ] && echo /usr/local/go/bin/go; } || true)
if [ -n "$GO" ]; then
  log "fetching the Go modules of tests/grafana/goclient"
  (cd tests/grafana/goclient && "$GO" mod download >/dev/null 2>&1 && "$GO" build -o /dev/null . >/dev/null 2>&1) \
    || log "go mod download failed; the Go client test will skip"
fi
# Producers of issue 27 (tests/producers/): each from its own package manager, into ~/.cache/flamewatch.
FW_CACHE="${FLAMEWATCH_CACHE:-$HOME/.cache/flamewatch}"
mkdir -p "$FW_CACHE"
# pyroscope-java (Maven Central): the real Java agent pushing JFR.
PYROSCOPE_JAVA_VERSION=2.1.2
if command -v mvn >/dev/null && [ ! -f "$FW_CACHE/pyroscope-java/agent-$PYROSCOPE_JAVA_VERSION.jar" ]; then
  log "fetching io.pyroscope:agent:$PYROSCOPE_JAVA_VERSION from Maven Central"
  mvn -q -B dependency:copy -Dartifact="io.pyroscope:agent:$PYROSCOPE_JAVA_VERSION" \
      -DoutputDirectory="$FW_CACHE/pyroscope-java" >/dev/null 2>&1 \
    || log "mvn could not fetch io.pyroscope:agent; tests/producers/test_java_agent.py will skip"
fi
# pyroscope-go (Go module proxy): the Go app of tests/producers/go_app, built once.
if [ -n "$GO" ] && [ ! -x "$FW_CACHE/pyroscope-go-app" ]; then
  log "building tests/producers/go_app with github.com/grafana/pyroscope-go"
  (cd tests/producers/go_app && "$GO" build -o "$FW_CACHE/pyroscope-go-app" .) >/dev/null 2>&1 \
    || log "go build of tests/producers/go_app failed; tests/producers/test_go_sdk.py will skip"
fi
# The OpenTelemetry eBPF profiler (go.opentelemetry.io/ebpf-profiler through the Go module proxy, an
# exact version: the proxy lists none, so tests/producers/ebpf_profiler/go.mod names it as a tool),
# built once into a folder named after the version (the binary keeps its name: it is the OTLP scope
# name, which makes its series pyroscope_spy=ebpfspy). ~3 min on 2 cores the first time.
EBPF_PROFILER_VERSION=v0.0.202547
if [ -n "$GO" ] && [ ! -x "$FW_CACHE/otel-ebpf-profiler-$EBPF_PROFILER_VERSION/ebpf-profiler" ]; then
  log "building go.opentelemetry.io/ebpf-profiler@$EBPF_PROFILER_VERSION"
  (cd tests/producers/ebpf_profiler && CGO_ENABLED=0 "$GO" build \
      -o "$FW_CACHE/otel-ebpf-profiler-$EBPF_PROFILER_VERSION/ebpf-profiler" go.opentelemetry.io/ebpf-profiler) \
      >/dev/null 2>&1 || log "go build of go.opentelemetry.io/ebpf-profiler failed; tests/producers/test_ebpf_profiler.py will skip"
fi
# opentelemetry-sdk-extension-profiling (PyPI) pins opentelemetry-exporter-otlp==1.40.0 and
# opentelemetry-instrumentation==0.61b0: its own virtualenv keeps them out of flamewatch's.
OTEL_VENV="$FW_CACHE/otel-profiling-venv"
if [ ! -x "$OTEL_VENV/bin/python" ] || ! "$OTEL_VENV/bin/python" -c 'import opentelemetry.sdk.extension.profiling' 2>/dev/null; then
  log "installing opentelemetry-sdk-extension-profiling into $OTEL_VENV"
  { "$PY" -m venv "$OTEL_VENV" && "$OTEL_VENV/bin/python" -m pip install -q "opentelemetry-sdk-extension-profiling==0.63b4"; } \
    >/dev/null 2>&1 || log "installing opentelemetry-sdk-extension-profiling failed; tests/producers/test_otel_python.py will skip"
fi
# Tells the tests that this machine was prepared: a real part's test that skips here fails.
printf 'apt=%s\n' "$apt_done" > .venv/flamewatch-setup
log "done: run .venv/bin/flamewatch (no activation needed)"
