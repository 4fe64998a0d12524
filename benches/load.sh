#!/usr/bin/env bash
# Load benchmark: Gatehouse against a plain nginx reverse proxy and the upstream itself, all on
# 127.0.0.1 in one run, so that ratios (not absolute figures) are compared. See benches/README.md.
#
#   benches/load.sh                         # 10 s per measured run, 3 interleaved repeats
#   DURATION=3 REPEAT=1 benches/load.sh     # quick look
#
# Environment: DURATION (s, default 10), WARMUP (s, default 2), REPEAT (default 3), CONNS (64),
# THREADS (2), SKIP_BUILD=1 (use an existing binary), GATEHOUSE_BIN (binary path; default
# <cargo target dir>/release/gatehouse), BASE_BIN (optional: a second gateway binary, e.g. a
# build of main, measured in the same run as `base` and `base-session`), CARGO_TARGET_DIR (as
# cargo).
#
# More scenarios: one `measure NAME URL PIDS [wrk args...]` call each in main() below, e.g.
#   measure gateway-bearer "http://127.0.0.1:$GW_PORT/" "$GW_PID" -H "Authorization: Bearer $TOKEN"
# PIDS is a space-separated list of server pids; their direct children (nginx workers, Apache
# children) are found with `pgrep -P` at each run and counted too.
set -euo pipefail

DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
REPEAT=${REPEAT:-3}
CONNS=${CONNS:-64}
THREADS=${THREADS:-2}
NGINX_WORKERS=${NGINX_WORKERS:-2}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
export DEBIAN_FRONTEND=noninteractive

log() { echo "load.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

# --- installs (idempotent, quiet when present) -------------------------------------------------
SUDO=()
if [[ $(id -u) -ne 0 ]]; then SUDO=(sudo); fi
APT_UPDATED=0
need_apt() {
    local bin=$1 pkg=$2
    if command -v "$bin" >/dev/null 2>&1 || [[ -x /usr/sbin/$bin || -x /sbin/$bin ]]; then
        return 0
    fi
    log "installing $pkg (for $bin)"
    if [[ $APT_UPDATED -eq 0 ]]; then
        "${SUDO[@]}" apt-get update -qq
        APT_UPDATED=1
    fi
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends "$pkg" </dev/null >/dev/null
}

# --- processes we start, stopped by pid on exit ------------------------------------------------
TMP=""
NGINX_PIDFILES=()   # nginx instances: stopped through their pid files
CHILD_PIDS=()       # other servers we started (the gateway)
WRK_PID=""          # the running load generator (its `timeout` wrapper)

# pid_alive PID: true while PID runs (a zombie, not yet reaped by init, counts as gone).
pid_alive() {
    local st
    [[ -n $1 ]] || return 1
    st=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    st=${st##*) }
    [[ ${st:0:1} != Z ]]
}

# wait_gone PID SECONDS: true once PID has exited.
wait_gone() {
    local pid=$1 deadline=$((SECONDS + $2))
    while pid_alive "$pid"; do
        ((SECONDS < deadline)) || return 1
        sleep 0.1
    done
}

cleanup() {
    local pf pid
    if pid_alive "$WRK_PID"; then
        kill -TERM "$WRK_PID" 2>/dev/null || true   # timeout passes it on to wrk
        wait_gone "$WRK_PID" 5 || true
    fi
    for pid in "${CHILD_PIDS[@]}"; do
        if pid_alive "$pid"; then
            kill -TERM "$pid" 2>/dev/null || true
            wait_gone "$pid" 10 || kill -KILL "$pid" 2>/dev/null || true
        fi
    done
    for pf in "${NGINX_PIDFILES[@]}"; do
        [[ -s $pf ]] || continue
        pid=$(<"$pf")
        if pid_alive "$pid"; then
            local workers=()
            mapfile -t workers < <(pgrep -P "$pid" || true)
            kill -QUIT "$pid" 2>/dev/null || true
            if ! wait_gone "$pid" 10; then
                kill -KILL "$pid" "${workers[@]}" 2>/dev/null || true
            fi
        fi
    done
    if [[ -n $TMP && -d $TMP ]]; then rm -rf "$TMP"; fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# free_ports N: N distinct free loopback ports (all bound at once, then released).
free_ports() {
    python3 - "$1" <<'PY'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
PY
}

# wait_http URL SECONDS [PID]: polls URL until it answers (any HTTP status), with a deadline;
# gives up early when PID (if given) has exited.
wait_http() {
    local url=$1 deadline=$((SECONDS + $2)) pid=${3:-}
    while ! curl -s -o /dev/null --max-time 1 "$url"; do
        if [[ -n $pid ]] && ! pid_alive "$pid"; then return 1; fi
        ((SECONDS < deadline)) || return 1
        sleep 0.1
    done
}

# nginx_conf NAME PORT WORKERS SERVER_BLOCK_BODY [HTTP_EXTRA]: writes $TMP/NAME/nginx.conf.
nginx_conf() {
    local name=$1 port=$2 workers=$3 body=$4 extra=${5:-}
    local dir=$TMP/$name
    mkdir -p "$dir"
    cat >"$dir/nginx.conf" <<CONF
worker_processes $workers;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    default_type text/plain;
    client_body_temp_path $dir/client_body_temp;
    proxy_temp_path $dir/proxy_temp;
    fastcgi_temp_path $dir/fastcgi_temp;
    uwsgi_temp_path $dir/uwsgi_temp;
    scgi_temp_path $dir/scgi_temp;
    keepalive_timeout 65s;
    keepalive_requests 1000000;
$extra
    server {
        listen 127.0.0.1:$port;
$body
    }
}
CONF
}

# start_nginx NAME: starts the instance configured in $TMP/NAME; prints the master pid.
start_nginx() {
    local dir=$TMP/$1
    NGINX_PIDFILES+=("$dir/nginx.pid")
    "$NGINX" -e "$dir/error.log" -c "$dir/nginx.conf" -p "$dir" \
        || { cat "$dir/error.log" >&2 || true; die "nginx $1 did not start"; }
    local deadline=$((SECONDS + 10))
    until [[ -s $dir/nginx.pid ]]; do
        ((SECONDS < deadline)) || die "nginx $1 wrote no pid file"
        sleep 0.05
    done
}

# --- measurement --------------------------------------------------------------------------------
CLK_TCK=$(getconf CLK_TCK)

# cpu_ticks PIDS...: utime+stime (fields 14, 15 of /proc/PID/stat) summed over PIDS and their
# direct children.
cpu_ticks() {
    local total=0 pid child stat rest all=() f=()
    for pid in "$@"; do
        all+=("$pid")
        while read -r child; do all+=("$child"); done < <(pgrep -P "$pid" || true)
    done
    for pid in "${all[@]}"; do
        stat=$(cat "/proc/$pid/stat" 2>/dev/null) || continue
        rest=${stat##*) }          # drop "pid (comm) ": comm may hold spaces
        read -ra f <<<"$rest"      # f[0] is field 3, so field 14 is f[11], 15 is f[12]
        total=$((total + f[11] + f[12]))
    done
    echo "$total"
}

# to_us VALUE: wrk latency ("812.00us", "1.23ms", "1.01s") in microseconds.
to_us() {
    awk -v v="$1" 'BEGIN {
        n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
        if (u == "ms") n *= 1000; else if (u == "s") n *= 1000000; else if (u == "m") n *= 60000000
        printf "%.1f", n }'
}

SCEN_NAMES=()
SCEN_URLS=()
SCEN_PIDS=()
SCEN_ARGS=()        # wrk args of each scenario, shell-quoted (printf %q)
SCEN_PREP=()        # a command run before each of the scenario's runs (may be empty)

# measure NAME URL PIDS [wrk args...]: registers a target; run_all measures all of them,
# interleaved, REPEAT times each. PREP (environment, optional) is a command run before each run.
measure() {
    local name=$1 url=$2 pids=$3
    shift 3
    SCEN_PREP+=("${PREP:-}")
    SCEN_NAMES+=("$name")
    SCEN_URLS+=("$url")
    SCEN_PIDS+=("$pids")
    if (($#)); then SCEN_ARGS+=("$(printf '%q ' "$@")"); else SCEN_ARGS+=(""); fi
}

# run_wrk OUT ARGS...: wrk bounded by `timeout`, in the background so that `wait` returns at once
# when a signal comes and our INT/TERM trap runs (wrk itself treats SIGINT as "stop and report").
run_wrk() {
    local out=$1
    shift
    timeout "$((DURATION + WARMUP + 30))" wrk "$@" >"$out" 2>&1 </dev/null &
    WRK_PID=$!
    wait "$WRK_PID" || true
    WRK_PID=""
}

# measure_once INDEX ROUND: warm-up, then one measured run; appends a line to $TMP/results/NAME:
# rps p50_us p99_us cpu_us_per_req requests non2xx socket_errors
measure_once() {
    local i=$1 round=$2
    local name=${SCEN_NAMES[$i]} url=${SCEN_URLS[$i]} out=$TMP/wrk-${SCEN_NAMES[$i]}-$2.txt
    local -a pids wargs
    read -ra pids <<<"${SCEN_PIDS[$i]}"
    eval "wargs=(${SCEN_ARGS[$i]})"
    local pid
    for pid in "${pids[@]}"; do
        pid_alive "$pid" || { log "!!! $name: server pid $pid is gone; skipping run $round"; return 0; }
    done
    if [[ -n ${SCEN_PREP[$i]} ]] && ! eval "${SCEN_PREP[$i]}"; then
        log "!!! $name: preparing run $round failed; skipping it"
        return 0
    fi
    run_wrk /dev/null -t"$THREADS" -c"$CONNS" -d"${WARMUP}s" "${wargs[@]}" "$url"
    local t0 t1
    t0=$(cpu_ticks "${pids[@]}")
    run_wrk "$out" -t"$THREADS" -c"$CONNS" -d"${DURATION}s" --latency "${wargs[@]}" "$url"
    t1=$(cpu_ticks "${pids[@]}")

    local requests rps p50 p99 non2xx errors cpu
    requests=$(awk '/requests in/ { print $1; exit }' "$out")
    rps=$(awk '/^Requests\/sec:/ { print $2; exit }' "$out")
    p50=$(awk '$1 == "50%" { print $2; exit }' "$out")
    p99=$(awk '$1 == "99%" { print $2; exit }' "$out")
    non2xx=$(awk -F': *' '/Non-2xx or 3xx responses/ { print $2; exit }' "$out")
    errors=$(awk '/Socket errors:/ { sub(/^ *Socket errors: */, ""); gsub(/ /, ""); print; exit }' "$out")
    requests=${requests:-0} rps=${rps:-0} non2xx=${non2xx:-0} errors=${errors:-none}
    if [[ -n $p50 ]]; then p50=$(to_us "$p50"); else p50=nan; fi
    if [[ -n $p99 ]]; then p99=$(to_us "$p99"); else p99=nan; fi
    if ((requests > 0)); then
        cpu=$(awk -v d=$((t1 - t0)) -v hz="$CLK_TCK" -v n="$requests" 'BEGIN { printf "%.2f", d / hz * 1e6 / n }')
    else
        cpu=nan
    fi
    printf '%s %s %s %s %s %s %s\n' "$rps" "$p50" "$p99" "$cpu" "$requests" "$non2xx" "$errors" >>"$TMP/results/$name"
    log "$name run $round: $rps req/s, p50 ${p50} us, p99 ${p99} us, ${cpu} us CPU/req, $requests requests, non-2xx $non2xx, socket errors $errors"
    if [[ $non2xx != 0 ]]; then
        log "!!! $name: $non2xx of $requests responses were NOT 2xx/3xx: its figures do not measure a working proxy"
    fi
    if [[ $errors != none && $errors != connect0,read0,write0,timeout0 ]]; then
        log "!!! $name: socket errors ($errors)"
    fi
    if ((requests == 0)); then
        log "!!! $name: no request completed; wrk said:"
        sed 's/^/    /' "$out" >&2
    fi
}

run_all() {
    local round i
    mkdir -p "$TMP/results"
    for ((round = 1; round <= REPEAT; round++)); do
        for i in "${!SCEN_NAMES[@]}"; do
            measure_once "$i" "$round"
        done
    done
}

# median NAME COLUMN: median of one column of NAME's results ("nan" values ignored).
median() {
    local file=$TMP/results/$1
    [[ -s $file ]] || { echo nan; return; }
    awk -v c="$2" '$c != "nan" { print $c }' "$file" | sort -g | awk '
        { v[NR] = $1 }
        END { if (NR == 0) print "nan"; else if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

ratio() {
    awk -v a="$1" -v b="$2" 'BEGIN { if (a == "nan" || b == "nan" || b + 0 == 0) print "n/a"; else printf "%.2f", a / b }'
}

report() {
    local name rps p50 p99 cpu non2xx
    declare -gA MED_RPS MED_P99 MED_CPU
    echo
    echo "== Gatehouse load benchmark"
    echo "machine: $(nproc) cores, $(awk -F': *' '/^model name/ { print $2; exit }' /proc/cpuinfo), $(uname -r)"
    echo "date:    $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
    echo "commit:  $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD 2>/dev/null || echo ' (dirty)')"
    echo "tools:   $(wrk -v 2>&1 | head -n1 | awk '{ print $1, $2 }'), $("$NGINX" -v 2>&1 | sed 's/.*version: //')"
    echo "method:  wrk -t$THREADS -c$CONNS -d${DURATION}s --latency after a ${WARMUP}s warm-up; median of $REPEAT interleaved runs; 2-byte upstream body"
    echo
    printf '%-16s %12s %10s %10s %13s %10s\n' target 'req/s' 'p50 (us)' 'p99 (us)' 'CPU us/req' 'non-2xx'
    for name in "${SCEN_NAMES[@]}"; do
        rps=$(median "$name" 1); p50=$(median "$name" 2); p99=$(median "$name" 3); cpu=$(median "$name" 4)
        non2xx=$(awk '{ s += $6 } END { print s + 0 }' "$TMP/results/$name" 2>/dev/null || echo 0)
        MED_RPS[$name]=$rps; MED_P99[$name]=$p99; MED_CPU[$name]=$cpu
        printf '%-16s %12.0f %10.0f %10.0f %13.2f %10s\n' "$name" "$rps" "$p50" "$p99" "$cpu" "$non2xx"
    done
    for name in "${SKIPPED[@]}"; do
        printf '%-16s %s\n' "$name" "NOT MEASURED"
    done
    echo
    for name in "${SCEN_NAMES[@]}"; do
        [[ $name == direct || $name == nginx ]] && continue
        if [[ $name == *-session && -n ${MED_RPS[${name%-session}]:-} ]]; then
            echo "$name/${name%-session}: req/s $(ratio "${MED_RPS[$name]}" "${MED_RPS[${name%-session}]}"), CPU/req $(ratio "${MED_CPU[$name]}" "${MED_CPU[${name%-session}]}")"
        fi
        if [[ -n ${MED_RPS[nginx]:-} ]]; then
            echo "$name/nginx:  req/s $(ratio "${MED_RPS[$name]}" "${MED_RPS[nginx]}"), CPU/req $(ratio "${MED_CPU[$name]}" "${MED_CPU[nginx]}"), p99 $(ratio "${MED_P99[$name]}" "${MED_P99[nginx]}")"
        fi
        if [[ -n ${MED_RPS[direct]:-} ]]; then
            echo "$name/direct: req/s $(ratio "${MED_RPS[$name]}" "${MED_RPS[direct]}")"
        fi
    done
    if [[ -n ${MED_RPS[nginx]:-} && -n ${MED_RPS[direct]:-} ]]; then
        echo "nginx/direct: req/s $(ratio "${MED_RPS[nginx]}" "${MED_RPS[direct]}"), CPU/req $(ratio "${MED_CPU[nginx]}" "${MED_CPU[direct]}")"
    fi
    local bad=0
    for name in "${SCEN_NAMES[@]}"; do
        if [[ ! -s $TMP/results/$name ]] || awk '$6 != 0 || $5 == 0 { bad = 1 } END { exit !bad }' "$TMP/results/$name"; then
            echo "!!! $name: non-2xx responses or failed runs: its figures are not those of a working proxy"
            bad=1
        fi
    done
    for name in "${SKIPPED[@]}"; do echo "!!! $name: not measured (see above)"; done
    ((bad == 0 && ${#SKIPPED[@]} == 0)) && echo "all targets answered 2xx"
    return 0
}

# --- main ---------------------------------------------------------------------------------------
SKIPPED=()

main() {
    need_apt wrk wrk
    need_apt nginx nginx-light
    need_apt curl curl
    NGINX=$(command -v nginx || echo /usr/sbin/nginx)

    local bin=${GATEHOUSE_BIN:-}
    if [[ -z $bin ]]; then
        local target_dir
        target_dir=$(cargo metadata --format-version 1 --no-deps |
            python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
        bin=$target_dir/release/gatehouse
    fi
    if [[ ${SKIP_BUILD:-0} != 1 ]]; then
        log "cargo build --release (target $bin)"
        cargo build --release --locked --bin gatehouse
    fi
    [[ -x $bin ]] || die "no gateway binary at $bin"

    TMP=$(mktemp -d "${TMPDIR:-/tmp}/gatehouse-bench.XXXXXX")
    local up_port ng_port gw_port
    read -r up_port ng_port gw_port < <(free_ports 3)

    # (a) upstream: 2-byte answer, keep-alive.
    nginx_conf upstream "$up_port" "$NGINX_WORKERS" '        location / { return 200 "ok"; }'
    start_nginx upstream
    local up_pid
    up_pid=$(<"$TMP/upstream/nginx.pid")
    wait_http "http://127.0.0.1:$up_port/" 10 || die "upstream nginx not answering"

    # (b) nginx as a plain reverse proxy with upstream keep-alive.
    nginx_conf nginx "$ng_port" "$NGINX_WORKERS" '        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }' "    upstream backend {
        server 127.0.0.1:$up_port;
        keepalive 64;
        keepalive_requests 1000000;
    }"
    start_nginx nginx
    local ng_pid
    ng_pid=$(<"$TMP/nginx/nginx.pid")
    wait_http "http://127.0.0.1:$ng_port/" 10 || die "nginx proxy not answering"

    # (c) the gateway.
    # "/" is public (the plain proxy path); "/app/" needs a session. The provider is never
    # called on the session-cookie path, so a loopback issuer that does not answer will do.
    cat >"$TMP/gatehouse.toml" <<TOML
[server]
listen = "127.0.0.1:$gw_port"
public_url = "http://127.0.0.1:$gw_port"

[log]
access_log = false
level = "error"

[provider]
issuer = "http://127.0.0.1:9"
client_id = "bench"
client_secret = "bench"

[session]
secret = "$(head -c 32 /dev/urandom | base64)"

[authorization]
default_policy = "public"

[[routes]]
path_prefix = "/app"
policy = "authenticated"

[[upstreams]]
url = "http://127.0.0.1:$up_port"
TOML
    local gw_pid gw_ok=1
    start_gateway "$bin" "$TMP/gatehouse.toml" "$gw_port" gatehouse || gw_ok=0
    gw_pid=$STARTED_PID
    ((gw_ok)) || SKIPPED+=(gateway)
    local base_pid="" base_port=""
    if [[ -n ${BASE_BIN:-} ]]; then
        read -r base_port < <(free_ports 1)
        sed "s/127.0.0.1:$gw_port/127.0.0.1:$base_port/g" "$TMP/gatehouse.toml" >"$TMP/base.toml"
        if start_gateway "$BASE_BIN" "$TMP/base.toml" "$base_port" base; then
            base_pid=$STARTED_PID
        else
            SKIPPED+=(base)
        fi
    fi

    log "direct 127.0.0.1:$up_port (pid $up_pid), nginx 127.0.0.1:$ng_port (pid $ng_pid), gateway 127.0.0.1:$gw_port (pid $gw_pid)"

    measure direct "http://127.0.0.1:$up_port/" "$up_pid"
    measure nginx "http://127.0.0.1:$ng_port/" "$ng_pid"
    if ((gw_ok)); then
        measure gateway "http://127.0.0.1:$gw_port/" "$gw_pid"
        measure_session gateway-session "$gw_port" "$gw_pid"
    fi
    if [[ -n $base_pid ]]; then
        measure base "http://127.0.0.1:$base_port/" "$base_pid"
        measure_session base-session "$base_port" "$base_pid"
    fi
    # Later: bearer token, Apache mod_auth_openidc, e.g.
    #   measure gateway-bearer "http://127.0.0.1:$gw_port/" "$gw_pid" -H "Authorization: Bearer $token"

    run_all
    report
}

# start_gateway BIN CONFIG PORT NAME: starts a gateway (its pid in STARTED_PID), waits for
# /healthz; false when it does not come up.
STARTED_PID=""
start_gateway() {
    local bin=$1 config=$2 port=$3 name=$4 pid
    "$bin" run --config "$config" </dev/null >"$TMP/$name.log" 2>&1 &
    pid=$!
    STARTED_PID=$pid
    CHILD_PIDS+=("$pid")
    if ! wait_http "http://127.0.0.1:$port/healthz" 30 "$pid"; then
        log "!!! $name not ready on 127.0.0.1:$port/healthz ($(pid_alive "$pid" && echo 'still running' || echo 'exited')); its log:"
        if [[ -s $TMP/$name.log ]]; then sed 's/^/    /' "$TMP/$name.log" >&2; else log "    (empty)"; fi
        return 1
    fi
}

# measure_session NAME PORT PID: the session-cookie target. A browser stores the refreshed
# cookie the gateway sends once a minute; wrk cannot, so a cookie made at start would be stale
# after 60 s and every later run would measure re-sealing on every request instead. A fresh
# cookie is made before each run (warm-up included) and read by wrk from a file.
measure_session() {
    local name=$1 port=$2 pid=$3
    if ! session_cookie "$TMP/gatehouse.toml" >"$TMP/cookie"; then
        log "!!! could not make a session cookie; $name not measured"
        SKIPPED+=("$name")
        return 0
    fi
    cat >"$TMP/cookie.lua" <<LUA
init = function(args)
    local f = assert(io.open("$TMP/cookie", "r"))
    wrk.headers["Cookie"] = f:read("*l")
    f:close()
end
LUA
    PREP="session_cookie '$TMP/gatehouse.toml' >'$TMP/cookie'" \
        measure "$name" "http://127.0.0.1:$port/app/" "$pid" -s "$TMP/cookie.lua"
}

# session_cookie CONFIG: a valid session Cookie header value for CONFIG's [session], sealed by
# the gateway's own code (examples/session_cookie.rs).
session_cookie() {
    local target_dir=${CARGO_TARGET_DIR:-target}
    if [[ ${SKIP_BUILD:-0} != 1 ]] || [[ ! -x $target_dir/release/examples/session_cookie ]]; then
        cargo build --release --quiet --example session_cookie >&2 || return 1
    fi
    "$target_dir/release/examples/session_cookie" "$1"
}

main "$@"
