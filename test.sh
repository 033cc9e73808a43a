#!/usr/bin/env bash
# Sets up everything the test suite needs (a venv in .venv, the npm reference packages for the
# interop tests, Debian's chromium + chromium-driver for the web app's browser tests when run as root) and runs
# the linter and the whole suite. Needs only python3 (and node for interop).
set -euo pipefail
cd "$(dirname "$0")"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
# Debian packages the network tests use (namespaces, a SOCKS5 proxy) and the browser tests (chromium);
# installed as root when missing. Without
# root the tests that need them skip with the reason (and fail under CI=true).
need=()
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v microsocks >/dev/null 2>&1 || need+=(microsocks)
command -v nft >/dev/null 2>&1 || need+=(nftables)
command -v tor >/dev/null 2>&1 || need+=(tor)
command -v miniupnpd >/dev/null 2>&1 || need+=(miniupnpd-nftables)
# the web app's real-browser tests drive Debian's chromium through chromium-driver (tests/browser.py)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
if [ "${#need[@]}" -gt 0 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=600 install -y -q "${need[@]}" >/dev/null \
    || { apt-get -o DPkg::Lock::Timeout=600 update -q >/dev/null && \
         apt-get -o DPkg::Lock::Timeout=600 install -y -q "${need[@]}" >/dev/null; }
fi
if [ -f tests/interop/package.json ] && command -v npm >/dev/null 2>&1; then
  (cd tests/interop && npm install --silent --no-audit --no-fund >/dev/null)
fi
.venv/bin/ruff check .
exec .venv/bin/python -m pytest -q "$@"
