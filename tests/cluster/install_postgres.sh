#!/usr/bin/env bash
# PostgreSQL server binaries for tests/cluster (the tests start their own server as an
# unprivileged user). Installs Debian's `postgresql` package only when no
# /usr/lib/postgresql/*/bin/initdb exists and apt-get can run; otherwise says what to do.
set -euo pipefail
if compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; then
  exit 0
fi
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  echo "installing PostgreSQL (Debian package postgresql) for tests/cluster"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >/dev/null
  exit 0
fi
echo "tests/cluster needs PostgreSQL server binaries: apt-get install postgresql (as root)" >&2
exit 1
