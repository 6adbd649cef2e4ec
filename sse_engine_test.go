package push

import (
	"net/http"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/caddy-push/push/internal/engine"
)

// goroutinesIn counts the goroutines whose stack holds fn.
func goroutinesIn(fn string) int {
	buf := make([]byte, 4<<20)
	n := 0
	for _, g := range strings.Split(string(buf[:runtime.Stack(buf, true)]), "\n\n") {
		if strings.Contains(g, fn) {
			n++
		}
	}
	return n
}

// onEngine reports whether the tests' connections go to the connection
// engine: cleartext HTTP/1.1 ones do, not those of the h2 and h3 modes.
func onEngine() bool { return engine.Supported && !engineOff.Load() && !testOverTLS() }

// Over cleartext HTTP/1.1 the engine owns the streams: no goroutine and no
// request stays per stream, the body is raw (not chunked) and ends with
// the connection, events arrive, and a client that leaves is seen and
// gives its place back.
func TestSSEStreamsLeaveNetHTTP(t *testing.T) {
	if !engine.Supported || engineOff.Load() {
		t.Skip("the connection engine is off")
	}
	if testOverTLS() {
		t.Skip("tests cleartext HTTP/1.1 streams; TestSSEOverTLSHTTP1LeavesNetHTTP tests TLS ones")
	}
	c := startCaddy(t, `
http://127.0.0.1:PORT {
	push_sse /events {
		max_connections 100
	}
	push_publish /publish {
		anonymous
	}
}`)
	hub, _ := LookupHub("default")
	conns := func() int64 { return hub.stats.of(TransportSSE).connections.Load() }
	const n = 100
	streams := make([]*sseClient, n)
	for i := range streams {
		streams[i] = subscribe(t, c.URL+"/events?topic=x", nil)
		if r := streams[i].Resp; r.StatusCode != 200 || len(r.TransferEncoding) != 0 || !r.Close {
			t.Fatalf("stream %d: %d, transfer-encoding %v, close %v; want 200, raw, ending with the connection",
				i, r.StatusCode, r.TransferEncoding, r.Close)
		}
	}
	// (the last handlers may still be handing their streams over)
	waitFor(t, time.Second, func() bool {
		return goroutinesIn("(*SSEHandler).ServeHTTP")+goroutinesIn("(*SSEHandler).stream") == 0
	})
	// net/http's per-connection goroutines are gone too: only the clients'
	// readers remain (one per stream, in this process)
	// (a connection of the test's set-up may still be winding down)
	if got := goroutinesIn("net/http.(*conn).serve"); got > n/10 {
		t.Fatalf("%d net/http connection goroutines for %d hijacked streams", got, n)
	}
	_, id := c.publish("/publish", "topic=x&data=hello")
	for i, s := range streams {
		if ev := s.nextEvent(time.Second); ev.ID != id || ev.Data != "hello" {
			t.Fatalf("stream %d got %+v, want %s", i, ev, id)
		}
	}
	for _, s := range streams {
		s.Close()
	}
	waitFor(t, 2*time.Second, func() bool { return conns() == 0 })
	// every place is free again
	for range n {
		if s := subscribe(t, c.URL+"/events?topic=x", nil); s.Resp.StatusCode != http.StatusOK {
			t.Fatalf("after the clients left: %d", s.Resp.StatusCode)
		}
	}
}

// Over HTTPS with HTTP/1.1 the engine owns the streams too (written from a
// goroutine only while a write is pending, watched by one reader): the
// handler and net/http's connection goroutines are gone, events arrive,
// and a client that leaves gives its place back.
func TestSSEOverTLSHTTP1LeavesNetHTTP(t *testing.T) {
	if !engine.Supported || engineOff.Load() {
		t.Skip("the connection engine is off")
	}
	c, base := startTLSCaddy(t, tlsSite)
	client := tlsClient(c, false)
	hub, _ := LookupHub("default")
	const n = 20
	streams := make([]*sseClient, n)
	for i := range streams {
		streams[i] = subscribeWith(t, client, base+"/events?topic=x", nil)
		if r := streams[i].Resp; r.ProtoMajor != 1 || r.StatusCode != 200 {
			t.Fatalf("stream %d: %s %d, want HTTP/1.1 200", i, r.Proto, r.StatusCode)
		}
	}
	waitFor(t, time.Second, func() bool {
		return goroutinesIn("(*SSEHandler).ServeHTTP")+goroutinesIn("(*SSEHandler).stream") == 0
	})
	publishWith(t, client, base+"/publish", "topic=x&data=tls")
	for i, s := range streams {
		if ev := s.nextEvent(time.Second); ev.Data != "tls" {
			t.Fatalf("stream %d got %+v", i, ev)
		}
	}
	for _, s := range streams {
		s.Close()
	}
	waitFor(t, 2*time.Second, func() bool { return hub.stats.of(TransportSSE).connections.Load() == 0 })
}

// The push app's engine option turns the engine off for the streams
// opened under its config, and a reload without it turns it on again.
func TestEngineOption(t *testing.T) {
	if !engine.Supported || envEngineOff || testOverTLS() {
		t.Skip("tests the engine on cleartext HTTP/1.1")
	}
	site := `
http://127.0.0.1:PORT {
	push_sse /events
}`
	c := startCaddy(t, "{\n\tpush {\n\t\tengine off\n\t\tio_uring off\n\t}\n}\n"+site)
	s := subscribe(t, c.URL+"/events?topic=x", nil)
	waitFor(t, time.Second, func() bool { return goroutinesIn("(*SSEHandler).stream") == 1 })
	if engine.RingAvailable() {
		t.Error("io_uring off, yet batches would go through the ring")
	}
	s.Close()
	c.Load(site)
	s = subscribe(t, c.URL+"/events?topic=x", nil)
	defer s.Close()
	if s.Resp.Close != true || len(s.Resp.TransferEncoding) != 0 {
		t.Fatalf("after a reload without engine off: transfer-encoding %v, close %v; want the engine's raw stream", s.Resp.TransferEncoding, s.Resp.Close)
	}
	waitFor(t, time.Second, func() bool { return goroutinesIn("(*SSEHandler).stream") == 0 })
}
