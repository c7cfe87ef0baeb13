#!/usr/bin/env bash
# Set up ./.venv and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

# tests/test_labelling_browser.py drives Debian's chromium (nothing is downloaded at test time):
# install it once when missing, system-wide with apt-get (as root, or through sudo without a
# password). Non-interactive, so it also works under CI=true with no stdin.
if [ ! -x /usr/bin/chromium ]; then
  echo "scripts/test.sh: installing chromium system-wide with apt-get (for tests/test_labelling_browser.py)"
  as_root=""
  [ "$(id -u)" -eq 0 ] || as_root="sudo -n"
  apt_log="$(mktemp)"
  if { $as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
       $as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; } \
       </dev/null >"$apt_log" 2>&1; then
    echo "installed $(/usr/bin/chromium --version 2>/dev/null || echo chromium)"
  else
    tail -n 20 "$apt_log" >&2
    echo "warning: could not install chromium; the browser test will fail until it is installed" >&2
  fi
  rm -f "$apt_log"
fi

exec .venv/bin/python -m pytest -q "$@"
