// Command pushbench loads a push server with subscribers and publishes,
// and measures what reaches the subscribers: end-to-end latency of every
// delivery, deliveries per second, missing and duplicate deliveries,
// connect failures, and the server's memory and CPU time.
//
// It speaks to caddy-push and nchan (SSE or WebSocket), Centrifugo (its
// unidirectional SSE and WebSocket transports) and the Mercure protocol
// (Mercure's own hub, and caddy-push's push_mercure) over raw HTTP/1.1,
// so that the client costs little next to the server it measures on the
// same machine. With -tls the subscribers speak the same
// over TLS; with -h2 and -h3 they are SSE streams over HTTP/2 and HTTP/3,
// each on a connection of its own, as each browser has its own. The
// publisher stays on HTTP/1.1 (over TLS too unless -pub-addr names a
// plain HTTP address). With -pub-ws it publishes over WebSocket instead,
// a connection per topic, with no request per event.
//
//	pushbench -scenario fanout -transport ws -pid 1234
//	pushbench -h2 -addr 127.0.0.1:8443 -pub-addr 127.0.0.1:8090 -scenario fanout
//	pushbench -target nchan -addr 127.0.0.1:8091 -n 2000 -topics 20 -rate 200 -json > nchan.json
//	pushbench -target centrifugo -addr 127.0.0.1:8092 -transport ws -n 2000 -topics 20
//	pushbench -target mercure -addr 127.0.0.1:8093 -scenario fanout -pattern-share 0.1
//	pushbench -scenario fanout -transport ws -pub-ws
//	pushbench -compare caddy.json nchan.json       # a table of medians and ratios
//	pushbench -plot latency.png caddy.json nchan.json
package main

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/pprof"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// config is one run's settings, from flags and the scenario's presets.
type config struct {
	target      string
	transport   string
	addr        string
	pubAddr     string
	tls, h2, h3 bool
	subURL      string
	pubURL      string
	pubWS       bool
	allowRemote bool
	label       string

	jwtKey       string  // the Mercure publisher JWT's HS256 key
	patternShare float64 // the share of Mercure subscribers that subscribe by URI template

	scenario    string
	n           int
	topics      int
	connectRate float64
	rate        float64
	size        int
	duration    time.Duration
	settle      time.Duration
	drain       time.Duration

	ramp     float64       // >1: multiply the rate by this every step...
	step     time.Duration // ...of this long...
	p99Limit time.Duration // ...until p99 exceeds this

	churnRate float64
	churnHold time.Duration

	pubConns int
	sources  int
	timeout  time.Duration
	pids     []int

	json       bool
	plot       string
	compare    bool
	cpuProfile string
}

// scenarios are the four load shapes. A scenario sets defaults;
// flags given on the command line win.
var scenarios = map[string]map[string]string{
	// how much memory a connection that only waits costs
	"idle": {"n": "19000", "topics": "100", "rate": "0", "duration": "10s"},
	// many topics with a hundred subscribers each
	"fanout": {"n": "10000", "topics": "100", "rate": "1000", "size": "256", "duration": "30s"},
	// everyone on one topic: raise the rate until p99 passes 100 ms
	"broadcast": {"n": "10000", "topics": "1", "rate": "1", "size": "256", "ramp": "1.5", "step": "5s", "duration": "60s"},
	// fanout at a tenth of its rate while connections come and go
	"churn": {"n": "10000", "topics": "100", "rate": "100", "size": "256", "duration": "20s", "churn": "2000"},
}

func parseFlags(args []string, stderr io.Writer) (*config, []string, error) {
	c := &config{}
	fs := flag.NewFlagSet("pushbench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&c.target, "target", "caddy-push", "server under test: caddy-push, nchan, centrifugo, "+
		"mercure (Mercure's hub) or caddy-push-mercure (caddy-push's push_mercure), the last two over the Mercure protocol")
	fs.StringVar(&c.transport, "transport", "sse", "subscriber transport: sse or ws")
	fs.StringVar(&c.addr, "addr", "127.0.0.1:8090", "host:port of the server, put into the URL templates as {addr}")
	fs.StringVar(&c.pubAddr, "pub-addr", "", "host:port to publish to over plain HTTP/1.1, the publish URL's {addr} "+
		"(default: -addr; with -tls, -h2 or -h3, publishing is then HTTPS/1.1 to -addr)")
	fs.BoolVar(&c.tls, "tls", false, "subscribers speak HTTP/1.1 over TLS (https://, wss://), a connection each; "+
		"certificates are not checked on loopback")
	fs.BoolVar(&c.h2, "h2", false, "subscribers are SSE streams over HTTP/2 (TLS, ALPN h2), a connection each, as browsers have; "+
		"SSE only: no WebSocket over HTTP/2 (RFC 8441), use -tls for wss://; certificates are not checked on loopback")
	fs.BoolVar(&c.h3, "h3", false, "subscribers are SSE streams over HTTP/3 (QUIC), a connection each; "+
		"SSE only: no WebSocket over HTTP/3 (RFC 9220); certificates are not checked on loopback")
	fs.StringVar(&c.subURL, "sub-url", "", "subscribe URL template with {addr} and {topic} (default: the target's)")
	fs.StringVar(&c.pubURL, "pub-url", "", "publish URL template with {addr} and {topic} (default: the target's)")
	fs.BoolVar(&c.pubWS, "pub-ws", false, "publish over WebSocket, a connection per topic, each message an event "+
		"(caddy-push: a push_ws route with publish {query.topic}, /ws-publish as bench/Caddyfile has it; "+
		"nchan: its WebSocket publisher on the publish location); -pub-url is then a ws:// template")
	fs.BoolVar(&c.allowRemote, "allow-remote", false, "allow URLs that are not on loopback")
	fs.StringVar(&c.jwtKey, "jwt-key", cmp.Or(os.Getenv("MERCURE_PUBLISHER_JWT_KEY"), mercureDefaultKey),
		"Mercure targets: the HS256 key of the publisher's JWT; $MERCURE_PUBLISHER_JWT_KEY sets the default, "+
			"else it is Mercure's development key, as in bench/Caddyfile and bench/mercure/Caddyfile")
	fs.Float64Var(&c.patternShare, "pattern-share", 0, "Mercure targets: this share of the subscribers subscribe with a URI template "+
		"that matches their topic alone (https://example.com/rooms/<name>/{x}) instead of the topic itself")
	fs.StringVar(&c.label, "label", "", "name of the run in tables and plots (default: target transport scenario)")
	fs.StringVar(&c.scenario, "scenario", "", "preset: idle, fanout, broadcast or churn (flags given still win)")
	fs.IntVar(&c.n, "n", 100, "subscribers")
	fs.IntVar(&c.topics, "topics", 10, "topics; subscriber i follows topic i mod topics")
	fs.Float64Var(&c.connectRate, "connect-rate", 2000, "subscriber connects per second")
	fs.Float64Var(&c.rate, "rate", 100, "publishes per second, round robin over the topics (0: none)")
	fs.IntVar(&c.size, "size", 64, "payload bytes")
	fs.DurationVar(&c.duration, "duration", 10*time.Second, "how long to publish (idle: to hold the connections)")
	fs.DurationVar(&c.settle, "settle", time.Second, "wait after the last connect before publishing")
	fs.DurationVar(&c.drain, "drain", 3*time.Second, "after publishing, wait at most this long without a delivery for the rest")
	fs.Float64Var(&c.ramp, "ramp", 0, "if > 1, multiply the rate by this every -step until p99 passes -p99-limit or -duration is used up")
	fs.DurationVar(&c.step, "step", 5*time.Second, "length of a -ramp step")
	fs.DurationVar(&c.p99Limit, "p99-limit", 100*time.Millisecond, "the p99 latency a -ramp step must keep to")
	fs.Float64Var(&c.churnRate, "churn", 0, "extra connects (and disconnects) per second while publishing")
	fs.DurationVar(&c.churnHold, "churn-hold", 100*time.Millisecond, "how long a churn connection stays open")
	fs.IntVar(&c.pubConns, "pub-conns", 16, "keep-alive connections the publisher uses")
	fs.IntVar(&c.sources, "sources", 16, "loopback source addresses (127.0.0.2...) to spread subscribers over; 0: the default")
	fs.DurationVar(&c.timeout, "timeout", 10*time.Second, "connect and handshake timeout")
	fs.BoolVar(&c.json, "json", false, "print the result as JSON instead of a table")
	fs.StringVar(&c.plot, "plot", "", "write a PNG of the latency CDF: of this run, or of the JSON results named as arguments")
	fs.StringVar(&c.cpuProfile, "cpuprofile", "", "write this process's CPU profile here (is the client the bottleneck?)")
	fs.BoolVar(&c.compare, "compare", false, "print the JSON results named as arguments side by side (medians of repeated runs) with ratios")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: pushbench [flags]                    run a load and print the result\n"+
			"       pushbench -compare result.json...     compare saved -json results\n"+
			"       pushbench -plot out.png result.json... plot saved -json results\n\nflags:\n")
		fs.PrintDefaults()
	}
	// -pid may be given more than once (nginx: the master, then each
	// worker): collect every value
	var pidArgs []string
	fs.Func("pid", "server process ids for /proc memory and CPU, comma-separated (repeatable)", func(s string) error {
		pidArgs = append(pidArgs, s)
		return nil
	})
	if err := fs.Parse(args); err != nil {
		return nil, nil, err
	}
	for _, arg := range pidArgs {
		for _, f := range strings.FieldsFunc(arg, func(r rune) bool { return r == ',' || r == ' ' }) {
			pid, err := strconv.Atoi(f)
			if err != nil || pid <= 0 {
				return nil, nil, fmt.Errorf("-pid %q: not a process id", f)
			}
			c.pids = append(c.pids, pid)
		}
	}
	if c.scenario != "" {
		preset, ok := scenarios[c.scenario]
		if !ok {
			return nil, nil, fmt.Errorf("unknown -scenario %q: idle, fanout, broadcast or churn", c.scenario)
		}
		given := map[string]bool{}
		fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
		for name, value := range preset {
			if !given[name] {
				if err := fs.Set(name, value); err != nil {
					return nil, nil, err
				}
			}
		}
	}
	return c, fs.Args(), c.check(len(fs.Args()) > 0)
}

func (c *config) check(files bool) error {
	switch {
	case c.compare && !files:
		return errors.New("-compare needs JSON result files as arguments")
	case files && !c.compare && c.plot == "":
		return errors.New("result files as arguments go with -compare or -plot")
	case files:
		return nil
	case c.transport != "sse" && c.transport != "ws":
		return fmt.Errorf("-transport %q: sse or ws", c.transport)
	case btoi(c.tls)+btoi(c.h2)+btoi(c.h3) > 1:
		return errors.New("-tls, -h2 and -h3: one at most")
	case c.transport == "ws" && (c.h2 || c.h3):
		return errors.New("-transport ws: -h2 and -h3 are SSE only, as WebSocket over HTTP/2 (RFC 8441) and HTTP/3 (RFC 9220) " +
			"is rarely supported; use -tls for WebSocket over TLS, or -transport sse")
	case c.n < 1 || c.topics < 1 || c.topics > c.n:
		return errors.New("need -n ≥ 1 and 1 ≤ -topics ≤ -n")
	case c.connectRate <= 0 || c.rate < 0 || c.churnRate < 0 || c.size < 0:
		return errors.New("-connect-rate must be > 0; -rate, -churn and -size ≥ 0")
	case c.ramp > 1 && (c.rate <= 0 || c.step <= 0):
		return errors.New("-ramp needs -rate > 0 and -step > 0")
	case c.pubConns < 1:
		return errors.New("-pub-conns must be ≥ 1")
	case c.sources < 0 || c.sources > 250:
		return errors.New("-sources: 0 to 250")
	case c.patternShare < 0 || c.patternShare > 1:
		return errors.New("-pattern-share: 0 to 1")
	case c.patternShare > 0 && !isMercure(c.target):
		return fmt.Errorf("-pattern-share: Mercure targets only, not %s", c.target)
	}
	return nil
}

// protocol is how the subscribers speak: protoHTTP, protoTLS, protoH2 or
// protoH3.
func (c *config) protocol() string {
	switch {
	case c.h3:
		return protoH3
	case c.h2:
		return protoH2
	case c.tls:
		return protoTLS
	}
	return protoHTTP
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

func main() {
	c, files, err := parseFlags(os.Args[1:], os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		return
	}
	if err != nil {
		fatal(err)
	}
	switch {
	case c.compare:
		var results []*result
		if results, err = readResults(files); err != nil {
			fatal(err)
		}
		printComparison(os.Stdout, results)
		if c.plot != "" {
			err = plotCDF(c.plot, results)
		}
	case len(files) > 0:
		var results []*result
		if results, err = readResults(files); err == nil {
			err = plotCDF(c.plot, results)
		}
	default:
		err = runMain(c)
	}
	if err != nil {
		fatal(err)
	}
}

func runMain(c *config) error {
	if err := checkFileLimit(c); err != nil {
		return err
	}
	if c.cpuProfile != "" {
		f, err := os.Create(c.cpuProfile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	progress := io.Writer(os.Stderr)
	res, err := run(ctx, c, progress)
	if err != nil {
		return err
	}
	if c.json {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(res); err != nil {
			return err
		}
	} else {
		printResult(os.Stdout, res)
	}
	if c.plot != "" {
		return plotCDF(c.plot, []*result{res})
	}
	return nil
}

// checkFileLimit raises the open-file soft limit to the hard one, and
// refuses a run that would need more: failing half-way with EMFILE would
// look like the server's fault.
func checkFileLimit(c *config) error {
	limit, err := raiseFileLimit()
	if err != nil {
		return fmt.Errorf("raising the open-file limit: %v", err)
	}
	// the churn's connections overlap by their hold time plus a handshake
	inFlight := int(c.churnRate*(c.churnHold.Seconds()+0.05)) + 1
	need := c.n + c.pubConns + inFlight + 64
	if uint64(need) > limit {
		return fmt.Errorf("-n %d needs about %d open files, but this process may open only %d "+
			"(the hard limit, ulimit -Hn): lower -n, or raise the hard limit as root "+
			"(e.g. prlimit --nofile=%d:%d --pid %d, or limits.conf); the server needs as many",
			c.n, need, limit, need, need, os.Getpid())
	}
	return nil
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "pushbench:", err)
	os.Exit(1)
}
