#!/usr/bin/env bash
# Schema-driven fuzzing of the REST API: starts a real `cmdx hub` on a temp dir (loopback,
# rate limits off), signs in as the bootstrap admin, mints a worker token, and runs
# schemathesis (PyPI) against the hub's own /api/openapi.json with both credentials. Checks:
# no 5xx (`not_a_server_error`) and every response matching its documented schema
# (`response_schema_conformance`). Bounded by ST_MAX_EXAMPLES (default 25) per operation and
# ST_MAX_TIME seconds (default 240). Exits non-zero on any finding.
# Installs schemathesis with pip when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never

max_examples="${ST_MAX_EXAMPLES:-25}"
max_time="${ST_MAX_TIME:-240}"
seed="${ST_SEED:-1}"

if ! command -v st >/dev/null 2>&1; then
    python3 -m pip install --quiet schemathesis
fi
cargo build -p cmdx
bin="${CMDX_BIN:-${CARGO_TARGET_DIR:-target}/debug/cmdx}"

work="$(mktemp -d)"
hub_pid=""
cleanup() {
    if [[ -n "$hub_pid" ]]; then
        kill "$hub_pid" 2>/dev/null || true
        wait "$hub_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

admin_email="admin@schemathesis.local"
admin_password="schemathesis-admin-1"
CMDX_ADMIN_EMAIL="$admin_email" CMDX_ADMIN_PASSWORD="$admin_password" RUST_LOG="${RUST_LOG:-warn}" \
    "$bin" hub --listen 127.0.0.1:0 --data "$work/data" \
    --rate-limit-per-min 0 --read-rate-limit-per-sec 0 --login-rate-limit-per-min 0 \
    >"$work/hub.out" 2>"$work/hub.err" &
hub_pid=$!

url=""
for _ in $(seq 1 300); do
    url="$(sed -n 's/^cmdx hub listening on //p' "$work/hub.out" | head -n 1)"
    [[ -n "$url" ]] && break
    if ! kill -0 "$hub_pid" 2>/dev/null; then
        cat "$work/hub.err" >&2
        echo "FAIL: the hub exited before listening" >&2
        exit 1
    fi
    sleep 0.1
done
[[ -n "$url" ]] || { echo "FAIL: the hub did not start" >&2; exit 1; }
echo "hub at $url"

json_field() {
    python3 -c 'import json,sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"
}
token="$(curl -fsS -X POST "$url/api/auth/login" -H 'content-type: application/json' \
    -d "{\"email\":\"$admin_email\",\"password\":\"$admin_password\"}" | json_field token)"
worker_token="$(curl -fsS -X POST "$url/api/workers/tokens" -H "authorization: Bearer $token" \
    -H 'content-type: application/json' -d '{"name":"schemathesis"}' | json_field token)"

# WebSocket handshakes (101) are not HTTP request/response pairs schemathesis can judge; the
# e2e tests cover them. Logout is left out so the session stays valid for the whole run.
# x-worker-token takes precedence over Authorization on worker routes, so both credentials
# can ride on every request: user routes read the bearer, worker routes the header.
# Raw `application/zip` bodies (uploads): schemathesis has no serializer for them; send the
# generated value as bytes (binary strings pass through, anything else as its JSON text).
cat >"$work/cmdx_st_hooks.py" <<'PY'
import json

import schemathesis


@schemathesis.serializer("application/zip")
def zip_body(ctx, value):
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    return json.dumps(value).encode()
PY
run_st() {
    rm -rf "$work/report"
    PYTHONPATH="$work${PYTHONPATH:+:$PYTHONPATH}" SCHEMATHESIS_HOOKS=cmdx_st_hooks \
    st run "$url/api/openapi.json" \
        --url "$url" \
        -H "Authorization: Bearer $token" \
        -H "x-worker-token: $worker_token" \
        --checks not_a_server_error,response_schema_conformance \
        --exclude-path-regex '^/ws/' \
        --exclude-path /api/auth/logout \
        --max-examples "$max_examples" \
        --max-time "$max_time" \
        --seed "$seed" \
        --request-timeout 20 \
        --workers 2 \
        --suppress-health-check all \
        --report junit --report-dir "$work/report" 2>&1 | tee "$work/st.out"
    return "${PIPESTATUS[0]}"
}
status=0
run_st || status=$?
# The tool itself has crashed inside CPython (`SystemError: AST constructor recursion depth
# mismatch` from hypothesis, after every case had passed): when the only errors are such
# crashes of the interpreter and no check failed, run once more. A check failure, a timeout or
# a dead hub is never retried.
if [[ $status -ne 0 ]] && ! grep -qs '<failure' "$work"/report/*.xml \
    && grep -qE '(SystemError|RecursionError)' "$work/st.out"; then
    echo "schemathesis crashed inside the Python interpreter (not a finding); running it once more" >&2
    status=0
    run_st || status=$?
fi

if ! kill -0 "$hub_pid" 2>/dev/null; then
    echo "FAIL: the hub died during the run" >&2
    tail -n 50 "$work/hub.err" >&2
    exit 1
fi
if [[ $status -ne 0 ]]; then
    echo "FAIL: schemathesis reported findings (exit $status)" >&2
    grep -iE 'panick|error' "$work/hub.err" | tail -n 20 >&2 || true
    exit "$status"
fi
echo "schemathesis: no server errors, responses match the schema"
