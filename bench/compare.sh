#!/usr/bin/env bash
# caddy-push against nchan and Centrifugo on this machine, on loopback only.
#
# For each scenario and transport, starts a fresh caddy-push (bench/Caddyfile)
# and runs cmd/pushbench against it, then the same against a fresh nchan
# (nginx with bench/nchan.conf) and a fresh Centrifugo v6 (its unidirectional
# SSE and WebSocket transports, published to through its HTTP server API;
# bench/centrifugo.json). At the end it prints every figure side by side
# with the ratios caddy-push / nchan and caddy-push / centrifugo, and plots
# the latency CDFs of the fan-out runs. Each server is fresh so that one
# run's memory does not carry into the next (a Go heap does not shrink at
# once).
#
#   bench/compare.sh                                # the issue's scenarios, ~3.5 min a target here
#   SCALE=0.1 TIME_SCALE=0.2 bench/compare.sh       # a quick look, ~1 min a target
#
# Environment (defaults in brackets):
#   SCALE       multiplies connection counts and the churn rate [1]
#   TIME_SCALE  multiplies durations [1]
#   SCENARIOS   [idle fanout broadcast churn]    TRANSPORTS [sse ws]
#   TARGETS     [caddy-push nchan centrifugo]
#   RUNS        runs of everything; the table has the medians [1]
#   OUT         results directory [bench/out]    PLOT [bench/latency.png]
#   CADDY_PORT [8090]  NCHAN_PORT [8091]  CENTRIFUGO_PORT [8092]
#   CENTRIFUGO  the centrifugo binary [go install's: $(go env GOPATH)/bin/centrifugo]
#   TIME_LIMIT  seconds; no run starts after this [3600]
#
# It needs Go. It installs nginx and libnginx-mod-nchan from Debian's
# packages when they are missing (as root, or with sudo), and Centrifugo
# with go install from the Go module proxy when CENTRIFUGO is not
# Centrifugo v6.9.1 (a build of a few minutes).
set -euo pipefail
cd "$(dirname "$0")/.."

SCALE=${SCALE:-1}
TIME_SCALE=${TIME_SCALE:-1}
SCENARIOS=${SCENARIOS:-idle fanout broadcast churn}
TRANSPORTS=${TRANSPORTS:-sse ws}
TARGETS=${TARGETS:-caddy-push nchan centrifugo}
RUNS=${RUNS:-1}
OUT=${OUT:-bench/out}
PLOT=${PLOT:-bench/latency.png}
CADDY_PORT=${CADDY_PORT:-8090}
NCHAN_PORT=${NCHAN_PORT:-8091}
CENTRIFUGO_PORT=${CENTRIFUGO_PORT:-8092}
TIME_LIMIT=${TIME_LIMIT:-3600}
NCHAN_MODULE=/usr/lib/nginx/modules/ngx_nchan_module.so
CENTRIFUGO_MODULE=github.com/centrifugal/centrifugo/v6
CENTRIFUGO_VERSION=v6.9.1

log() { echo "compare: $*" >&2; }
die() { log "$*"; exit 1; }

# scale N: N × SCALE, at least 1; seconds N: N × TIME_SCALE, at least 1
scale() { awk -v n="$1" -v s="$SCALE" 'BEGIN { v = int(n * s + 0.5); print (v < 1 ? 1 : v) }'; }
seconds() { awk -v n="$1" -v s="$TIME_SCALE" 'BEGIN { v = n * s; printf "%gs\n", (v < 1 ? 1 : v) }'; }

install_nchan() {
	command -v nginx >/dev/null && [ -f "$NCHAN_MODULE" ] && return
	local sudo=""
	[ "$(id -u)" -eq 0 ] || sudo=sudo
	log "installing nginx and libnginx-mod-nchan from Debian's packages"
	# keep apt from starting a system-wide nginx on port 80: this script
	# starts its own, on loopback
	local policy=""
	if [ ! -e /usr/sbin/policy-rc.d ]; then
		policy=/usr/sbin/policy-rc.d
		printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null
		$sudo chmod +x "$policy"
	fi
	$sudo apt-get update -qq
	$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nginx libnginx-mod-nchan >/dev/null
	[ -z "$policy" ] || $sudo rm -f "$policy"
	[ -f "$NCHAN_MODULE" ] || die "no $NCHAN_MODULE after installing libnginx-mod-nchan"
}

# gobin: where go install puts binaries
gobin() {
	local dir
	dir=$(go env GOBIN)
	[ -n "$dir" ] || dir=$(go env GOPATH | cut -d: -f1)/bin
	echo "$dir"
}

# centrifugo_version BINARY: the module version go install built it from
centrifugo_version() {
	go version -m "$1" 2>/dev/null | awk -v m="$CENTRIFUGO_MODULE" '$1 == "mod" && $2 == m { print $3 }'
}

install_centrifugo() {
	CENTRIFUGO=${CENTRIFUGO:-$(gobin)/centrifugo}
	[ -x "$CENTRIFUGO" ] && [ "$(centrifugo_version "$CENTRIFUGO")" = "$CENTRIFUGO_VERSION" ] && return
	log "installing Centrifugo $CENTRIFUGO_VERSION with go install (a big build: minutes)"
	# outside this module, whose go.mod has nothing to do with it
	(cd / && GOFLAGS=-mod=mod go install "$CENTRIFUGO_MODULE@$CENTRIFUGO_VERSION")
	CENTRIFUGO=$(gobin)/centrifugo
	[ "$(centrifugo_version "$CENTRIFUGO")" = "$CENTRIFUGO_VERSION" ] || die "no Centrifugo $CENTRIFUGO_VERSION at $CENTRIFUGO after go install"
}

WORK=$(mktemp -d /tmp/pushbench-compare.XXXXXX)
SERVER_PID=""
cleanup() {
	stop_server
	rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# wait_port PORT: until something listens there, at most 10 s
wait_port() {
	for _ in $(seq 100); do
		(exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
		[ -n "$SERVER_PID" ] && ! kill -0 "$SERVER_PID" 2>/dev/null && return 1
		sleep 0.1
	done
	return 1
}

# start_server TARGET: starts it, sets SERVER_PID, PORT and PIDS (the
# processes whose memory and CPU count: nginx's master and workers)
start_server() {
	case $1 in
	caddy-push)
		PORT=$CADDY_PORT
		PUSH_BENCH_PORT=$PORT "$WORK/caddy" run --config bench/Caddyfile --adapter caddyfile >>"$WORK/caddy.log" 2>&1 &
		SERVER_PID=$!
		wait_port "$PORT" || { tail -20 "$WORK/caddy.log" >&2; die "caddy-push did not start"; }
		PIDS=$SERVER_PID
		;;
	nchan)
		PORT=$NCHAN_PORT
		rm -rf "$WORK/nchan"
		mkdir -p "$WORK/nchan/logs" "$WORK/nchan/tmp"
		sed "s/127\.0\.0\.1:8091/127.0.0.1:$PORT/" bench/nchan.conf >"$WORK/nchan/nginx.conf"
		nginx -p "$WORK/nchan" -c "$WORK/nchan/nginx.conf" -e "$WORK/nchan/logs/error.log" >>"$WORK/nginx.log" 2>&1 &
		SERVER_PID=$!
		wait_port "$PORT" || { cat "$WORK/nginx.log" "$WORK/nchan/logs/error.log" >&2; die "nchan did not start"; }
		sleep 0.2 # the workers
		PIDS=$(echo "$SERVER_PID" $(cat "/proc/$SERVER_PID/task/$SERVER_PID/children") | tr ' ' ',' | sed 's/,*$//')
		;;
	centrifugo)
		PORT=$CENTRIFUGO_PORT
		"$CENTRIFUGO" --config bench/centrifugo.json --http_server.port "$PORT" >>"$WORK/centrifugo.log" 2>&1 &
		SERVER_PID=$!
		wait_port "$PORT" || { tail -20 "$WORK/centrifugo.log" >&2; die "centrifugo did not start"; }
		PIDS=$SERVER_PID
		;;
	esac
}

# stop_server: TERM, then KILL after 10 s; only the process this script started
stop_server() {
	[ -n "$SERVER_PID" ] || return 0
	kill -TERM "$SERVER_PID" 2>/dev/null || true
	for _ in $(seq 100); do
		kill -0 "$SERVER_PID" 2>/dev/null || break
		sleep 0.1
	done
	kill -KILL "$SERVER_PID" 2>/dev/null || true
	wait "$SERVER_PID" 2>/dev/null || true
	SERVER_PID=""
}

# bench TARGET SCENARIO TRANSPORT RUN: one pushbench run on a fresh server
bench() {
	local target=$1 scenario=$2 transport=$3 run=$4
	local -a args
	case $scenario in
	idle) args=(-n "$(scale 19000)" -duration "$(seconds 10)") ;;
	fanout) args=(-n "$(scale 10000)" -duration "$(seconds 30)") ;;
	# the ramp starts at 10,000 deliveries/s whatever the scale
	broadcast) args=(-n "$(scale 10000)" -rate "$(awk -v n="$(scale 10000)" 'BEGIN { print 10000 / n }')"
		-step "$(seconds 5)" -duration "$(seconds 60)") ;;
	churn) args=(-n "$(scale 10000)" -churn "$(scale 2000)" -duration "$(seconds 20)") ;;
	*) die "unknown scenario $scenario" ;;
	esac
	local name="$scenario-$transport-$target-$run"
	if ((SECONDS > TIME_LIMIT)); then
		log "$name: skipped, past TIME_LIMIT"
		return
	fi
	start_server "$target"
	log "$name: ${args[*]}"
	# pushbench bounds its own phases; this bounds the run whatever happens
	if timeout --signal=INT --kill-after=10 300 "$WORK/pushbench" -target "$target" -addr "127.0.0.1:$PORT" \
		-scenario "$scenario" -transport "$transport" -pid "$PIDS" -json "${args[@]}" \
		>"$WORK/$name.json" 2> >(tee "$OUT/$name.log" >&2); then
		mv "$WORK/$name.json" "$OUT/$name.json"
		RESULTS+=("$OUT/$name.json")
	else
		log "$name failed: $(tail -1 "$OUT/$name.log")"
	fi
	stop_server
}

for target in $TARGETS; do
	case $target in
	caddy-push | nchan | centrifugo) ;;
	*) die "unknown target $target in TARGETS: caddy-push, nchan or centrifugo" ;;
	esac
done
has_target() { [[ " $TARGETS " == *" $1 "* ]]; }
command -v go >/dev/null || die "needs Go to build caddy-push and pushbench"
if has_target nchan; then install_nchan; fi
if has_target centrifugo; then install_centrifugo; fi
ulimit -n "$(ulimit -Hn)" # the servers need as many files as the connections
log "building caddy-push and pushbench"
go build -o "$WORK/caddy" ./cmd/caddy
go build -o "$WORK/pushbench" ./cmd/pushbench
mkdir -p "$OUT"
rm -f "$OUT"/*.json "$OUT"/*.log

{
	echo "machine: $(nproc) cores, $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo), $(uname -sr)"
	echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
	echo "caddy-push: $("$WORK/caddy" version | head -1), $(go version | cut -d' ' -f3)"
	if has_target nchan; then
		echo "nchan: $(dpkg-query -W -f '${Version}' libnginx-mod-nchan 2>/dev/null), $(nginx -v 2>&1 | cut -d' ' -f3)"
	fi
	if has_target centrifugo; then
		echo "centrifugo: $(centrifugo_version "$CENTRIFUGO"), $(go version -m "$CENTRIFUGO" | head -1 | cut -d' ' -f2)"
	fi
	echo "open-file limit: $(ulimit -n); SCALE=$SCALE TIME_SCALE=$TIME_SCALE RUNS=$RUNS"
} | tee "$OUT/machine.txt"

RESULTS=()
for run in $(seq "$RUNS"); do
	for scenario in $SCENARIOS; do
		for transport in $TRANSPORTS; do
			for target in $TARGETS; do
				bench "$target" "$scenario" "$transport" "$run"
			done
		done
	done
done

echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg); took ${SECONDS}s" | tee -a "$OUT/machine.txt"
((${#RESULTS[@]} > 0)) || die "no run succeeded"
echo
"$WORK/pushbench" -compare "${RESULTS[@]}" | tee "$OUT/table.txt"
shopt -s nullglob
fanout=("$OUT"/fanout-*-1.json)
if ((${#fanout[@]} > 0)); then
	"$WORK/pushbench" -plot "$PLOT" "${fanout[@]}"
	log "latency CDF of the fan-out runs: $PLOT"
fi
