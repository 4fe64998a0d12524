#!/usr/bin/env bash
# Instructions per proxied request (public route), counted by callgrind: deterministic, so a
# change of a few percent shows on this shared, noisy machine where req/s and CPU time cannot
# show it. One worker, wrk with 16 connections for 5 s after a 3 s warm-up; counters are zeroed
# after the warm-up and dumped after the measured run. Memory copies are over-counted
# (valgrind counts each byte of `rep movsb`), so compare builds with this, and compare with
# nginx with benches/load.sh.
#
#   benches/instructions.sh                    # this checkout's release build
#   benches/instructions.sh OTHER_BINARY...    # and other gatehouse binaries, same run
#
# Needs valgrind, nginx-light and wrk (installed when missing, as load.sh does). Everything
# listens on 127.0.0.1; processes are stopped by pid; files live in one temp dir.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
SUDO=()
if [[ $(id -u) -ne 0 ]]; then SUDO=(sudo); fi
for pair in valgrind:valgrind nginx:nginx-light wrk:wrk; do
    bin=${pair%%:*} pkg=${pair#*:}
    if ! command -v "$bin" >/dev/null 2>&1 && [[ ! -x /usr/sbin/$bin ]]; then
        "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
            --no-install-recommends "$pkg" </dev/null >/dev/null
    fi
done
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
BINS=("$TARGET_DIR/release/gatehouse" "$@")
if [[ $# -eq 0 && -z ${SKIP_BUILD:-} ]]; then
    cargo build --release --locked --quiet
fi

TMP=$(mktemp -d)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    if [[ -s $TMP/up.pid ]]; then kill -TERM "$(<"$TMP/up.pid")" 2>/dev/null || true; fi
    sleep 0.5
    rm -rf "$TMP"
}
trap cleanup EXIT INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_http() {
    for _ in $(seq 200); do
        curl -sf -o /dev/null "$1" && return 0
        sleep 0.1
    done
    echo "instructions.sh: $1 did not answer" >&2
    exit 1
}

UP_PORT=$(free_port)
mkdir -p "$TMP/nginx"
cat >"$TMP/up.conf" <<CONF
worker_processes 1;
pid $TMP/up.pid;
error_log $TMP/up.err;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path $TMP/nginx/body; proxy_temp_path $TMP/nginx/proxy;
    fastcgi_temp_path $TMP/nginx/fastcgi; uwsgi_temp_path $TMP/nginx/uwsgi;
    scgi_temp_path $TMP/nginx/scgi;
    server { listen 127.0.0.1:$UP_PORT; location / { return 200 "ok"; } }
}
CONF
"$NGINX" -c "$TMP/up.conf"
wait_http "http://127.0.0.1:$UP_PORT/"

for bin in "${BINS[@]}"; do
    port=$(free_port)
    cat >"$TMP/gw.toml" <<TOML
[server]
listen = "127.0.0.1:$port"
workers = 1

[log]
access_log = false
level = "error"

[[upstreams]]
url = "http://127.0.0.1:$UP_PORT"
TOML
    out="$TMP/callgrind.out"
    valgrind --tool=callgrind --callgrind-out-file="$out" --dump-instr=no \
        "$bin" run --config "$TMP/gw.toml" >"$TMP/gw.log" 2>&1 &
    vg=$!
    PIDS+=("$vg")
    wait_http "http://127.0.0.1:$port/healthz"
    wrk -t1 -c16 -d3s "http://127.0.0.1:$port/" >/dev/null
    callgrind_control --zero "$vg" >/dev/null 2>&1
    requests=$(wrk -t1 -c16 -d5s "http://127.0.0.1:$port/" | awk '/requests in/ {print $1}')
    callgrind_control --dump=measured "$vg" >/dev/null 2>&1
    kill -TERM "$vg" 2>/dev/null || true
    wait "$vg" 2>/dev/null || true
    file=$(ls -t "$out".* | head -1)
    total=$(awk '/^(summary|totals):/ {print $2; exit}' "$file")
    if [[ -z $requests || $requests -eq 0 ]]; then
        echo "instructions.sh: wrk served no request to $bin:" >&2; cat "$TMP/gw.log" >&2
        exit 1
    fi
    echo "$bin: $((total / requests)) instructions/request ($requests requests)"
    rm -f "$out".*
done
