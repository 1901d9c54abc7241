#!/usr/bin/env bash
# Install clipsearch with its test extra into ./.venv and run the test suite.
#
#   bash scripts/test.sh [PYTEST ARGS...]
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[test]"
# clip-retrieval's client, for the compatibility test, without the inference stack its
# package declares (torch < 2.x pins, flask, ...): the client module needs only requests.
.venv/bin/python -m pip install -q --no-deps "clip-retrieval==2.45.0"
# The browser tests drive Debian's Chromium through Playwright (Playwright's own browser
# download needs a network this project's CI does not have). Installed here when missing
# and possible; without it those tests are skipped with their reason.
if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  echo "installing Debian's chromium for the browser tests" >&2
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } >/dev/null \
    || echo "could not install chromium: the browser tests will be skipped" >&2
fi
# The storage tests run on SQLite and on a throwaway PostgreSQL server that the test
# fixtures start on loopback (tests/conftest.py), from Debian's packaged binaries; without
# them the PostgreSQL tests are skipped with their reason.
if ! ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  echo "installing Debian's postgresql for the PostgreSQL tests" >&2
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql; } >/dev/null \
    || echo "could not install postgresql: the PostgreSQL tests will be skipped" >&2
fi
exec .venv/bin/python -m pytest "$@"
