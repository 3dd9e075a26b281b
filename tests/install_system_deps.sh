#!/usr/bin/env bash
# Server binaries the tests start themselves (never as system services): PostgreSQL for
# tests/cluster, haproxy and prometheus/promtool for tests/deploy, chromium + chromedriver
# for tests/e2e/test_console.py. Installs the Debian
# packages of the missing ones when apt-get can run (root); otherwise says what to do.
set -euo pipefail
missing=()
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || missing+=(postgresql)
command -v haproxy >/dev/null 2>&1 || missing+=(haproxy)
{ command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; } || missing+=(prometheus)
# tests/e2e/test_console.py: the console in a real headless browser
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
[ ${#missing[@]} -eq 0 ] && exit 0
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  echo "installing Debian packages for the tests: ${missing[*]}"
  apt-get update -qq
  # policy-rc.d 101: packages must not start their daemons (the tests start their own)
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  exit 0
fi
echo "the tests need: ${missing[*]} (Debian packages; apt-get install them as root)" >&2
exit 1
