#!/usr/bin/env bash
# Sets up everything the test suite needs (a venv in .venv, the npm reference packages for the
# interop tests) and runs the linter and the whole suite. Needs only python3 (and node for interop).
set -euo pipefail
cd "$(dirname "$0")"
# `less` for the pager tests (tests/test_cli_terminal.py), installed when missing and we are root (CI)
if ! command -v less >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  apt-get -o DPkg::Lock::Timeout=600 install -y -qq less >/dev/null \
    || { apt-get update -qq && apt-get -o DPkg::Lock::Timeout=600 install -y -qq less >/dev/null; }
fi
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
if [ -f tests/interop/package.json ] && command -v npm >/dev/null 2>&1; then
  (cd tests/interop && npm install --silent --no-audit --no-fund >/dev/null)
fi
.venv/bin/ruff check .
exec .venv/bin/python -m pytest -q "$@"
