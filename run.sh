#!/usr/bin/env bash
# Sets up p2pnode in .venv (first time only), creates an identity if there is none, and starts
# the node in the foreground with the defaults. Extra arguments go to `p2pnode run`.
set -euo pipefail
cd "$(dirname "$0")"
if [ ! -x .venv/bin/p2pnode ]; then
  python3 -m venv .venv
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -e .
fi
# first run: create the identity; any other problem with the home is reported by `run` itself, in one line
.venv/bin/p2pnode whoami >/dev/null 2>&1 || .venv/bin/p2pnode init 2>/dev/null || true
exec .venv/bin/p2pnode run "$@"
