# Sourced by scripts/*: make sure .venv exists and matches pyproject.toml.
# Works on a fresh Debian with only python3: installs python3-venv with apt if needed.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  if ! "$PY" -m venv .venv 2>/dev/null; then
    rm -rf .venv
    echo "scripts: python3 -m venv failed; installing python3-venv with apt" >&2
    if [ "$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
    else sudo apt-get update -qq && sudo apt-get install -y -qq python3-venv >/dev/null; fi
    "$PY" -m venv .venv
  fi
fi
stamp=".venv/.rdbsync-installed"
want="$(sha256sum pyproject.toml | cut -d' ' -f1)-${RDBSYNC_EXTRAS:-dev}"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "scripts: installing rdbsync into .venv" >&2
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
  .venv/bin/python -m pip install -q -e ".[${RDBSYNC_EXTRAS:-dev}]" 2>&1 | grep -v "^WARNING: Location" >&2 || true
  .venv/bin/python -c "import rdb, node, pysyncobj, aiohttp, pydantic" || { echo "scripts: install failed" >&2; exit 1; }
  echo "$want" > "$stamp"
fi
