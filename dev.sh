#!/usr/bin/env bash
# elastiq developer entry point. Everything it installs goes into .venv at the repo root.
#   bash dev.sh demo [elastiq run flags]   set up, then train 4 workers and kill one a third of the way
#   bash dev.sh test [pytest args]         set up (test tools, etcd too), then ruff, mypy and pytest
#   bash dev.sh setup                      set up only (add "test" for the test tools and etcd)
#
# Set-up prints one line per step; pip's and apt's output goes to build/setup.log, whose
# tail is shown when a step fails. A second run reuses .venv and takes seconds.
#
# torch: only the CPU build of 2.13.0 is installed, as torch==2.13.0+cpu from the wheel
# folder ($ELASTIQ_WHEELS, default /opt/wheels). A package index holds no "+cpu" build, so
# this can never pull the CUDA build (gigabytes); torch's own dependencies (filelock,
# sympy, ...) come from the index as usual. A torch 2.13.0 already in .venv is kept.
#
# Settings (environment, read here only): PYTHON (the interpreter that makes .venv,
# default python3.11, then python3), ELASTIQ_WHEELS (the folder holding the torch wheel).
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$PWD
VENV=$ROOT/.venv
VPY=$VENV/bin/python
LOG=$ROOT/build/setup.log
STAMP=$VENV/.elastiq-installed
WHEELS=${ELASTIQ_WHEELS:-/opt/wheels}
TORCH=2.13.0

say() { printf 'dev.sh: %s\n' "$*"; }
die() {
  printf 'dev.sh: %s\n' "$@" >&2
  exit 1
}

# step LABEL CMD...: one line for the step and its time; the command's output goes to the
# log, and its tail to the screen if it fails.
step() {
  local label=$1 start rc=0
  shift
  printf 'dev.sh: %s ... ' "$label"
  start=$(date +%s.%N)
  printf '\n==== %s: %s\n' "$(date -u +%FT%TZ)" "$label" >>"$LOG"
  "$@" >>"$LOG" 2>&1 || rc=$?
  if [ "$rc" != 0 ]; then
    printf 'failed (exit %s)\n' "$rc"
    printf -- '---- last lines of %s ----\n' "$LOG" >&2
    tail -n 40 "$LOG" >&2
    die "$label failed; the full log is $LOG"
  fi
  awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN { printf "%.1f s\n", e - s }'
}

# The interpreter that makes .venv: PYTHON if given, else python3.11, else python3.
find_python() {
  local candidate
  if [ -n "${PYTHON:-}" ]; then
    candidate=$PYTHON
    command -v "$candidate" >/dev/null 2>&1 || die "PYTHON=$PYTHON is not an executable."
  else
    candidate=$(command -v python3.11 || command -v python3 || true)
    [ -n "$candidate" ] || die "no python3 found. Install Python 3.11 (Debian: apt-get install python3.11 python3.11-venv), or point PYTHON at one."
  fi
  if ! "$candidate" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
    die "elastiq needs Python 3.11 or newer; $candidate is $("$candidate" -V 2>&1)." \
      "Install Python 3.11 and rerun with PYTHON=/path/to/python3.11 bash dev.sh ..."
  fi
  if ! "$candidate" -c 'import venv, ensurepip' 2>/dev/null; then
    die "$candidate cannot create virtual environments (no venv/ensurepip module)." \
      "Debian: apt-get install python3.11-venv, then rerun."
  fi
  printf '%s' "$candidate"
}

venv_usable() {
  "$VPY" -c 'import sys, pip; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null
}

installed_version() { # installed_version DIST: its version in .venv, or nothing
  "$VPY" -c 'import importlib.metadata as m, sys
try:
    print(m.version(sys.argv[1]))
except m.PackageNotFoundError:
    pass' "$1"
}

torch_wheel() { # torch_wheel PYTHON: the torch CPU wheel for that Python's tag, or nothing
  local tag
  tag=$("$1" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
  compgen -G "$WHEELS/torch-$TORCH+cpu-$tag-$tag-*.whl" | head -n 1 || true
}

no_torch_wheel() {
  die "no CPU build of torch $TORCH for $("$1" -V 2>&1) in $WHEELS." \
    "Put torch-$TORCH+cpu-*.whl for that Python there (or set ELASTIQ_WHEELS to its folder)," \
    "or make .venv and put the CPU build in it yourself, from PyTorch's CPU wheel index:" \
    "  python3.11 -m venv .venv && .venv/bin/pip install torch==$TORCH --index-url <that index>" \
    "then rerun. Set-up never takes torch from a package index: that is the CUDA build (GBs)."
}

pip_install() {
  "$VPY" -m pip install --disable-pip-version-check --no-input "$@"
}

# The editable install is redone only when pyproject.toml changes or a new extra is asked
# for: source edits need no reinstall, and a reused .venv costs no pip run at all.
install_is_current() { # install_is_current EXTRA
  local hash
  hash=$(sha256sum pyproject.toml | cut -d' ' -f1)
  [ -f "$STAMP" ] || return 1
  if [ -z "$1" ]; then grep -q "^$hash " "$STAMP"; else grep -qxF "$hash $1" "$STAMP"; fi
}

record_install() { # record_install EXTRA
  local hash
  hash=$(sha256sum pyproject.toml | cut -d' ' -f1)
  grep -q "^$hash " "$STAMP" 2>/dev/null || : >"$STAMP"
  printf '%s %s\n' "$hash" "$1" >>"$STAMP"
}

setup() {
  local extra=${1:-} python have
  if [ -e "$VENV" ] && ! venv_usable; then
    die "$VENV exists but is not a working Python >= 3.11 environment with pip" \
      "(an interrupted set-up, or made by another Python). Remove it (rm -rf .venv) and rerun."
  fi
  if [ ! -e "$VENV" ]; then
    python=$(find_python)
    [ -n "$(torch_wheel "$python")" ] || no_torch_wheel "$python"
    step "creating .venv ($("$python" -V 2>&1))" "$python" -m venv "$VENV"
  fi
  have=$(installed_version torch)
  if [ "${have%%+*}" != "$TORCH" ]; then
    [ -n "$(torch_wheel "$VPY")" ] || no_torch_wheel "$VPY"
    step "installing torch $TORCH (CPU)" pip_install --find-links "$WHEELS" "torch==$TORCH+cpu"
  fi
  if ! install_is_current "$extra"; then
    step "installing elastiq${extra:+ with $extra}" pip_install -e ".$extra"
    step "checking the install" "$VPY" -c 'import elastiq.controller.server, elastiq.agent.runtime.worker'
    record_install "$extra"
  fi
}

# need CMD PACKAGE WHAT: CMD on PATH, else Debian's PACKAGE installed (as root, with apt).
need() {
  local cmd=$1 package=$2 what=$3
  command -v "$cmd" >/dev/null 2>&1 && return 0
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    die "the tests need $cmd, which is not installed, and dev.sh cannot install it" \
      "($([ "$(id -u)" != 0 ] && echo "not root" || echo "no apt-get"))." \
      "Install Debian's $package (sudo apt-get install $package) or put $what" \
      "on PATH, then rerun."
  fi
  step "installing $package" apt_install "$package"
}

apt_install() { # apt_install PACKAGE
  # Only a missing package list is refreshed, which saves the update on a warm machine.
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$1"; then
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$1"
  fi
}

need_etcd() {
  command -v etcd >/dev/null 2>&1 && return 0
  need etcd etcd-server "an etcd v3 binary"
  # The package may start a system etcd on 2379; the tests run their own on free ports.
  systemctl stop etcd 2>/dev/null || service etcd stop 2>/dev/null || pkill -x etcd || true
}

# kubectl renders deploy/ in the tests (kubectl kustomize)
need_kubectl() { need kubectl kubernetes-client "any kubectl"; }

typecheck() {
  # setuptools maps controller/ agent/ proto/ checkpoint/ under elastiq.*; mypy cannot
  # follow that mapping, so check a symlink tree shaped like the import namespace.
  local tree=build/typecheck/elastiq
  rm -rf build/typecheck && mkdir -p "$tree"
  for f in elastiq/*.py elastiq/py.typed elastiq/cli elastiq/chaos; do ln -s "../../../$f" "$tree/$(basename "$f")"; done
  for part in controller agent proto checkpoint kube; do ln -s "../../../$part" "$tree/$part"; done
  ln -s ../../tests build/typecheck/tests && ln -s ../../bench build/typecheck/bench
  (cd build/typecheck && "$VPY" -m mypy --config-file ../../pyproject.toml \
    --cache-dir ../mypy-cache elastiq tests bench)
}

# The demo's kill comes a third of the way through, so `demo --steps 60` still has one.
demo_steps() {
  local steps=300
  while [ $# -gt 0 ]; do
    case $1 in
      --steps) steps=${2:-300}; shift ;;
      --steps=*) steps=${1#--steps=} ;;
    esac
    shift
  done
  [[ $steps =~ ^[0-9]+$ ]] && [ "$steps" -ge 3 ] || die "demo: --steps must be a whole number >= 3, got '$steps'."
  printf '%s' "$steps"
}

case "${1:-}" in
  setup | demo | test) mkdir -p build && : >"$LOG" ;;
esac
case "${1:-}" in
  setup)
    if [ "${2:-}" = test ]; then need_etcd && need_kubectl && setup "[test]"; else setup; fi
    say "ready: source .venv/bin/activate (or run .venv/bin/elastiq ...)"
    ;;
  demo)
    steps=$(demo_steps "${@:2}")
    setup
    exec "$VENV/bin/elastiq" run --workers 4 --steps "$steps" \
      --chaos "kill-worker:rank=2,step=$((steps / 3))" "${@:2}"
    ;;
  test)
    need_etcd
    need_kubectl
    setup "[test]"
    "$VPY" -m ruff check .
    "$VPY" -m ruff format --check .
    typecheck
    exec "$VPY" -m pytest -q --durations=12 "${@:2}"
    ;;
  *)
    echo "usage: bash dev.sh demo|test|setup [args]" >&2
    exit 2
    ;;
esac
