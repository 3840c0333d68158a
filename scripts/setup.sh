#!/usr/bin/env bash
# One-time set-up on a fresh machine: system packages (Java 17, WordNet 3.0) and the
# project's virtual environment. Idempotent: a second run only checks.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"
# torch and torchvision must be a matching pair: open_clip imports torchvision, and a
# CPU-only torch wheel offered by a local find-links folder has no torchvision to match.
TORCH_PAIR="${TORCH_PAIR:-torch==2.14.1 torchvision==0.29.1}"
STAMP="$VENV/.installed"

log() { printf '[setup] %s\n' "$*" >&2; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@";
  elif command -v sudo >/dev/null 2>&1; then sudo "$@";
  else log "need root to run: $*  (install it by hand, then rerun)"; exit 1; fi
}

APT_UPDATED=0
apt_install() {
  if ! command -v apt-get >/dev/null 2>&1; then
    log "apt-get not found: install $* with your system's package manager"; exit 1
  fi
  if [ "$APT_UPDATED" = 0 ]; then as_root apt-get update -qq; APT_UPDATED=1; fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"
}

java_major() {
  java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -1
}

# Spark 4 needs Java 17 or newer.
if ! command -v java >/dev/null 2>&1 || [ "$(java_major)" -lt 17 ]; then
  log "Java 17+ not found: installing openjdk-17-jre-headless"
  apt_install openjdk-17-jre-headless
fi

# WordNet 3.0 for concept metadata (read by nltk's reader from /usr/share/wordnet).
if [ ! -f /usr/share/wordnet/data.noun ] && [ ! -f /usr/share/wordnet/dict/data.noun ]; then
  log "WordNet 3.0 not found: installing wordnet-base"
  apt_install wordnet-base
fi

# Debian's Chromium for the report's browser test (driven by Playwright's Python package,
# which is told to use this binary; nothing is downloaded by Playwright itself). Not needed
# to run the pipeline, so a failed install only warns and that one test skips.
if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then
  log "Chromium not found: installing chromium for the report's browser test"
  (apt_install chromium) || log "WARNING: could not install chromium; the browser test of the report will skip"
fi

if [ -f "$STAMP" ] && [ "$STAMP" -nt "$ROOT/pyproject.toml" ] && [ "$STAMP" -nt "$ROOT/scripts/setup.sh" ]; then
  exit 0
fi

# Airflow (the [airflow] extra) in its own environment: its Spark provider requires
# pyspark-client, which would overwrite the modules of the pyspark in .venv. The DAG needs
# only Airflow; the Spark jobs it submits run in .venv's Python (PYSPARK_PYTHON).
# It installs in the background while the main environment installs (both mostly wait on
# downloads); its output goes to a log shown only when it fails.
AIRFLOW_VENV="${AIRFLOW_VENV:-$ROOT/.venv-airflow}"
install_airflow() {
  if [ ! -x "$AIRFLOW_VENV/bin/python" ]; then "$PYTHON" -m venv "$AIRFLOW_VENV"; fi
  local reqs
  # The extra's one-line list in pyproject.toml (no tomllib: Python 3.10 lacks it).
  mapfile -t reqs < <("$PYTHON" -c 'import ast, re, sys; m = re.search(r"^airflow = (\[.*?\])$", open(sys.argv[1]).read(), re.M); print("\n".join(ast.literal_eval(m.group(1))))' "$ROOT/pyproject.toml")
  PIP_FIND_LINKS= "$AIRFLOW_VENV/bin/pip" install -q "${reqs[@]}"
  "$AIRFLOW_VENV/bin/python" -c "import airflow.sdk, airflow.providers.apache.spark.operators.spark_submit"
}
AIRFLOW_LOG="$(mktemp -t curate-airflow-setup.XXXXXX)"
log "installing the [airflow] extra into $AIRFLOW_VENV (in the background)"
install_airflow >"$AIRFLOW_LOG" 2>&1 &
AIRFLOW_PID=$!

if [ ! -x "$VENV/bin/python" ]; then
  log "creating virtual environment in $VENV"
  "$PYTHON" -m venv "$VENV"
fi
log "installing $TORCH_PAIR"
PIP_FIND_LINKS= "$VENV/bin/pip" install -q $TORCH_PAIR
log "installing the project with its dev extras"
PIP_FIND_LINKS= "$VENV/bin/pip" install -q -e "$ROOT[dev]" $TORCH_PAIR
"$VENV/bin/python" -c "import torch, torchvision, open_clip, pyspark, faiss" \
  || { log "the environment does not import; see the errors above"; exit 1; }

if ! wait "$AIRFLOW_PID"; then
  cat "$AIRFLOW_LOG" >&2
  log "the Airflow environment did not install or does not import; see the errors above"
  exit 1
fi
rm -f "$AIRFLOW_LOG"

touch "$STAMP"
log "ready: $VENV (and $AIRFLOW_VENV)"
