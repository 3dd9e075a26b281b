#!/usr/bin/env bash
# make test-container: build the CPU image with podman (../shared/container/build-and-run.sh),
# run it on a fresh volume with a token, predict, retrain over HTTP, stop (clean exit within
# 10 s), start a new container on the same volume and check the promoted version is served.
# Writes bench/results/container.json (image size, run-to-ready times).
set -euo pipefail
cd "$(dirname "$0")/../.."
REPO=$(pwd)
SHARED=${REFIT_SHARED:-$(cd .. && pwd)/shared}
BUILD=$SHARED/container/build-and-run.sh
W=${CTR_HOME:-/tmp/refit-ctr}
IMAGE=${IMAGE:-localhost/refit:ci}
NAME=refit-ctr-test
VOLUME=refit-ctr-test-$$
PORT=${CTR_PORT:-3000}
TOKEN=container-test-token
URL=http://127.0.0.1:$PORT
say() { echo "[test-container] $*" >&2; }
fail() { say "FAIL: $*"; podman logs "$NAME" 2>&1 | tail -40 >&2 || true; exit 1; }
json() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }

[ -x "$BUILD" ] || { say "SKIP: $BUILD not found (set REFIT_SHARED)"; exit 0; }
if ! command -v podman >/dev/null 2>&1; then
  say "installing podman, runc, debootstrap"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman runc debootstrap >/dev/null; } \
    || { say "SKIPPED: podman cannot be installed here"; exit 0; }
fi
podman info >/dev/null 2>&1 || { say "SKIPPED: podman is installed but cannot run here ($(podman info 2>&1 | tail -1))"; exit 0; }
export CONTAINERS_STORAGE_CONF=$W/storage.conf CONTAINERS_CONF=$W/containers.conf

# The shared script takes its Debian mirror from the first URL in apt's sources, which on
# these machines is a commented snapshot address without a date (debootstrap then fails).
# Make the same base image here from the `URIs:` mirror when it is missing; the script
# reuses an existing localhost/python-base.
ensure_base() {
  mkdir -p "$W"
  [ -f "$W/storage.conf" ] || printf '[storage]\ndriver = "overlay"\nrunroot = "%s/runroot"\ngraphroot = "%s/storage"\n' "$W" "$W" > "$W/storage.conf"
  [ -f "$W/containers.conf" ] || printf '[engine]\nruntime = "runc"\n' > "$W/containers.conf"
  podman image exists localhost/python-base && return 0
  local mirror r
  mirror=$(grep -hoE '^URIs: *https?://[^ ]+/debian/?$' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -1 | sed 's/^URIs: *//')
  mirror=${mirror:-http://deb.debian.org/debian}
  say "making localhost/python-base from $mirror"
  r=$W/rootfs; rm -rf "$r"
  debootstrap --variant=minbase bookworm "$r" "$mirror" >/dev/null
  printf 'deb %s bookworm main\ndeb %s bookworm-updates main\n' "$mirror" "$mirror" > "$r/etc/apt/sources.list"
  chroot "$r" sh -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3 python3-venv python3-pip python-is-python3 ca-certificates curl >/dev/null'
  rm -f "$r"/usr/lib/python3.*/EXTERNALLY-MANAGED
  cp /usr/local/share/ca-certificates/*.crt "$r/usr/local/share/ca-certificates/" 2>/dev/null || true
  chroot "$r" update-ca-certificates >/dev/null
  chroot "$r" apt-get clean; rm -rf "$r"/var/lib/apt/lists/*
  tar -C "$r" -c . | podman import --change 'CMD ["python3"]' --change 'ENV LANG=C.UTF-8' \
    --change 'ENV PYTHONUNBUFFERED=1' - localhost/python-base >/dev/null
  rm -rf "$r"
}
ensure_base

# 1. build (the script also runs the image once and probes /readyz)
say "building $IMAGE"
started=$(date +%s)
IMAGE=$IMAGE CTR_HOME=$W BUILD_ARGS='--build-arg FLAVOR=cpu' "$BUILD" "$REPO" "$URL/readyz" -- \
  -e REFIT_PORT="$PORT" -e REFIT_API_TOKEN=$TOKEN >&2 || fail "build-and-run.sh failed"
build_s=$(( $(date +%s) - started ))

cleanup() { podman rm -f "$NAME" >/dev/null 2>&1 || true; podman volume rm -f "$VOLUME" >/dev/null 2>&1 || true; }
trap cleanup EXIT
run_until_ready() {
  podman rm -f "$NAME" >/dev/null 2>&1 || true
  local t0; t0=$(python3 -c 'import time; print(time.time())')
  # read-only root filesystem, writable /data and /tmp only: as the Kubernetes pods run
  podman run -d --init --name "$NAME" --network host -e REFIT_PORT="$PORT" -e REFIT_API_TOKEN=$TOKEN \
    --read-only --tmpfs /tmp:rw,size=512m -v "$VOLUME:/data" "$IMAGE" >/dev/null
  for _ in $(seq 1 300); do
    if curl -fsS "$URL/readyz" >/dev/null 2>&1; then
      python3 -c "import time; print(round(time.time() - $t0, 1))"; return 0
    fi
    [ "$(podman inspect -f '{{.State.Running}}' "$NAME")" = true ] || fail "container exited"
    sleep 0.5
  done
  fail "not ready after 150 s"
}
predict_version() {
  curl -fsS "$URL/predict" -H 'content-type: application/json' -d '{"texts": ["how do I activate my card"]}' | json 'd["version"]'
}

# 2. fresh volume, first start (trains the shipped example model)
podman volume rm -f "$VOLUME" >/dev/null 2>&1 || true
first_ready_s=$(run_until_ready)
say "first start ready in ${first_ready_s}s"
[ "$(podman exec "$NAME" id -u)" != 0 ] || fail "container runs as root"
v0=$(predict_version)

# 3. feature-extraction retrain over HTTP (5 Banking77 classes x 8), token required
body=$(python3 - "$SHARED/data/banking77/train.csv" <<'PY'
import csv, json, sys
rows = list(csv.DictReader(open(sys.argv[1], newline="")))
classes = sorted({r["category"] for r in rows})[:5]
ex = []
for c in classes:
    ex += [{"text": r["text"], "label": c} for r in rows if r["category"] == c][:8]
print(json.dumps({"examples": ex, "mode": "replace"}))
PY
)
code=$(curl -s -o /dev/null -w '%{http_code}' "$URL/retrain/submit" -H 'content-type: application/json' -d "$body")
[ "$code" = 401 ] || fail "retrain without token answered $code, expected 401"
job=$(curl -fsS -D - -o /dev/null "$URL/retrain/submit" -H "Authorization: Bearer $TOKEN" \
      -H 'content-type: application/json' -d "$body" | tr -d '\r' | awk -F': ' 'tolower($1)=="x-refit-job-id"{print $2}')
[ -n "$job" ] || fail "no job id"
for _ in $(seq 1 240); do
  state=$(curl -fsS "$URL/jobs/$job" | json 'd["state"]')
  [ "$state" = queued ] || [ "$state" = running ] || break
  sleep 1
done
[ "$state" = succeeded ] || fail "job $job ended $state: $(curl -fsS "$URL/jobs/$job")"
v1=$(curl -fsS "$URL/jobs/$job" | json 'd["result"]["version"] if d["result"]["promoted"] else ""')
[ -n "$v1" ] && [ "$v1" != "$v0" ] || fail "new version not promoted"
sleep 2
[ "$(predict_version)" = "$v1" ] || fail "new version $v1 not served"
say "retrained: $v0 -> $v1"

# 4. stop: clean exit within 10 s; restart on the same volume
t0=$(date +%s.%N)
podman stop -t 10 "$NAME" >/dev/null
stop_s=$(python3 -c "print(round($(date +%s.%N) - $t0, 1))")
exit_code=$(podman inspect -f '{{.State.ExitCode}}' "$NAME")
say "stopped in ${stop_s}s with exit code $exit_code"
[ "$exit_code" = 0 ] || fail "exit code $exit_code after SIGTERM"
python3 -c "import sys; sys.exit(0 if $stop_s < 10 else 1)" || fail "stop took ${stop_s}s"
restart_ready_s=$(run_until_ready)
[ "$(curl -fsS "$URL/models" | json 'd["production"]')" = "$v1" ] || fail "production lost on restart"
[ "$(predict_version)" = "$v1" ] || fail "restarted container does not serve $v1"
say "restart ready in ${restart_ready_s}s, serving $v1"

# 5. report
size=$(podman image inspect -f '{{.Size}}' "$IMAGE")
mkdir -p bench/results
cat > bench/results/container.json <<JSON
{"image": "$IMAGE", "flavor": "cpu", "image_size_mb": $(( size / 1024 / 1024 )), "build_and_first_probe_s": $build_s,
 "first_start_ready_s": $first_ready_s, "restart_ready_s": $restart_ready_s, "stop_s": $stop_s, "stop_exit_code": $exit_code}
JSON
cat bench/results/container.json
say "PASS"
