#!/usr/bin/env bash
# Builds the cmdx container image (packaging/container/Containerfile) with podman and runs it as
# an operator would: the hub from the image, an agent from the same image (privileged, as in
# packaging/kubernetes/agent.yaml), and one job through them. Offline but for Debian's mirror:
# the base image is made by mmdebstrap (cached under ${XDG_CACHE_HOME:-~/.cache}/cmdx) and
# imported, never pulled from a registry.
#
#   scripts/container-smoke.sh [CMDX_BINARY]     (default: target/debug/cmdx)
#
# Needs root, podman and mmdebstrap (Debian packages; scripts/test.sh installs them).
set -euo pipefail
cd "$(dirname "$0")/.."

bin=${1:-${CARGO_TARGET_DIR:-$PWD/target}/debug/cmdx}
cache=${XDG_CACHE_HOME:-$HOME/.cache}/cmdx
base_tar=$cache/debian-bookworm-minbase-ca.tar
base=localhost/cmdx-debian:bookworm
image=localhost/cmdx:smoke
port=$((18000 + RANDOM % 2000))
name=cmdx-smoke-$$
work=$(mktemp -d)
say() { printf 'container-smoke: %s\n' "$*" >&2; }
# This host has cgroup v1 with an empty cgroup2 mount (hybrid): crun refuses to create
# containers there ("cgroups in hybrid mode not supported"), runc works. podman's default
# ulimits (nofile, nproc) are above this host's hard limits, which the runtime may not raise:
# ask for values under them (nproc above 32768 is refused here). On a cgroup v2 host plain
# `podman` (crun) needs neither.
pm() { podman --runtime runc "$@"; }
limits=(--ulimit "nofile=$(ulimit -Hn):$(ulimit -Hn)" --ulimit nproc=32768:32768)
cleanup() {
  podman --runtime runc rm -f "$name-hub" "$name-agent" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
t0=$(date +%s)

if ! podman image exists "$base"; then
  if [ ! -s "$base_tar" ]; then
    say "making the Debian 12 minbase with mmdebstrap (once; cached in $cache)"
    mkdir -p "$cache"
    mmdebstrap --quiet --variant=minbase --include=ca-certificates --mode=root --format=tar \
      bookworm "$base_tar.part"
    mv "$base_tar.part" "$base_tar"
  fi
  podman import --quiet "$base_tar" "$base" >/dev/null
fi
t_base=$(date +%s)

# The binary without its debug sections (the debug build is ~400 MB with them).
strip --strip-debug -o "$work/cmdx" "$bin"
mkdir "$work/data"
pm build --quiet -f packaging/container/Containerfile -t "$image" "$work" >/dev/null
t_build=$(date +%s)
say "image built: $(podman image inspect --format '{{.Size}}' "$image" | awk '{printf "%.0f MB", $1/1e6}')"

pm run -d --name "$name-hub" --network=host "${limits[@]}" \
  -e CMDX_ADMIN_EMAIL=admin@smoke.test -e CMDX_ADMIN_PASSWORD=smoke-password-1 \
  "$image" hub --listen "127.0.0.1:$port" --data /var/lib/cmdx-hub >/dev/null
url=http://127.0.0.1:$port
for _ in $(seq 1 100); do
  curl -fsS "$url/readyz" >/dev/null 2>&1 && break
  sleep 0.2
done
curl -fsS "$url/readyz" >/dev/null || { podman logs "$name-hub" >&2; say "the hub in the image never became ready"; exit 1; }
say "hub from the image is ready on $url (unprivileged: uid $(pm exec "$name-hub" id -u))"

admin=$(curl -fsS "$url/api/auth/login" -H 'content-type: application/json' \
  -d '{"email":"admin@smoke.test","password":"smoke-password-1"}' | sed -E 's/.*"token":"([^"]+)".*/\1/')
token=$(curl -fsS "$url/api/workers/tokens" -H "authorization: Bearer $admin" \
  -H 'content-type: application/json' -d '{"name":"smoke"}' | sed -E 's/.*"token":"([^"]+)".*/\1/')

pm run -d --name "$name-agent" --network=host "${limits[@]}" --privileged --user 0 \
  -e CMDX_AGENT_TOKEN="$token" \
  "$image" agent --hub "$url" --worker-id smoke-agent --concurrency 1 --work-dir /var/lib/cmdx-agent >/dev/null
job=$(curl -fsS "$url/api/jobs/submit" -H "authorization: Bearer $admin" -H 'content-type: application/json' \
  -d '{"command":"echo debian $(cat /etc/debian_version) uid $(id -u)","tty":false}' | sed -E 's/.*"jobId":"([^"]+)".*/\1/')
status=
for _ in $(seq 1 150); do
  doc=$(curl -fsS "$url/api/jobs/status?jobId=$job" -H "authorization: Bearer $admin")
  status=$(printf '%s' "$doc" | sed -E 's/.*"status":"([a-z]+)".*/\1/')
  case $status in completed | failed | cancelled) break ;; esac
  sleep 0.2
done
if [ "$status" != completed ]; then
  say "the job did not complete ($status): $doc"
  podman logs "$name-agent" >&2 || true
  exit 1
fi
out=$(printf '%s' "$doc" | sed -E 's/.*"stdout":"([^"]*)".*/\1/')
case $out in
  "debian 12."*" uid "[1-9]*) ;;
  *) say "unexpected job output: $out"; exit 1 ;;
esac
t_end=$(date +%s)
say "a job ran through the agent in the image: ${out%\\n}"
say "seconds: base $((t_base - t0)), build $((t_build - t_base)), run $((t_end - t_build))"
