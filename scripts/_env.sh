# Sourced by scripts/demo.sh and scripts/test.sh: make .venv (Python 3.11+) with Sentinel installed.
# Reinstalls only when pyproject.toml changed since the last install.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"

find_python() {
    for candidate in "${PYTHON:-}" python3.13 python3.12 python3.11 python3; do
        [ -n "$candidate" ] || continue
        if command -v "$candidate" >/dev/null 2>&1 &&
           "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            echo "$candidate"; return 0
        fi
    done
    echo "error: Sentinel needs Python 3.11 or newer (set PYTHON=/path/to/python3.11)" >&2
    return 1
}

stamp="$VENV/.sentinel-installed"
want="$(sha256sum "$ROOT/pyproject.toml" | cut -c1-16)-${SENTINEL_EXTRAS:-dev}"
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    py="$(find_python)"
    echo "setting up $VENV (one time; a few minutes)..." >&2
    [ -x "$VENV/bin/python" ] || "$py" -m venv "$VENV"
    # pip 25+ refuses dbt-materialize's metadata (a direct-URL dev extra); 24.x installs it.
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check 'pip>=23,<25'
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e "$ROOT[${SENTINEL_EXTRAS:-dev}]"
    echo "$want" > "$stamp"
fi
export PATH="$VENV/bin:$PATH"
