#!/usr/bin/env bash
# Load benchmark: Gatehouse against a plain nginx reverse proxy, the upstream itself and Apache +
# mod_auth_openidc validating the same bearer tokens, all on 127.0.0.1 in one run, so that ratios
# (not absolute figures) are compared. See benches/README.md.
#
#   benches/load.sh                         # 10 s per measured run, 3 interleaved repeats
#   DURATION=3 REPEAT=1 benches/load.sh     # quick look
#   TARGETS="nginx gateway-bearer-hot apache-oidc-hot" benches/load.sh   # some targets only
#   BASE_BIN=/path/to/gatehouse-of-main benches/load.sh   # before/after: adds base, base-session
#
# Environment: DURATION (s, default 10), WARMUP (s, default 2), REPEAT (default 3), CONNS (64),
# THREADS (2), TARGETS (space-separated, default all: $ALL_TARGETS below, plus $BASE_TARGETS
# when BASE_BIN is set), SKIP_BUILD=1 (use existing binaries), GATEHOUSE_BIN (binary path;
# default <cargo target dir>/release/gatehouse), BASE_BIN (optional: a second gateway binary,
# e.g. a build of main, measured in the same run with the same configuration as targets `base`
# and `base-session`), CARGO_TARGET_DIR (as cargo), NGINX_WORKERS (2), APACHE_PROCS (4),
# APACHE_THREADS (64: threads per Apache process).
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
APACHE_PROCS=${APACHE_PROCS:-4}
APACHE_THREADS=${APACHE_THREADS:-64}
ALL_TARGETS="direct nginx nginx-token hyper-floor gateway gateway-session gateway-session-redis gateway-bearer-hot gateway-bearer-10k gateway-bearer-nocache gateway-upstream-token apache-oidc-hot apache-oidc-10k"
BASE_TARGETS="base base-session"   # only with BASE_BIN
BASE_BIN=${BASE_BIN:-}
if [[ -n $BASE_BIN ]]; then TARGETS=${TARGETS:-$ALL_TARGETS $BASE_TARGETS}; else TARGETS=${TARGETS:-$ALL_TARGETS}; fi

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
APACHE_PIDFILES=()  # Apache instances: stopped through their pid files
CHILD_PIDS=()       # other servers we started (gateways, the base gateway, the token issuer)
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
    for pf in "${APACHE_PIDFILES[@]}"; do
        [[ -s $pf ]] || continue
        pid=$(<"$pf")
        if pid_alive "$pid"; then
            local children=()
            mapfile -t children < <(pgrep -P "$pid" || true)
            kill -TERM "$pid" 2>/dev/null || true   # Apache's "stop now" (it stops its children)
            if ! wait_gone "$pid" 10; then
                kill -KILL "$pid" "${children[@]}" 2>/dev/null || true
            fi
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
SCEN_PREP=()        # a command run before each wrk run of the scenario, shell-quoted (may be empty)

# measure NAME URL PIDS [wrk args...]: registers a target; run_all measures all of them,
# interleaved, REPEAT times each. PREP (environment, optional): a command, shell-quoted, run
# before each wrk run of the target (the warm-up and the measured run), with the round and
# "warm-up" or "measured" as two more arguments; when it fails, that round is skipped.
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
    local -a pids wargs prep
    read -ra pids <<<"${SCEN_PIDS[$i]}"
    eval "wargs=(${SCEN_ARGS[$i]})"
    eval "prep=(${SCEN_PREP[$i]})"
    local pid
    for pid in "${pids[@]}"; do
        pid_alive "$pid" || { log "!!! $name: server pid $pid is gone; skipping run $round"; return 0; }
    done
    if ((${#prep[@]})) && ! "${prep[@]}" "$round" warm-up; then
        log "!!! $name: preparing run $round (warm-up) failed; skipping it"
        return 0
    fi
    run_wrk /dev/null -t"$THREADS" -c"$CONNS" -d"${WARMUP}s" "${wargs[@]}" "$url"
    if ((${#prep[@]})) && ! "${prep[@]}" "$round" measured; then
        log "!!! $name: preparing run $round failed; skipping it"
        return 0
    fi
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

# goal RATIO MIN: "met" or "NOT met".
goal() {
    awk -v r="$1" -v m="$2" 'BEGIN { if (r == "n/a") print "n/a"; else if (r + 0 >= m + 0) print "met"; else print "NOT met" }'
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
    echo "tools:   $(wrk -v 2>&1 | head -n1 | awk '{ print $1, $2 }'), $("$NGINX" -v 2>&1 | sed 's/.*version: //')${APACHE_VERSION:+, $APACHE_VERSION}"
    echo "method:  wrk -t$THREADS -c$CONNS -d${DURATION}s --latency after a ${WARMUP}s warm-up; median of $REPEAT interleaved runs; 2-byte upstream body"
    echo "load:    1-min load average $LOAD_START before the runs, $(cut -d' ' -f1 /proc/loadavg) after ($(nproc) cores; more than that means other work shared the cores)"
    echo
    printf '%-24s %12s %10s %10s %13s %10s\n' target 'req/s' 'p50 (us)' 'p99 (us)' 'CPU us/req' 'non-2xx'
    for name in "${SCEN_NAMES[@]}"; do
        rps=$(median "$name" 1); p50=$(median "$name" 2); p99=$(median "$name" 3); cpu=$(median "$name" 4)
        non2xx=$(awk '{ s += $6 } END { print s + 0 }' "$TMP/results/$name" 2>/dev/null || echo 0)
        MED_RPS[$name]=$rps; MED_P99[$name]=$p99; MED_CPU[$name]=$cpu
        printf '%-24s %12.0f %10.0f %10.0f %13.2f %10s\n' "$name" "$rps" "$p50" "$p99" "$cpu" "$non2xx"
    done
    for name in "${SKIPPED[@]}"; do
        printf '%-24s %s\n' "$name" "NOT MEASURED"
    done
    echo
    for name in "${SCEN_NAMES[@]}"; do
        [[ $name == direct || $name == nginx ]] && continue
        if [[ $name == *-session && -n ${MED_RPS[${name%-session}]:-} ]]; then
            echo "$name/${name%-session}: req/s $(ratio "${MED_RPS[$name]}" "${MED_RPS[${name%-session}]}"), CPU/req $(ratio "${MED_CPU[$name]}" "${MED_CPU[${name%-session}]}")"
        fi
        if [[ $name == gateway-bearer-* && -n ${MED_RPS[nginx-token]:-} ]]; then
            echo "$name/nginx-token:  req/s $(ratio "${MED_RPS[$name]}" "${MED_RPS[nginx-token]}"), CPU/req $(ratio "${MED_CPU[$name]}" "${MED_CPU[nginx-token]}"), p99 $(ratio "${MED_P99[$name]}" "${MED_P99[nginx-token]}")"
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
    local kind gw ap pair
    # Before/after (BASE_BIN): this build against the base binary, same configuration.
    for pair in gateway:base gateway-session:base-session; do
        gw=${pair%:*} ap=${pair#*:}
        if [[ -n ${MED_RPS[$gw]:-} && -n ${MED_RPS[$ap]:-} ]]; then
            echo "$gw/$ap (this build/BASE_BIN): req/s $(ratio "${MED_RPS[$gw]}" "${MED_RPS[$ap]}"), CPU/req $(ratio "${MED_CPU[$gw]}" "${MED_CPU[$ap]}"), p99 $(ratio "${MED_P99[$gw]}" "${MED_P99[$ap]}")"
        fi
    done
    # The gateway's own cost: the public route against the bare hyper proxy.
    if [[ -n ${MED_RPS[gateway]:-} && -n ${MED_RPS[hyper-floor]:-} ]]; then
        echo "gateway/hyper-floor (the gateway's own work): req/s $(ratio "${MED_RPS[gateway]}" "${MED_RPS[hyper-floor]}"), CPU/req $(ratio "${MED_CPU[gateway]}" "${MED_CPU[hyper-floor]}"), p99 $(ratio "${MED_P99[gateway]}" "${MED_P99[hyper-floor]}")"
    fi
    # Bearer tokens: the gateway against mod_auth_openidc checking the same tokens.
    for pair in gateway-bearer-hot:apache-oidc-hot gateway-bearer-10k:apache-oidc-10k \
        gateway-bearer-nocache:apache-oidc-10k; do
        gw=${pair%:*} ap=${pair#*:}
        if [[ -n ${MED_RPS[$gw]:-} && -n ${MED_RPS[$ap]:-} ]]; then
            echo "$gw/$ap: req/s $(ratio "${MED_RPS[$gw]}" "${MED_RPS[$ap]}"), CPU/req $(ratio "${MED_CPU[$gw]}" "${MED_CPU[$ap]}"), p99 $(ratio "${MED_P99[$gw]}" "${MED_P99[$ap]}")"
        fi
    done
    # Goals (issue 12): a hot bearer token at >= 1.0x nginx's plain-proxy req/s and >= 5x
    # mod_auth_openidc's.
    local r
    for kind in hot 10k; do
        gw=gateway-bearer-$kind ap=apache-oidc-$kind
        [[ -n ${MED_RPS[$gw]:-} ]] || continue
        if [[ -n ${MED_RPS[nginx]:-} ]]; then
            r=$(ratio "${MED_RPS[$gw]}" "${MED_RPS[nginx]}")
            echo "goal $gw >= 1.0x nginx req/s: $r ($(goal "$r" 1.0))"
        fi
        if [[ -n ${MED_RPS[$ap]:-} ]]; then
            r=$(ratio "${MED_RPS[$gw]}" "${MED_RPS[$ap]}")
            echo "goal $gw >= 5x $ap req/s: $r ($(goal "$r" 5))"
        fi
    done
    # Goal (issue 13): the session path with the Redis store at >= 0.8x nginx's plain proxy.
    if [[ -n ${MED_RPS[gateway-session-redis]:-} ]]; then
        if [[ -n ${MED_RPS[gateway-session]:-} ]]; then
            echo "gateway-session-redis/gateway-session: req/s $(ratio "${MED_RPS[gateway-session-redis]}" "${MED_RPS[gateway-session]}"), CPU/req (gateway + redis-server) $(ratio "${MED_CPU[gateway-session-redis]}" "${MED_CPU[gateway-session]}")"
        fi
        if [[ -n ${MED_RPS[nginx]:-} ]]; then
            r=$(ratio "${MED_RPS[gateway-session-redis]}" "${MED_RPS[nginx]}")
            echo "goal gateway-session-redis >= 0.8x nginx req/s: $r ($(goal "$r" 0.8))"
        fi
    fi
    for name in "${SCEN_NAMES[@]}"; do
        if [[ -n ${AUTH_CHECKS[$name]:-} ]]; then
            echo "checked before the runs, $name: ${AUTH_CHECKS[$name]}"
        fi
    done
    local bad=0
    for name in "${SCEN_NAMES[@]}"; do
        if [[ ! -s $TMP/results/$name ]] || awk '$6 != 0 || $5 == 0 { bad = 1 } END { exit !bad }' "$TMP/results/$name"; then
            echo "!!! $name: non-2xx responses or failed runs: its figures are not those of a working proxy"
            bad=1
        fi
    done
    for name in "${SKIPPED[@]}"; do echo "!!! $name: not measured (see above)"; done
    # Noise: a spread of req/s over the repeats ((max - min) / mid-range) above 25 % says the machine was busy.
    local spread
    for name in "${SCEN_NAMES[@]}"; do
        spread=$(awk '$1 + 0 > 0 { v[NR] = $1 + 0 } END {
            n = 0; for (k in v) { if (n == 0 || v[k] < lo) lo = v[k]; if (n == 0 || v[k] > hi) hi = v[k]; n++ }
            if (n > 1) printf "%.0f", (hi - lo) * 100 / ((hi + lo) / 2) }' "$TMP/results/$name" 2>/dev/null || true)
        if [[ -n $spread ]] && ((spread > 25)); then
            echo "!!! $name: req/s varied by ${spread}% between repeats: a noisy machine; trust CPU/req more than req/s"
        fi
    done
    for name in "${AUTH_LAX[@]}"; do
        echo "!!! $name: accepted a token it must refuse (see 'checked before the runs'): it does not check what the others check"
        bad=1
    done
    ((bad == 0 && ${#SKIPPED[@]} == 0)) && echo "all targets answered 2xx"
    return 0
}

# --- main ---------------------------------------------------------------------------------------
SKIPPED=()
AUTH_LAX=()             # targets that accepted a token they must refuse
declare -A AUTH_CHECKS  # NAME -> "none:401 expired:401 ..." (status per token it must refuse)
declare -A WANTED       # the TARGETS of this run

# want NAME...: true when any of NAME is among TARGETS.
want() {
    local n
    for n in "$@"; do [[ -n ${WANTED[$n]:-} ]] && return 0; done
    return 1
}

main() {
    local t
    for t in $TARGETS; do
        [[ " $ALL_TARGETS $BASE_TARGETS " == *" $t "* ]] ||
            die "unknown target '$t' in TARGETS (known: $ALL_TARGETS $BASE_TARGETS)"
        [[ " $BASE_TARGETS " == *" $t "* && -z $BASE_BIN ]] &&
            die "target '$t' needs BASE_BIN=PATH (a second gateway binary)"
        WANTED[$t]=1
    done
    ((${#WANTED[@]})) || die "TARGETS is empty"

    need_apt wrk wrk
    need_apt nginx nginx-light
    need_apt curl curl
    NGINX=$(command -v nginx || echo /usr/sbin/nginx)
    if want apache-oidc-hot apache-oidc-10k; then
        need_apt apache2 apache2
        [[ -f /usr/lib/apache2/modules/mod_auth_openidc.so ]] ||
            need_apt mod_auth_openidc.so libapache2-mod-auth-openidc
        APACHE=$(command -v apache2 || echo /usr/sbin/apache2)
        APACHE_VERSION="$("$APACHE" -v 2>/dev/null | sed -n 's/^Server version: //p')+mod_auth_openidc $(dpkg-query -W -f '${Version}' libapache2-mod-auth-openidc 2>/dev/null || echo '?')"
    fi

    TARGET_DIR=$(cargo metadata --format-version 1 --no-deps |
        python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
    local bin=${GATEHOUSE_BIN:-$TARGET_DIR/release/gatehouse}
    local need_gw=0 need_tokens=0 build=()
    want gateway gateway-session gateway-session-redis gateway-bearer-hot gateway-bearer-10k \
        gateway-bearer-nocache gateway-upstream-token && need_gw=1
    want nginx-token gateway-bearer-hot gateway-bearer-10k gateway-bearer-nocache apache-oidc-hot \
        apache-oidc-10k gateway-upstream-token && need_tokens=1
    if [[ ${SKIP_BUILD:-0} != 1 ]]; then
        ((need_gw)) && [[ -z ${GATEHOUSE_BIN:-} ]] && build+=(--bin gatehouse)
        want gateway-session gateway-session-redis base-session && build+=(--example session_cookie)
        ((need_tokens)) && build+=(--example bearer_tokens)
        want hyper-floor && build+=(--example bare_proxy)
        if ((${#build[@]})); then
            log "cargo build --release --locked ${build[*]}"
            cargo build --release --locked "${build[@]}"
        fi
    fi
    if ((need_gw)); then [[ -x $bin ]] || die "no gateway binary at $bin"; fi
    if want base base-session; then [[ -x $BASE_BIN ]] || die "no gateway binary at BASE_BIN=$BASE_BIN"; fi

    TMP=$(mktemp -d "${TMPDIR:-/tmp}/gatehouse-bench.XXXXXX")
    local up_port ng_port gw_port base_port gwb_port gwn_port ap_port gwu_port gwr_port redis_port
    local floor_port
    read -r up_port ng_port gw_port base_port gwb_port gwn_port ap_port gwu_port gwr_port redis_port \
        floor_port < <(free_ports 11)

    # (a) upstream: 2-byte answer, keep-alive.
    nginx_conf upstream "$up_port" "$NGINX_WORKERS" '        location / { return 200 "ok"; }'
    start_nginx upstream
    local up_pid
    up_pid=$(<"$TMP/upstream/nginx.pid")
    wait_http "http://127.0.0.1:$up_port/" 10 || die "upstream nginx not answering"
    want direct && measure direct "http://127.0.0.1:$up_port/" "$up_pid"

    # (b) nginx as a plain reverse proxy with upstream keep-alive.
    local ng_pid=""
    if want nginx nginx-token; then
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
        ng_pid=$(<"$TMP/nginx/nginx.pid")
        wait_http "http://127.0.0.1:$ng_port/" 10 || die "nginx proxy not answering"
        log "nginx 127.0.0.1:$ng_port (pid $ng_pid)"
        want nginx && measure nginx "http://127.0.0.1:$ng_port/" "$ng_pid"
    fi

    # (b2) the floor: hyper's server and client on tokio, thread-per-core like the gateway, with
    # none of the gateway's work (examples/bare_proxy.rs). What the gateway costs above it is
    # the gateway's; what it costs above nginx is the stack's.
    if want hyper-floor; then
        local floor_pid exe=$TARGET_DIR/release/examples/bare_proxy
        [[ -x $exe ]] || die "no $exe (run without SKIP_BUILD=1)"
        "$exe" "127.0.0.1:$floor_port" "127.0.0.1:$up_port" >"$TMP/hyper-floor.log" 2>&1 &
        floor_pid=$!
        CHILD_PIDS+=("$floor_pid")
        if wait_http "http://127.0.0.1:$floor_port/" 10 "$floor_pid"; then
            log "hyper-floor 127.0.0.1:$floor_port (pid $floor_pid)"
            measure hyper-floor "http://127.0.0.1:$floor_port/" "$floor_pid"
        else
            SKIPPED+=(hyper-floor)
        fi
    fi

    # (c) the gateway, public route and session cookie; with BASE_BIN, a second gateway binary
    # with the same configuration (and session secret: the same cookies open on both).
    if want gateway gateway-session gateway-session-redis base base-session; then
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
        local gw_pid
        if want gateway gateway-session; then
            if start_gateway gateway "$bin" "$TMP/gatehouse.toml" "$gw_port"; then
                gw_pid=$STARTED_PID
                want gateway && measure gateway "http://127.0.0.1:$gw_port/" "$gw_pid"
                want gateway-session && measure_session gateway-session "$gw_port" "$gw_pid"
            else
                want gateway && SKIPPED+=(gateway)
                want gateway-session && SKIPPED+=(gateway-session)
            fi
        fi
        # The same gateway with sessions in a local redis-server (no persistence): the cookie
        # carries a sealed id, every request reads the session from Redis.
        if want gateway-session-redis; then
            need_apt redis-server redis-server
            redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no \
                --dir "$TMP" --logfile "$TMP/redis.log" </dev/null >/dev/null 2>&1 &
            CHILD_PIDS+=("$!")
            log "redis-server 127.0.0.1:$redis_port (pid $!)"
            local redis_pid=$!
            sed -e "s/127\.0\.0\.1:$gw_port\b/127.0.0.1:$gwr_port/g" \
                -e "s|^\[session\]\$|[session]\nstore = \"redis\"\nredis_url = \"redis://127.0.0.1:$redis_port\"|" \
                "$TMP/gatehouse.toml" >"$TMP/gatehouse-redis.toml"
            local gwr_pid
            if wait_redis "$redis_port" &&
                start_gateway gateway-session-redis "$bin" "$TMP/gatehouse-redis.toml" "$gwr_port"; then
                gwr_pid=$STARTED_PID
                SESSION_CONFIG=$TMP/gatehouse-redis.toml \
                    measure_session gateway-session-redis "$gwr_port" "$gwr_pid $redis_pid"
            else
                SKIPPED+=(gateway-session-redis)
            fi
        fi
        if want base base-session; then
            sed "s/127\.0\.0\.1:$gw_port\b/127.0.0.1:$base_port/g" "$TMP/gatehouse.toml" >"$TMP/base.toml"
            local base_pid
            if start_gateway base "$BASE_BIN" "$TMP/base.toml" "$base_port"; then
                base_pid=$STARTED_PID
                want base && measure base "http://127.0.0.1:$base_port/" "$base_pid"
                want base-session && measure_session base-session "$base_port" "$base_pid"
            else
                want base && SKIPPED+=(base)
                want base-session && SKIPPED+=(base-session)
            fi
        fi
    fi

    # (d) bearer tokens: a stand-in issuer (examples/bearer_tokens.rs) serving an RSA-2048 JWKS
    # over HTTP (for the gateway) and HTTPS (mod_auth_openidc insists), and the tokens it signed.
    if ((need_tokens)); then
        start_token_issuer
        # wrk Lua script for the *-10k targets: the next of the 10 000 tokens on every request.
        rotate_script >"$TMP/rotate.lua"
        # The plain nginx proxy carrying the same header (forwarded, not checked): what parsing
        # and forwarding a ~700-byte Authorization header costs a proxy that checks nothing.
        want nginx-token &&
            measure nginx-token "http://127.0.0.1:$ng_port/" "$ng_pid" -H "Authorization: Bearer $HOT_TOKEN"
    fi

    # (e) the gateway as a resource server: every route needs a valid bearer token of the
    # stand-in issuer. No [provider], no [session].
    if want gateway-bearer-hot gateway-bearer-10k; then
        bearer_gateway_conf "$gwb_port" "$up_port" "" >"$TMP/gatehouse-bearer.toml"
        local gwb_pid
        if start_gateway gateway-bearer "$bin" "$TMP/gatehouse-bearer.toml" "$gwb_port" &&
            gwb_pid=$STARTED_PID &&
            check_auth gateway-bearer "http://127.0.0.1:$gwb_port/" gateway-bearer-hot gateway-bearer-10k; then
            want gateway-bearer-hot &&
                measure gateway-bearer-hot "http://127.0.0.1:$gwb_port/" "$gwb_pid" -H "Authorization: Bearer $HOT_TOKEN"
            want gateway-bearer-10k &&
                measure gateway-bearer-10k "http://127.0.0.1:$gwb_port/" "$gwb_pid" -s "$TMP/rotate.lua"
        else
            want gateway-bearer-hot && SKIPPED+=(gateway-bearer-hot)
            want gateway-bearer-10k && SKIPPED+=(gateway-bearer-10k)
        fi
    fi
    # (e') the same without the verified-token cache: every request verifies an RS256 signature,
    # as mod_auth_openidc does.
    if want gateway-bearer-nocache; then
        bearer_gateway_conf "$gwn_port" "$up_port" $'[bearer]\ncache_entries = 0' >"$TMP/gatehouse-bearer-nocache.toml"
        local gwn_pid
        if start_gateway gateway-bearer-nocache "$bin" "$TMP/gatehouse-bearer-nocache.toml" "$gwn_port" &&
            gwn_pid=$STARTED_PID &&
            check_auth gateway-bearer-nocache "http://127.0.0.1:$gwn_port/" gateway-bearer-nocache; then
            measure gateway-bearer-nocache "http://127.0.0.1:$gwn_port/" "$gwn_pid" -s "$TMP/rotate.lua"
        else
            SKIPPED+=(gateway-bearer-nocache)
        fi
    fi

    # (e'') the gateway as an OAuth client toward a protected upstream ([upstreams.client]): a
    # public route, and the gateway's own client-credentials token (from the stand-in issuer's
    # /token, once) set as Authorization on every forwarded request.
    if want gateway-upstream-token; then
        cat >"$TMP/gatehouse-upstream-token.toml" <<TOML
[server]
listen = "127.0.0.1:$gwu_port"

[log]
access_log = false
level = "error"

[[upstreams]]
url = "http://127.0.0.1:$up_port"
[upstreams.client]
token_endpoint = "$ISSUER/token"
client_id = "bench"
client_secret = "bench-secret"
TOML
        local gwu_pid
        if start_gateway gateway-upstream-token "$bin" "$TMP/gatehouse-upstream-token.toml" "$gwu_port"; then
            gwu_pid=$STARTED_PID
            measure gateway-upstream-token "http://127.0.0.1:$gwu_port/" "$gwu_pid"
        else
            SKIPPED+=(gateway-upstream-token)
        fi
    fi

    # (f) Apache 2.4 + mod_auth_openidc as an OAuth 2.0 resource server, same upstream.
    if want apache-oidc-hot apache-oidc-10k; then
        local ap_pid
        if start_apache "$ap_port" "$up_port" && ap_pid=$STARTED_PID &&
            check_auth apache-oidc "http://127.0.0.1:$ap_port/" apache-oidc-hot apache-oidc-10k; then
            want apache-oidc-hot &&
                measure apache-oidc-hot "http://127.0.0.1:$ap_port/" "$ap_pid" -H "Authorization: Bearer $HOT_TOKEN"
            want apache-oidc-10k &&
                measure apache-oidc-10k "http://127.0.0.1:$ap_port/" "$ap_pid" -s "$TMP/rotate.lua"
        else
            want apache-oidc-hot && SKIPPED+=(apache-oidc-hot)
            want apache-oidc-10k && SKIPPED+=(apache-oidc-10k)
        fi
    fi

    ((${#SCEN_NAMES[@]})) || die "no target could be set up"
    log "measuring: ${SCEN_NAMES[*]}${SKIPPED[*]:+ (not measured: ${SKIPPED[*]})}"
    LOAD_START=$(cut -d' ' -f1 /proc/loadavg)
    run_all
    report
}

# bearer_gateway_conf PORT UPSTREAM_PORT EXTRA: a gateway configuration where every route needs a
# bearer token of the stand-in issuer (its JWKS over plain HTTP); EXTRA is added as is.
bearer_gateway_conf() {
    cat <<TOML
[server]
listen = "127.0.0.1:$1"

[log]
access_log = false
level = "error"

[authorization]
default_policy = "authenticated"

$3

[[bearer.issuers]]
issuer = "$ISSUER"
jwks_uri = "$JWKS_HTTP"
audiences = ["$AUDIENCE"]
algorithms = ["RS256"]

[[upstreams]]
url = "http://127.0.0.1:$2"
TOML
}

# start_gateway NAME BIN CONFIG PORT: starts `BIN run --config CONFIG` (log in $TMP/NAME.log),
# waits for /healthz; sets STARTED_PID. On failure, logs why and returns 1. (Not to be called in
# a command substitution: CHILD_PIDS must be updated in this shell.)
start_gateway() {
    local name=$1 bin=$2 config=$3 port=$4 pid
    "$bin" run --config "$config" </dev/null >"$TMP/$name.log" 2>&1 &
    pid=$!
    CHILD_PIDS+=("$pid")
    if ! wait_http "http://127.0.0.1:$port/healthz" 30 "$pid"; then
        log "!!! $name not ready on 127.0.0.1:$port/healthz ($(pid_alive "$pid" && echo 'still running' || echo 'exited')); its log:"
        if [[ -s $TMP/$name.log ]]; then sed 's/^/    /' "$TMP/$name.log" >&2; else log "    (empty)"; fi
        return 1
    fi
    log "$name 127.0.0.1:$port (pid $pid)"
    STARTED_PID=$pid
}

# start_token_issuer: runs examples/bearer_tokens.rs into $TMP/bearer and waits for its tokens;
# sets ISSUER, JWKS_HTTP, JWKS_HTTPS, AUDIENCE, HOT_TOKEN, BEARER_DIR.
start_token_issuer() {
    BEARER_DIR=$TMP/bearer
    local exe=$TARGET_DIR/release/examples/bearer_tokens pid
    [[ -x $exe ]] || die "no $exe (run without SKIP_BUILD=1)"
    # The whole run, bounded: setup, (WARMUP + DURATION + a margin) per run, plus a margin.
    local lifetime=$((600 + REPEAT * 8 * (WARMUP + DURATION + 10)))
    "$exe" "$BEARER_DIR" --tokens 10000 --ttl $((lifetime + 3600)) --max-seconds "$lifetime" \
        </dev/null >"$TMP/bearer_tokens.log" 2>&1 &
    pid=$!
    CHILD_PIDS+=("$pid")
    local deadline=$((SECONDS + 120))
    until [[ -f $BEARER_DIR/ready ]]; do
        if ! pid_alive "$pid" || ((SECONDS >= deadline)); then
            sed 's/^/    /' "$TMP/bearer_tokens.log" >&2 || true
            die "the token issuer (examples/bearer_tokens.rs) did not get ready"
        fi
        sleep 0.2
    done
    local HTTP_PORT HTTPS_PORT KID
    # shellcheck disable=SC1091
    source "$BEARER_DIR/env"
    HOT_TOKEN=$(<"$BEARER_DIR/hot.jwt")
    log "token issuer $ISSUER (JWKS also at $JWKS_HTTPS; pid $pid): $(wc -l <"$BEARER_DIR/tokens.txt") tokens of ~${#HOT_TOKEN} bytes"
}

# rotate_script: wrk Lua script; each wrk thread walks the token list round-robin from its own
# starting point and sends the next token on each request.
rotate_script() {
    cat <<LUA
local tokens = {}
for line in io.lines("$BEARER_DIR/tokens.txt") do
    if #line > 0 then tokens[#tokens + 1] = "Bearer " .. line end
end
local n = #tokens
local threads = 0
function setup(thread)
    thread:set("id", threads)
    threads = threads + 1
end
local i = 0
function init(args)
    i = ((id or 0) * 4999) % n
end
function request()
    i = i % n + 1
    wrk.headers["Authorization"] = tokens[i]
    return wrk.format()
end
LUA
}

# http_code URL [curl args...]: the status code of one GET (000 when there was no answer).
http_code() {
    local url=$1
    shift
    curl -s -o /dev/null --max-time 10 -w '%{http_code}' "$@" "$url" || true
}

# check_auth NAME URL TARGETS...: before measuring, the target must answer 2xx to the hot token and to the
# first and last of the 10 000, and refuse (401/403) no token, an expired token, another issuer's
# and another audience's. Returns 1 when a valid token is not accepted (the target is then not
# measured); a target accepting a token it must refuse is measured but flagged (AUTH_LAX).
check_auth() {
    local name=$1 url=$2 code f summary="" lax=0
    shift 2
    local -a valid=("$HOT_TOKEN" "$(head -n1 "$BEARER_DIR/tokens.txt")" "$(tail -n1 "$BEARER_DIR/tokens.txt")")
    for f in "${valid[@]}"; do
        code=$(http_code "$url" -H "Authorization: Bearer $f")
        if [[ $code != 2* ]]; then
            log "!!! $name answers $code to a valid token; not measured"
            return 1
        fi
    done
    code=$(http_code "$url")
    summary="no token $code"
    [[ $code == 401 || $code == 403 ]] || lax=1
    for f in expired wrong-iss wrong-aud; do
        code=$(http_code "$url" -H "Authorization: Bearer $(<"$BEARER_DIR/$f.jwt")")
        summary+=", $f $code"
        [[ $code == 401 || $code == 403 ]] || lax=1
    done
    local t
    for t in "$@"; do
        want "$t" || continue
        AUTH_CHECKS[$t]="valid tokens 2xx; refused: $summary"
        ((lax)) && AUTH_LAX+=("$t")
    done
    log "$name: valid tokens 2xx; $summary"
    return 0
}

# start_apache PORT UPSTREAM_PORT: Apache 2.4 (mpm_event) + mod_auth_openidc in its own
# ServerRoot under $TMP/apache, proxying to the upstream; sets STARTED_PID (the master's pid).
start_apache() {
    local port=$1 up_port=$2 dir=$TMP/apache mods=/usr/lib/apache2/modules
    mkdir -p "$dir"
    cp "$BEARER_DIR/ca.pem" "$dir/ca.pem"
    local user_lines=""
    if [[ $(id -u) -eq 0 ]]; then
        # Apache will not serve as root: its children run as www-data, which must reach $dir.
        user_lines=$'User www-data\nGroup www-data'
        chmod 711 "$TMP"
        chmod 755 "$dir"
        chmod 644 "$dir/ca.pem"
    fi
    local threads=$((APACHE_PROCS * APACHE_THREADS))
    cat >"$dir/httpd.conf" <<CONF
ServerRoot $dir
ServerName 127.0.0.1
Listen 127.0.0.1:$port
PidFile $dir/httpd.pid
Mutex file:$dir default
ErrorLog $dir/error.log
LogLevel warn
$user_lines
LoadModule mpm_event_module $mods/mod_mpm_event.so
LoadModule authn_core_module $mods/mod_authn_core.so
LoadModule authz_core_module $mods/mod_authz_core.so
LoadModule authz_user_module $mods/mod_authz_user.so
LoadModule proxy_module $mods/mod_proxy.so
LoadModule proxy_http_module $mods/mod_proxy_http.so
LoadModule auth_openidc_module $mods/mod_auth_openidc.so

# A fixed set of processes (no spawning or reaping during a run, so /proc CPU counts hold).
ServerLimit $APACHE_PROCS
StartServers $APACHE_PROCS
ThreadLimit $APACHE_THREADS
ThreadsPerChild $APACHE_THREADS
MaxRequestWorkers $threads
MinSpareThreads $APACHE_THREADS
MaxSpareThreads $threads
MaxConnectionsPerChild 0
KeepAlive On
MaxKeepAliveRequests 0
KeepAliveTimeout 65
# No CustomLog: no access log, as for nginx and the gateway.

# OAuth 2.0 resource server: RS256 JWTs verified locally against the JWKS (HTTPS only; fetched
# once, then cached). It checks the signature and exp by itself; iss and aud only when told to,
# hence the Require claim lines.
OIDCCryptoPassphrase $(head -c 24 /dev/urandom | base64)
OIDCOAuthVerifyJwksUri $JWKS_HTTPS
OIDCCABundlePath $dir/ca.pem
OIDCOAuthRemoteUserClaim sub

# Upstream connections are pooled and reused by mod_proxy_http (HTTP/1.1 keep-alive) by default.
ProxyPass / http://127.0.0.1:$up_port/
<Location />
    AuthType oauth20
    <RequireAll>
        Require valid-user
        Require claim iss:$ISSUER
        Require claim aud:$AUDIENCE
    </RequireAll>
</Location>
CONF
    APACHE_PIDFILES+=("$dir/httpd.pid")
    if ! "$APACHE" -f "$dir/httpd.conf" -k start </dev/null >"$dir/start.log" 2>&1; then
        log "!!! Apache did not start:"
        sed 's/^/    /' "$dir/start.log" "$dir/error.log" >&2 2>/dev/null || true
        return 1
    fi
    local deadline=$((SECONDS + 10))
    until [[ -s $dir/httpd.pid ]]; do
        if ((SECONDS >= deadline)); then
            log "!!! Apache wrote no pid file:"
            sed 's/^/    /' "$dir/start.log" "$dir/error.log" >&2 2>/dev/null || true
            return 1
        fi
        sleep 0.05
    done
    local pid
    pid=$(<"$dir/httpd.pid")
    if ! wait_http "http://127.0.0.1:$port/" 10 "$pid"; then
        log "!!! Apache not answering on 127.0.0.1:$port; its error log:"
        sed 's/^/    /' "$dir/error.log" >&2 || true
        return 1
    fi
    log "apache-oidc 127.0.0.1:$port (pid $pid, $APACHE_PROCS processes x $APACHE_THREADS threads)"
    STARTED_PID=$pid
}

# measure_session NAME PORT PID: a session-cookie target, GET /app/ (policy "authenticated").
# A browser stores the refreshed cookie the gateway sends (Set-Cookie) once a cookie is older
# than a minute; wrk cannot, so a cookie made once at start would be stale after 60 s and every
# later run would measure re-sealing on every request instead. So a fresh cookie is made before
# each wrk run (warm-up and measured run: fresh_cookie, as PREP) and read by wrk from a file at
# its start (-s cookie-NAME.lua).
measure_session() {
    local name=$1 port=$2 pid=$3 url="http://127.0.0.1:$2/app/" with without
    # Which configuration seals the cookies (and, with store = "redis", where the session goes).
    local config=${SESSION_CONFIG:-$TMP/gatehouse.toml}
    echo "$config" >"$TMP/config-$name"
    if ! fresh_cookie "$name" "" check; then
        log "!!! could not make a session cookie; $name not measured"
        SKIPPED+=("$name")
        return 0
    fi
    # wrk counts only statuses >= 400 as errors: a redirect to the login (the cookie refused)
    # would pass unnoticed. So: 2xx with the cookie, and not without, before measuring.
    with=$(http_code "$url" -H "Cookie: $(<"$TMP/cookie-$name")")
    without=$(http_code "$url")
    if [[ $with != 2* || $without == 2* ]]; then
        log "!!! $name: GET /app/ answers $with with a fresh session cookie and $without without; not measured"
        SKIPPED+=("$name")
        return 0
    fi
    log "$name: GET /app/ answers $with with a fresh session cookie, $without without"
    cat >"$TMP/cookie-$name.lua" <<LUA
-- Each wrk thread reads the cookie made just before this wrk run.
init = function(args)
    local f = assert(io.open("$TMP/cookie-$name", "r"))
    wrk.headers["Cookie"] = f:read("*l")
    f:close()
end
LUA
    PREP="$(printf '%q ' fresh_cookie "$name")" \
        measure "$name" "http://127.0.0.1:$port/app/" "$pid" -s "$TMP/cookie-$name.lua"
}

# fresh_cookie NAME ROUND PHASE: seals a new session cookie (for $TMP/gatehouse.toml's secret,
# shared by the base gateway) into $TMP/cookie-NAME and logs a fingerprint of it, so the log
# shows that each run got its own.
fresh_cookie() {
    local name=$1 file=$TMP/cookie-$1 sum
    local config=$TMP/gatehouse.toml
    [[ -s $TMP/config-$name ]] && config=$(<"$TMP/config-$name")
    session_cookie "$config" >"$file.new" || return 1
    [[ -s $file.new ]] || return 1
    mv -f "$file.new" "$file"
    sum=$(cksum <"$file")
    log "$name${2:+ run $2} ($3): fresh session cookie, cksum ${sum%% *}"
}

# wait_redis PORT: until redis-server answers PING (10 s at most).
wait_redis() {
    local deadline=$((SECONDS + 10))
    until [[ $(redis-cli -p "$1" ping 2>/dev/null) == PONG ]]; do
        ((SECONDS < deadline)) || { log "!!! redis-server on port $1 not answering"; return 1; }
        sleep 0.1
    done
}

# session_cookie CONFIG: a valid session Cookie header value for CONFIG's [session], sealed by
# the gateway's own code (examples/session_cookie.rs).
session_cookie() {
    local exe=$TARGET_DIR/release/examples/session_cookie
    if [[ ! -x $exe ]]; then
        cargo build --release --quiet --example session_cookie >&2 || return 1
    fi
    "$exe" "$1"
}

main "$@"
