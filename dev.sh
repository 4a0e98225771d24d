#!/usr/bin/env bash
# elastiq developer entry point.
#   bash dev.sh demo   set up, then run the main job: 4 workers, one killed part-way
#   bash dev.sh test   set up (with test tools and etcd), then ruff, mypy and pytest
#   bash dev.sh setup  set up only
# Setup installs into the current Python interpreter. torch comes only from the
# local CPU wheel (never from an index, which would pull CUDA packages).
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
WHEELS=${ELASTIQ_WHEELS:-/opt/wheels}

setup() {
  local extra=${1:-}
  if ! "$PY" -c 'import torch, sys; sys.exit(0 if torch.__version__.startswith("2.13.0") else 1)' 2>/dev/null; then
    if ! ls "$WHEELS"/torch-2.13.0*.whl >/dev/null 2>&1; then
      echo "dev.sh: torch 2.13.0 is not installed and no local wheel is in $WHEELS." >&2
      echo "        Install the CPU build yourself (pip install torch==2.13.0 from the CPU index);" >&2
      echo "        setup refuses to pull it from PyPI, which would bring gigabytes of CUDA." >&2
      exit 1
    fi
    "$PY" -m pip install -q --no-index --find-links "$WHEELS" torch==2.13.0
  fi
  "$PY" -m pip install -q --disable-pip-version-check -e ".${extra}" 2>&1 | grep -v "as the 'root' user" || true
  "$PY" -c 'import elastiq.controller.server, elastiq.agent.worker' # fail fast if the install is broken
}

need_etcd() {
  if ! command -v etcd >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      echo "dev.sh: installing etcd (Debian etcd-server) for the store tests"
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server >/dev/null
      # the package starts a system etcd on 2379; the tests run their own on free ports
      (systemctl stop etcd 2>/dev/null || service etcd stop 2>/dev/null || pkill -x etcd || true) >/dev/null 2>&1
    else
      echo "dev.sh: etcd is missing; install Debian's etcd-server (apt-get install etcd-server)" >&2
      exit 1
    fi
  fi
}

typecheck() {
  # setuptools maps controller/ agent/ proto/ checkpoint/ under elastiq.*; mypy cannot
  # follow that mapping, so check a symlink tree shaped like the import namespace.
  local tree=build/typecheck/elastiq
  rm -rf build/typecheck && mkdir -p "$tree"
  for f in elastiq/*.py elastiq/py.typed; do ln -s "../../../$f" "$tree/$(basename "$f")"; done
  for part in controller agent proto checkpoint; do ln -s "../../../$part" "$tree/$part"; done
  ln -s ../../tests build/typecheck/tests && ln -s ../../bench build/typecheck/bench
  (cd build/typecheck && "$PY" -m mypy --config-file ../../pyproject.toml elastiq tests bench)
}

case "${1:-}" in
  setup) setup ;;
  demo)
    setup
    exec elastiq run --workers 4 --steps 300 --chaos kill-worker:rank=2,step=100 "${@:2}"
    ;;
  test)
    setup "[test]"
    need_etcd
    "$PY" -m ruff check .
    "$PY" -m ruff format --check .
    typecheck
    exec "$PY" -m pytest -q --durations=12 "${@:2}"
    ;;
  *) echo "usage: bash dev.sh setup|demo|test [args]" >&2; exit 2 ;;
esac
