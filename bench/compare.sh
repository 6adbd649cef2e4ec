#!/usr/bin/env bash
# caddy-push against nchan, Centrifugo and Mercure on this machine, on
# loopback only.
#
# For each scenario and transport, starts a fresh caddy-push (bench/Caddyfile)
# and runs bench/pushbench against it, then the same against a fresh nchan
# (nginx with bench/nchan.conf) and a fresh Centrifugo v6 (its unidirectional
# SSE and WebSocket transports, published to through its HTTP server API;
# bench/centrifugo.json). At the end it prints every figure side by side
# with the ratios caddy-push / nchan and caddy-push / centrifugo, and plots
# the latency CDFs of the fan-out runs. Each server is fresh so that one
# run's memory does not carry into the next (a Go heap does not shrink at
# once).
#
# PROTOCOLS adds runs over HTTPS, where users are: the subscribers speak
# HTTP/1.1 over TLS (https-h1), HTTP/2 (h2) or HTTP/3 (h3), a connection
# each, to caddy-push's HTTPS site (bench/Caddyfile, Caddy's local CA) and
# to nchan on a TLS and http2 listener with a self-signed certificate made
# here; publishing stays on plain HTTP/1.1. Debian's nginx has no QUIC, so
# h3 is caddy-push's alone; Centrifugo runs in the clear only; WebSocket
# is over http and https-h1 only. The table names these runs fanout-h2 and
# so on.
#
# Two more targets speak the Mercure protocol, SSE over http only (Mercure
# has no WebSocket): mercure, Mercure's own hub (a Caddy build of
# github.com/dunglas/mercure/caddy from bench/mercure, its own module, with
# bench/mercure/Caddyfile), and caddy-push-mercure, caddy-push's
# push_mercure (bench/Caddyfile's site for it). Both get the same topics
# (IRIs), the same publishes (a form with a Bearer JWT) and, with
# PATTERN_SHARE, the same share of subscribers on URI templates that match
# their topic alone; the table has the ratios caddy-push-mercure / mercure.
# They are not in the default TARGETS:
#
#   TARGETS="caddy-push-mercure mercure" TRANSPORTS=sse bench/compare.sh
#
#   bench/compare.sh                                # the issue's scenarios, ~3.5 min a target here
#   SCALE=0.1 TIME_SCALE=0.2 bench/compare.sh       # a quick look, ~1 min a target
#   PROTOCOLS="http h2" SCENARIOS="idle fanout" TRANSPORTS=sse bench/compare.sh
#
# Environment (defaults in brackets):
#   SCALE       multiplies connection counts and the churn rate [1]
#   TIME_SCALE  multiplies durations [1]
#   SCENARIOS   [idle fanout broadcast churn]    TRANSPORTS [sse ws]
#   TARGETS     [caddy-push nchan centrifugo]; also mercure and
#               caddy-push-mercure, the Mercure protocol (above)
#   PATTERN_SHARE  the share of the Mercure targets' subscribers that
#               subscribe by URI template (pushbench -pattern-share) [0.1]
#   PROTOCOLS   [http]: any of http https-h1 h2 h3
#   PUBLISH     [http]: any of http ws; ws publishes over a WebSocket per
#               topic (pushbench -pub-ws; caddy-push and nchan only), and
#               the table names those runs fanout-pubws and so on
#   RUNS        runs of everything; the table has the medians [1]
#   OUT         results directory [bench/out]    PLOT [bench/latency.png]
#   CADDY_PORT [8090]  NCHAN_PORT [8091]  CENTRIFUGO_PORT [8092]
#   CADDY_TLS_PORT [8443]  NCHAN_TLS_PORT [8444]: HTTPS (and caddy-push's HTTP/3)
#   MERCURE_PORT [8093]  CADDY_MERCURE_PORT [8094]: Mercure's hub, push_mercure
#   MERCURE_PUBLISHER_JWT_KEY  the Mercure targets' publisher key [Mercure's
#               development key, as bench/Caddyfile and bench/mercure/Caddyfile have it]
#   CENTRIFUGO  the centrifugo binary [go install's: $(go env GOPATH)/bin/centrifugo]
#   TIME_LIMIT  seconds; no run starts after this [3600]
#   TLS_CONNECT_RATE  connects per second over HTTPS [500]
#
# It needs Go. It installs nginx and libnginx-mod-nchan from Debian's
# packages when they are missing (as root, or with sudo), and Centrifugo
# with go install from the Go module proxy when CENTRIFUGO is not
# Centrifugo v6.9.1 (a build of a few minutes). HTTPS runs against nchan
# need openssl for the certificate. The mercure target builds Mercure's hub
# from the Go module proxy (GOWORK=off, bench/mercure's go.mod; a minute or
# more the first time).
set -euo pipefail
cd "$(dirname "$0")/.."

SCALE=${SCALE:-1}
TIME_SCALE=${TIME_SCALE:-1}
SCENARIOS=${SCENARIOS:-idle fanout broadcast churn}
TRANSPORTS=${TRANSPORTS:-sse ws}
TARGETS=${TARGETS:-caddy-push nchan centrifugo}
PATTERN_SHARE=${PATTERN_SHARE:-0.1}
PROTOCOLS=${PROTOCOLS:-http}
PUBLISH=${PUBLISH:-http}
RUNS=${RUNS:-1}
OUT=${OUT:-bench/out}
PLOT=${PLOT:-bench/latency.png}
CADDY_PORT=${CADDY_PORT:-8090}
NCHAN_PORT=${NCHAN_PORT:-8091}
CENTRIFUGO_PORT=${CENTRIFUGO_PORT:-8092}
CADDY_TLS_PORT=${CADDY_TLS_PORT:-8443}
NCHAN_TLS_PORT=${NCHAN_TLS_PORT:-8444}
MERCURE_PORT=${MERCURE_PORT:-8093}
CADDY_MERCURE_PORT=${CADDY_MERCURE_PORT:-8094}
TIME_LIMIT=${TIME_LIMIT:-3600}
TLS_CONNECT_RATE=${TLS_CONNECT_RATE:-500}
NCHAN_MODULE=/usr/lib/nginx/modules/ngx_nchan_module.so
CENTRIFUGO_MODULE=github.com/centrifugal/centrifugo/v6
CENTRIFUGO_VERSION=v6.9.1
MERCURE_MODULE=github.com/dunglas/mercure

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

# wait_tls PORT: until a TLS handshake there succeeds, at most 10 s (Caddy
# issues its certificate in the background)
wait_tls() {
	for _ in $(seq 100); do
		curl -sk -o /dev/null --max-time 1 "https://127.0.0.1:$1/" && return 0
		sleep 0.1
	done
	return 1
}

# make_cert: nchan's self-signed certificate, for a day
make_cert() {
	[ -f "$WORK/tls/cert.pem" ] && return
	mkdir -p "$WORK/tls"
	openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj /CN=localhost \
		-addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
		-keyout "$WORK/tls/key.pem" -out "$WORK/tls/cert.pem" 2>>"$WORK/openssl.log" ||
		{ cat "$WORK/openssl.log" >&2; die "openssl could not make a certificate"; }
}

# start_server TARGET PROTOCOL: starts it, sets SERVER_PID, PORT, TLS_PORT
# and PIDS (the processes whose memory and CPU count: nginx's master and
# workers). Over http, nchan has no TLS listener; caddy-push always has
# its HTTPS site, and its Mercure hub's site (caddy-push-mercure's PORT).
start_server() {
	local proto=${2:-http}
	case $1 in
	caddy-push | caddy-push-mercure)
		PORT=$CADDY_PORT TLS_PORT=$CADDY_TLS_PORT
		[ "$1" = caddy-push ] || PORT=$CADDY_MERCURE_PORT
		# Caddy's data (its local CA, the certificates) in the work directory
		PUSH_BENCH_PORT=$CADDY_PORT PUSH_BENCH_TLS_PORT=$CADDY_TLS_PORT PUSH_BENCH_MERCURE_PORT=$CADDY_MERCURE_PORT \
			XDG_DATA_HOME="$WORK/caddy-data" XDG_CONFIG_HOME="$WORK/caddy-config" \
			"$WORK/caddy" run --config bench/Caddyfile --adapter caddyfile >>"$WORK/caddy.log" 2>&1 &
		SERVER_PID=$!
		wait_port "$PORT" || { tail -20 "$WORK/caddy.log" >&2; die "$1 did not start"; }
		if [ "$proto" != http ]; then
			wait_tls "$TLS_PORT" || { tail -20 "$WORK/caddy.log" >&2; die "caddy-push's HTTPS did not start"; }
		fi
		PIDS=$SERVER_PID
		;;
	nchan)
		PORT=$NCHAN_PORT TLS_PORT=$NCHAN_TLS_PORT
		rm -rf "$WORK/nchan"
		mkdir -p "$WORK/nchan/logs" "$WORK/nchan/tmp"
		sed "s/127\.0\.0\.1:8091/127.0.0.1:$PORT/" bench/nchan.conf >"$WORK/nchan/nginx.conf"
		if [ "$proto" != http ]; then
			# the same server on a TLS listener with HTTP/2 (nginx 1.22's
			# syntax), TLS 1.3 as Caddy has it (1.22's default stops at 1.2)
			make_cert
			sed -i "/listen 127\.0\.0\.1:$PORT /a\\
		listen 127.0.0.1:$TLS_PORT ssl http2 backlog=4096 reuseport;\\
		ssl_certificate $WORK/tls/cert.pem;\\
		ssl_certificate_key $WORK/tls/key.pem;\\
		ssl_protocols TLSv1.2 TLSv1.3;" "$WORK/nchan/nginx.conf"
			grep -q "listen 127.0.0.1:$TLS_PORT ssl" "$WORK/nchan/nginx.conf" || die "no TLS listener in the nchan config"
		fi
		nginx -p "$WORK/nchan" -c "$WORK/nchan/nginx.conf" -e "$WORK/nchan/logs/error.log" >>"$WORK/nginx.log" 2>&1 &
		SERVER_PID=$!
		wait_port "$PORT" || { cat "$WORK/nginx.log" "$WORK/nchan/logs/error.log" >&2; die "nchan did not start"; }
		if [ "$proto" != http ]; then
			wait_tls "$TLS_PORT" || { cat "$WORK/nginx.log" "$WORK/nchan/logs/error.log" >&2; die "nchan's HTTPS did not start"; }
		fi
		sleep 0.2 # the workers
		PIDS=$(echo "$SERVER_PID" $(cat "/proc/$SERVER_PID/task/$SERVER_PID/children") | tr ' ' ',' | sed 's/,*$//')
		;;
	centrifugo)
		PORT=$CENTRIFUGO_PORT TLS_PORT=""
		"$CENTRIFUGO" --config bench/centrifugo.json --http_server.port "$PORT" >>"$WORK/centrifugo.log" 2>&1 &
		SERVER_PID=$!
		wait_port "$PORT" || { tail -20 "$WORK/centrifugo.log" >&2; die "centrifugo did not start"; }
		PIDS=$SERVER_PID
		;;
	mercure)
		PORT=$MERCURE_PORT TLS_PORT=""
		MERCURE_PORT=$PORT XDG_DATA_HOME="$WORK/mercure-data" XDG_CONFIG_HOME="$WORK/mercure-config" \
			"$WORK/mercure" run --config bench/mercure/Caddyfile --adapter caddyfile >>"$WORK/mercure.log" 2>&1 &
		SERVER_PID=$!
		wait_port "$PORT" || { tail -20 "$WORK/mercure.log" >&2; die "mercure did not start"; }
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

# skip_reason TARGET PROTOCOL TRANSPORT SCENARIO PUBLISH: why that
# combination does not run, or nothing
skip_reason() {
	case $5/$4/$1 in
	ws/idle/*) echo "idle publishes nothing"; return ;;
	ws/*/centrifugo) echo "Centrifugo publishes over HTTP here"; return ;;
	ws/*/mercure | ws/*/caddy-push-mercure) echo "the Mercure protocol publishes over HTTP"; return ;;
	esac
	case $1/$3 in
	mercure/ws | caddy-push-mercure/ws) echo "the Mercure protocol has no WebSocket"; return ;;
	esac
	case $1/$2/$3 in
	mercure/http/* | caddy-push-mercure/http/*) ;;
	mercure/* | caddy-push-mercure/*) echo "the Mercure targets run over http only here" ;;
	*/http/* | caddy-push/https-h1/* | nchan/https-h1/*) ;;
	*/h2/ws | */h3/ws) echo "WebSocket is over http and https-h1 only" ;;
	nchan/h3/*) echo "Debian's nginx has no QUIC" ;;
	centrifugo/*) echo "Centrifugo runs over http only here" ;;
	esac
}

# bench TARGET SCENARIO TRANSPORT RUN PROTOCOL PUBLISH: one pushbench run
# on a fresh server
bench() {
	local target=$1 scenario=$2 transport=$3 run=$4 proto=${5:-http} over=${6:-http}
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
	if [ "$proto" != http ]; then
		name="$scenario-$proto-$transport-$target-$run"
		# a TLS handshake costs both sides a millisecond or more of CPU:
		# connect as fast as this machine completes them
		args+=(-connect-rate "$TLS_CONNECT_RATE")
	fi
	if [ "$over" = ws ]; then
		name="${name/#$scenario-/$scenario-pubws-}"
		args+=(-pub-ws)
	fi
	local skip
	skip=$(skip_reason "$target" "$proto" "$transport" "$scenario" "$over")
	if [ -n "$skip" ]; then
		((run > 1)) || log "$name: skipped: $skip"
		return
	fi
	if ((SECONDS > TIME_LIMIT)); then
		log "$name: skipped, past TIME_LIMIT"
		return
	fi
	start_server "$target" "$proto"
	# the subscribers on the HTTPS port; the publisher on the plain one
	local -a addr=(-addr "127.0.0.1:$PORT")
	case $proto in
	https-h1) addr=(-tls -addr "127.0.0.1:$TLS_PORT" -pub-addr "127.0.0.1:$PORT") ;;
	h2 | h3) addr=("-$proto" -addr "127.0.0.1:$TLS_PORT" -pub-addr "127.0.0.1:$PORT") ;;
	esac
	case $target in
	mercure | caddy-push-mercure) args+=(-pattern-share "$PATTERN_SHARE") ;;
	esac
	log "$name: ${addr[*]} ${args[*]}"
	# pushbench bounds its own phases; this bounds the run whatever happens
	if timeout --signal=INT --kill-after=10 300 "$WORK/pushbench" -target "$target" "${addr[@]}" \
		-scenario "$scenario" -transport "$transport" -pid "$PIDS" -json "${args[@]}" \
		>"$WORK/$name.json" 2> >(tee "$OUT/$name.log" >&2); then
		mv "$WORK/$name.json" "$OUT/$name.json"
		RESULTS+=("$OUT/$name.json")
	else
		log "$name failed: $(tail -1 "$OUT/$name.log")"
	fi
	stop_server
}

for over in $PUBLISH; do
	case $over in
	http | ws) ;;
	*) die "unknown way to publish $over in PUBLISH: http or ws" ;;
	esac
done
for target in $TARGETS; do
	case $target in
	caddy-push | nchan | centrifugo | mercure | caddy-push-mercure) ;;
	*) die "unknown target $target in TARGETS: caddy-push, nchan, centrifugo, mercure or caddy-push-mercure" ;;
	esac
done
has_target() { [[ " $TARGETS " == *" $1 "* ]]; }
secure=""
for proto in $PROTOCOLS; do
	case $proto in
	http) ;;
	https-h1 | h2 | h3) secure=1 ;;
	*) die "unknown protocol $proto in PROTOCOLS: http, https-h1, h2 or h3" ;;
	esac
done
command -v go >/dev/null || die "needs Go to build caddy-push and pushbench"
if [ -n "$secure" ]; then
	command -v curl >/dev/null || die "HTTPS runs need curl, to wait for the servers' TLS"
	if has_target nchan; then command -v openssl >/dev/null || die "HTTPS runs against nchan need openssl for the certificate"; fi
fi
if has_target nchan; then install_nchan; fi
if has_target centrifugo; then install_centrifugo; fi
ulimit -n "$(ulimit -Hn)" # the servers need as many files as the connections
log "building caddy-push and pushbench"
go build -o "$WORK/caddy" ./cmd/caddy
go build -o "$WORK/pushbench" ./bench/pushbench
if has_target mercure; then
	log "building Mercure's hub (bench/mercure, a module outside go.work)"
	(cd bench/mercure && GOWORK=off go build -o "$WORK/mercure" .)
fi
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
	if has_target mercure; then
		echo "mercure: $(go version -m "$WORK/mercure" | awk -v m="$MERCURE_MODULE" '$1 == "dep" && $2 == m { print $3 }'), $(go version -m "$WORK/mercure" | awk '$1 == "dep" && $2 == "github.com/caddyserver/caddy/v2" { print "Caddy " $3 }')"
	fi
	if has_target mercure || has_target caddy-push-mercure; then
		echo "Mercure protocol runs: PATTERN_SHARE=$PATTERN_SHARE of the subscribers on URI templates"
	fi
	echo "open-file limit: $(ulimit -n); SCALE=$SCALE TIME_SCALE=$TIME_SCALE RUNS=$RUNS"
	if [ -n "$secure" ]; then
		echo "protocols: $PROTOCOLS; pushbench's TLS: $(go version | cut -d' ' -f3) crypto/tls, quic-go $(go list -m -f '{{.Version}}' github.com/quic-go/quic-go)"
		if has_target nchan; then echo "nchan's TLS: $(openssl version | cut -d' ' -f1-2)"; fi
	fi
} | tee "$OUT/machine.txt"

RESULTS=()
for run in $(seq "$RUNS"); do
	for scenario in $SCENARIOS; do
		for proto in $PROTOCOLS; do
			for transport in $TRANSPORTS; do
				for over in $PUBLISH; do
					for target in $TARGETS; do
						bench "$target" "$scenario" "$transport" "$run" "$proto" "$over"
					done
				done
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
