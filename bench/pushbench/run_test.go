package main

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"encoding/json"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	_ "github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	_ "github.com/caddyserver/caddy/v2/modules/standard"

	_ "github.com/caddy-push/push"
	"github.com/caddy-push/push/internal/testport"
)

var errConnRefused = syscall.ECONNREFUSED

func newBufReader(r io.Reader) *bufio.Reader { return bufio.NewReaderSize(r, readBufferSize) }

// freePort is a loopback port free for TCP and, when udp is set, for UDP
// too (HTTP/3 serves on the HTTPS port's UDP twin).
func freePort(t *testing.T, udp bool) string { return testport.Free(t, udp) }

// startCaddy runs bench/Caddyfile's sites in this process on free
// loopback ports, and returns their addresses: plain HTTP, and HTTPS
// (HTTP/1.1, HTTP/2 and HTTP/3) with a certificate from Caddy's local CA.
func startCaddy(t *testing.T) (plain, secure string) {
	t.Helper()
	plain, secure, _ = startCaddySites(t)
	return plain, secure
}

// startCaddySites is startCaddy, with the address of the Mercure hub's
// site (push_mercure) too.
func startCaddySites(t *testing.T) (plain, secure, mercure string) {
	t.Helper()
	port, tlsPort, mercurePort := freePort(t, false), freePort(t, true), freePort(t, false)
	site, err := os.ReadFile("../../bench/Caddyfile")
	if err != nil {
		t.Fatal(err)
	}
	// the bench's own config, with the ports given, the local CA and the
	// certificates in a directory of the test's, and no waiting on stop
	cf := strings.ReplaceAll(string(site), "{$PUSH_BENCH_PORT:8090}", port)
	cf = strings.ReplaceAll(cf, "{$PUSH_BENCH_TLS_PORT:8443}", tlsPort)
	cf = strings.ReplaceAll(cf, "{$PUSH_BENCH_MERCURE_PORT:8094}", mercurePort)
	cf = strings.Replace(cf, "grace_period 1s", "grace_period 1ns", 1)
	cf = strings.Replace(cf, "persist_config off", "persist_config off\n\tstorage file_system "+strconv.Quote(t.TempDir()), 1)
	cfg, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(cf), nil)
	if err != nil {
		t.Fatalf("adapting bench/Caddyfile: %v", err)
	}
	if err := caddy.Load(cfg, true); err != nil {
		t.Fatalf("loading bench/Caddyfile: %v", err)
	}
	t.Cleanup(func() {
		if err := caddy.Stop(); err != nil {
			t.Errorf("stopping caddy: %v", err)
		}
	})
	plain, secure, mercure = "127.0.0.1:"+port, "127.0.0.1:"+tlsPort, "127.0.0.1:"+mercurePort
	// the certificate is issued in the background: wait for it
	deadline := time.Now().Add(10 * time.Second)
	for {
		conn, err := tls.DialWithDialer(&net.Dialer{Timeout: time.Second}, "tcp", secure, &tls.Config{InsecureSkipVerify: true})
		if err == nil {
			conn.Close()
			return plain, secure, mercure
		}
		if time.Now().After(deadline) {
			t.Fatalf("no TLS on %s: %v", secure, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func testConfig(t *testing.T, addr string, args ...string) *config {
	t.Helper()
	base := []string{"-addr", addr, "-n", "50", "-topics", "2", "-rate", "40", "-duration", "2s",
		"-settle", "200ms", "-drain", "2s", "-sources", "4", "-pub-conns", "4", "-pid", strconv.Itoa(os.Getpid())}
	c, _, err := parseFlags(append(base, args...), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// checkComplete fails unless every acknowledged publish reached every
// subscriber exactly once.
func checkComplete(t *testing.T, r *result) {
	t.Helper()
	if r.Connected != r.Subscribers || r.ConnectFailures != nil || r.Disconnects != nil {
		t.Errorf("connected %d of %d; failures %v; disconnects %v", r.Connected, r.Subscribers, r.ConnectFailures, r.Disconnects)
	}
	if r.PublishOK == 0 || r.PublishOK != r.Published || r.PublishFailures != nil {
		t.Errorf("published %d, %d ok, failures %v", r.Published, r.PublishOK, r.PublishFailures)
	}
	if r.Missing != 0 || r.Duplicates != 0 || r.Malformed != 0 {
		t.Errorf("missing %d, duplicates %d, malformed %d", r.Missing, r.Duplicates, r.Malformed)
	}
	if r.Expected == 0 || r.Delivered != r.Expected || r.Expected != uint64(r.PublishOK)*uint64(r.Subscribers/r.Topics) {
		t.Errorf("delivered %d of %d expected, for %d publishes", r.Delivered, r.Expected, r.PublishOK)
	}
	if r.Latency.P50 <= 0 || r.Latency.P50 > r.Latency.P99 || r.Latency.P99 > r.Latency.Max {
		t.Errorf("latency %+v", r.Latency)
	}
}

func TestRunAgainstCaddyPush(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a server and runs loads for seconds")
	}
	addr, _ := startCaddy(t)
	dir := t.TempDir()
	var files []string
	for _, transport := range []string{"sse", "ws"} {
		t.Run(transport, func(t *testing.T) {
			var progress bytes.Buffer
			r, err := run(t.Context(), testConfig(t, addr, "-transport", transport), &progress)
			if err != nil {
				t.Fatalf("%v\n%s", err, progress.String())
			}
			checkComplete(t, r)
			if r.Server == nil || r.Server.RSSEndKB == 0 || r.Server.CPUSeconds <= 0 || r.Warnings != nil {
				t.Errorf("server figures %+v; warnings %v", r.Server, r.Warnings)
			}

			var table bytes.Buffer
			printResult(&table, r)
			if !strings.Contains(table.String(), "missing           0") {
				t.Errorf("table:\n%s", table.String())
			}
			b, err := json.Marshal(r)
			if err != nil {
				t.Fatal(err)
			}
			f := filepath.Join(dir, transport+".json")
			if err := os.WriteFile(f, b, 0o644); err != nil {
				t.Fatal(err)
			}
			files = append(files, f)
		})
	}

	// the saved results compare and plot
	results, err := readResults(files)
	if err != nil {
		t.Fatal(err)
	}
	var cmp bytes.Buffer
	printComparison(&cmp, results)
	if !strings.Contains(cmp.String(), "missing deliveries") || strings.Count(cmp.String(), "\n") < 10 {
		t.Errorf("comparison:\n%s", cmp.String())
	}
	png := filepath.Join(dir, "cdf.png")
	if err := plotCDF(png, results); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(png); err != nil || !bytes.HasPrefix(b, []byte("\x89PNG")) {
		t.Errorf("plot: %v", err)
	}
}

// Subscribers over HTTPS: HTTP/1.1 over TLS (SSE and WebSocket), HTTP/2
// and HTTP/3, a connection each, publishing over plain HTTP/1.1 as
// bench/compare.sh does, or over HTTPS/1.1 to the one address given.
func TestRunOverHTTPS(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a server and runs loads for seconds")
	}
	plain, secure := startCaddy(t)
	for _, tc := range []struct {
		name, protocol string
		args           []string
	}{
		{"tls-sse", protoTLS, []string{"-tls", "-pub-addr", plain}},
		{"tls-ws", protoTLS, []string{"-tls", "-transport", "ws", "-pub-addr", plain}},
		{"h2", protoH2, []string{"-h2", "-pub-addr", plain}},
		{"h3", protoH3, []string{"-h3", "-pub-addr", plain}},
		// no -pub-addr: the publisher speaks HTTPS/1.1 to -addr
		{"h2-https-publish", protoH2, []string{"-h2", "-n", "20", "-duration", "1s"}},
		// connections that come and go over QUIC
		{"h3-churn", protoH3, []string{"-h3", "-pub-addr", plain, "-n", "20", "-churn", "50", "-churn-hold", "20ms", "-duration", "1s"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var progress bytes.Buffer
			r, err := run(t.Context(), testConfig(t, secure, tc.args...), &progress)
			if err != nil {
				t.Fatalf("%v\n%s", err, progress.String())
			}
			checkComplete(t, r)
			if r.Protocol != tc.protocol || !strings.HasSuffix(r.Label, " "+tc.protocol) {
				t.Errorf("protocol %q, label %q", r.Protocol, r.Label)
			}
			if ch := r.Churn; ch != nil && (ch.Opened != int64(ch.Attempted) || ch.Failures != nil) {
				t.Errorf("churn %+v", ch)
			}
		})
	}
	// a plain HTTP address is no HTTP/2 server: the subscribers fail,
	// and say why
	t.Run("h2-on-plain", func(t *testing.T) {
		c := testConfig(t, plain, "-h2", "-n", "2", "-topics", "1", "-timeout", "2s")
		if _, err := run(t.Context(), c, io.Discard); err == nil || !strings.Contains(err.Error(), "no subscriber could connect") {
			t.Errorf("got %v", err)
		}
	})
}

// The ramp and the churn run too, briefly.
func TestRampAndChurn(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a server and runs loads for seconds")
	}
	addr, _ := startCaddy(t)
	t.Run("ramp", func(t *testing.T) {
		c := testConfig(t, addr, "-scenario", "broadcast", "-n", "20", "-rate", "20", "-step", "500ms", "-duration", "1200ms", "-ramp", "2", "-p99-limit", "10s")
		r, err := run(t.Context(), c, io.Discard)
		if err != nil {
			t.Fatal(err)
		}
		checkComplete(t, r)
		// a step that could not keep its rate (a loaded CI machine) ends
		// the ramp early; one that did doubles the rate
		if len(r.Steps) == 0 || r.Steps[0].Rate != 20 || len(r.Steps) > 2 ||
			len(r.Steps) == 2 && (!r.Steps[0].OK || r.Steps[1].Rate != 40) ||
			(r.Sustained > 0) != (r.Steps[0].OK || r.Steps[len(r.Steps)-1].OK) {
			t.Errorf("steps %+v, sustained %v", r.Steps, r.Sustained)
		}
	})
	t.Run("churn", func(t *testing.T) {
		c := testConfig(t, addr, "-transport", "ws", "-churn", "100", "-churn-hold", "20ms", "-duration", "1s")
		r, err := run(t.Context(), c, io.Discard)
		if err != nil {
			t.Fatal(err)
		}
		checkComplete(t, r)
		if ch := r.Churn; ch == nil || ch.Attempted != 100 || ch.Opened != 100 || ch.Failures != nil {
			t.Errorf("churn %+v", ch)
		}
	})
}

func TestRunRefusesRemote(t *testing.T) {
	c, _, err := parseFlags([]string{"-addr", "192.0.2.1:80"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := run(t.Context(), c, io.Discard); err == nil || !strings.Contains(err.Error(), "loopback") {
		t.Fatalf("got %v", err)
	}
	for _, mode := range []string{"-tls", "-h2", "-h3"} {
		c, _, err := parseFlags([]string{mode, "-addr", "192.0.2.1:443", "-pub-addr", "127.0.0.1:8090"}, io.Discard)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := run(t.Context(), c, io.Discard); err == nil || !strings.Contains(err.Error(), "loopback") {
			t.Errorf("%s: got %v", mode, err)
		}
	}
}

func TestParseFlags(t *testing.T) {
	c, _, err := parseFlags([]string{"-scenario", "fanout", "-n", "500", "-pid", "1,2", "-pid", "3"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if c.n != 500 || c.topics != 100 || c.rate != 1000 || c.size != 256 || c.duration != 30*time.Second {
		t.Errorf("fanout with -n 500: %+v", c)
	}
	if len(c.pids) != 3 || c.pids[2] != 3 {
		t.Errorf("pids %v", c.pids)
	}
	for _, args := range [][]string{
		{"-scenario", "nope"},
		{"-transport", "udp"},
		{"-n", "2", "-topics", "3"},
		{"-pid", "x"},
		{"file.json"},
		{"-compare"},
		{"-tls", "-h2"},
		{"-h2", "-h3"},
		{"-h2", "-transport", "ws"},
		{"-h3", "-transport", "ws"},
	} {
		if _, _, err := parseFlags(args, io.Discard); err == nil {
			t.Errorf("%q: no error", args)
		}
	}
	if _, files, err := parseFlags([]string{"-compare", "a.json", "b.json"}, io.Discard); err != nil || len(files) != 2 {
		t.Errorf("-compare a b: %v %v", files, err)
	}
}

// -tls, -h2 and -h3 turn the subscribe URL to https:// or wss://; the
// publish URL stays plain on -pub-addr, or is HTTPS on -addr without it.
func TestTargetOverTLS(t *testing.T) {
	for _, tc := range []struct {
		args            []string
		sub, pub, proto string
		alpn            string
	}{
		{nil, "http://127.0.0.1:8090/events?topic=x", "http://127.0.0.1:8090/publish", protoHTTP, ""},
		{[]string{"-addr", "127.0.0.1:8443", "-h2", "-pub-addr", "127.0.0.1:8090"},
			"https://127.0.0.1:8443/events?topic=x", "http://127.0.0.1:8090/publish", protoH2, "h2"},
		{[]string{"-addr", "127.0.0.1:8443", "-tls", "-transport", "ws"},
			"wss://127.0.0.1:8443/ws?topic=x", "https://127.0.0.1:8443/publish", protoTLS, "http/1.1"},
		{[]string{"-target", "nchan", "-addr", "localhost:8444", "-h3", "-pub-addr", "127.0.0.1:8091"},
			"https://localhost:8444/sub/x", "http://127.0.0.1:8091/pub/x", protoH3, "h3"},
		// publishing over WebSocket: a ws:// URL per topic
		{[]string{"-pub-ws"}, "http://127.0.0.1:8090/events?topic=x", "ws://127.0.0.1:8090/ws-publish?topic=x", protoHTTP, ""},
		{[]string{"-target", "nchan", "-addr", "127.0.0.1:8091", "-pub-ws", "-transport", "ws"},
			"ws://127.0.0.1:8091/sub/x", "ws://127.0.0.1:8091/pub/x", protoHTTP, ""},
		// an https:// URL alone is -tls
		{[]string{"-sub-url", "https://[::1]/events?topic={topic}"},
			"https://[::1]/events?topic=x", "http://127.0.0.1:8090/publish", protoTLS, "http/1.1"},
	} {
		c, _, err := parseFlags(tc.args, io.Discard)
		if err != nil {
			t.Fatal(err)
		}
		tg, err := newTarget(c)
		if err != nil {
			t.Fatalf("%q: %v", tc.args, err)
		}
		sub, _ := tg.endpoint(tg.subURL, "x", false)
		pub, _ := tg.endpoint(tg.pubURL, "x", false)
		if sub.url != tc.sub || pub.url != tc.pub || tg.proto != tc.proto || sub.tls != (tc.alpn != "") {
			t.Errorf("%q: subscribe %s, publish %s, protocol %q", tc.args, sub.url, pub.url, tg.proto)
		}
		if tc.alpn != "" && (tg.subTLS == nil || tg.subTLS.NextProtos[0] != tc.alpn || !tg.subTLS.InsecureSkipVerify) {
			t.Errorf("%q: TLS %+v", tc.args, tg.subTLS)
		}
	}
	// certificates are checked off loopback
	c, _, _ := parseFlags([]string{"-h2", "-addr", "push.example:443", "-allow-remote"}, io.Discard)
	if tg, err := newTarget(c); err != nil || tg.subTLS.InsecureSkipVerify || tg.subTLS.ServerName != "push.example" {
		t.Errorf("remote: %v", err)
	}
	// Centrifugo publishes through its HTTP server API only
	c, _, _ = parseFlags([]string{"-target", "centrifugo", "-pub-ws"}, io.Discard)
	if _, err := newTarget(c); err == nil || !strings.Contains(err.Error(), "HTTP only") {
		t.Errorf("centrifugo -pub-ws: %v", err)
	}
	// WebSocket over HTTP/2 or HTTP/3 is refused with the reason
	if _, _, err := parseFlags([]string{"-h2", "-transport", "ws"}, io.Discard); err == nil || !strings.Contains(err.Error(), "SSE only") {
		t.Errorf("-h2 -transport ws: %v", err)
	}
}

func TestFileLimit(t *testing.T) {
	c, _, _ := parseFlags([]string{"-n", "100000000"}, io.Discard)
	err := checkFileLimit(c)
	if err == nil || !strings.Contains(err.Error(), "hard limit") {
		t.Fatalf("got %v", err)
	}
	c.n = 10
	if err := checkFileLimit(c); err != nil {
		t.Fatal(err)
	}
}

func TestComparison(t *testing.T) {
	mk := func(target string, dps float64, missing uint64) *result {
		return &result{Target: target, Transport: "sse", Scenario: "fanout", Connected: 10, DeliveriesPerSec: dps, Missing: missing,
			Server: &serverResult{DeliveriesPerCPUSec: dps * 2}}
	}
	var b bytes.Buffer
	// nchan first: caddy-push still gets the first column; medians of 3
	printComparison(&b, []*result{mk("nchan", 100, 0), mk("caddy-push", 150, 0), mk("caddy-push", 900, 0), mk("caddy-push", 120, 0)})
	out := b.String()
	for _, want := range []string{"caddy-push  nchan  caddy-push/nchan", "deliveries/s  150  100  1.50×", "missing deliveries  0  0  ="} {
		if !strings.Contains(strings.Join(strings.Fields(out), "  "), strings.Join(strings.Fields(want), "  ")) {
			t.Errorf("no %q in\n%s", want, out)
		}
	}
}

// Runs over HTTPS get rows of their own, the protocol in the scenario's
// name; a target that did not run one (nchan over h3) has n/a. So do runs
// that published over WebSocket.
func TestComparisonProtocols(t *testing.T) {
	mk := func(target, protocol string, dps float64) *result {
		return &result{Target: target, Transport: "sse", Protocol: protocol, Scenario: "fanout", Connected: 10, DeliveriesPerSec: dps}
	}
	var b bytes.Buffer
	overWS := func(r *result) *result { r.PublishOver = "ws"; return r }
	printComparison(&b, []*result{mk("caddy-push", "", 300), mk("nchan", "", 100), mk("caddy-push", protoH2, 200),
		mk("nchan", protoH2, 50), mk("caddy-push", protoH3, 150), overWS(mk("caddy-push", "", 400)), overWS(mk("nchan", "", 200))})
	out := strings.Join(strings.Fields(b.String()), " ")
	for _, want := range []string{
		"fanout sse deliveries/s 300 100 3.00×",
		"fanout-h2 sse deliveries/s 200 50 4.00×",
		"fanout-h3 sse deliveries/s 150 n/a n/a",
		"fanout-pubws sse deliveries/s 400 200 2.00×",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("no %q in\n%s", want, b.String())
		}
	}
}

// With a third target, each gets a column and caddy-push a ratio to each,
// in the order the results came.
func TestComparisonThreeTargets(t *testing.T) {
	mk := func(target string, dps float64) *result {
		return &result{Target: target, Transport: "ws", Scenario: "fanout", Connected: 10, DeliveriesPerSec: dps}
	}
	var b bytes.Buffer
	printComparison(&b, []*result{mk("centrifugo", 50), mk("caddy-push", 150), mk("nchan", 100)})
	out := strings.Join(strings.Fields(b.String()), " ")
	for _, want := range []string{
		"metric caddy-push centrifugo nchan caddy-push/centrifugo caddy-push/nchan",
		"fanout ws deliveries/s 150 50 100 3.00× 1.50×",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("no %q in\n%s", want, b.String())
		}
	}
	// no server figures in any: no row
	if strings.Contains(out, "per server CPU-s") {
		t.Errorf("a row without figures:\n%s", b.String())
	}
}
