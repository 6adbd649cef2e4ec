package push

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/golang-jwt/jwt/v5"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

const eventsSecret = "the-app-and-caddy-share-this"

// checkSignature fails unless r's Push-Signature is the body's
// HMAC-SHA256 with secret, as the app computes it.
func checkSignature(t testing.TB, r appRequest, secret string) {
	t.Helper()
	if !signedWith(r, secret) {
		t.Fatalf("Push-Signature %q does not match the body %s", r.Header.Get("Push-Signature"), r.Body)
	}
}

func signedWith(r appRequest, secret string) bool {
	mac := hmac.New(sha256.New, []byte(secret))
	mac.Write(r.Body)
	want := "sha256=" + hex.EncodeToString(mac.Sum(nil))
	return hmac.Equal([]byte(r.Header.Get("Push-Signature")), []byte(want))
}

// batchOf decodes a batch the app got.
func batchOf(t testing.TB, r appRequest) []hookEvent {
	t.Helper()
	var b struct{ Events []hookEvent }
	if err := json.Unmarshal(r.Body, &b); err != nil || len(b.Events) == 0 {
		t.Fatalf("batch %s: %v", r.Body, err)
	}
	return b.Events
}

// appEvents are the events the app got on /events so far, every batch
// checked against the secret.
func appEvents(t testing.TB, app *testApp) []hookEvent {
	t.Helper()
	var out []hookEvent
	for _, r := range app.requests("/events") {
		checkSignature(t, r, eventsSecret)
		out = append(out, batchOf(t, r)...)
	}
	return out
}

// waitEvents waits until the app has got events that done accepts.
func waitEvents(t testing.TB, app *testApp, done func([]hookEvent) bool) []hookEvent {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		evs := appEvents(t, app)
		if done(evs) {
			return evs
		}
		if time.Now().After(deadline) {
			t.Fatalf("the app got %s", mustJSON(evs))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func mustJSON(v any) string {
	b, _ := json.MarshalIndent(v, "", "  ")
	return string(b)
}

// ofType are the events of one type, by the first topic of each.
func ofType(evs []hookEvent, typ string) map[string]hookEvent {
	out := make(map[string]hookEvent)
	for _, e := range evs {
		if e.Type == typ && len(e.Topics) > 0 {
			out[e.Topics[0]] = e
		}
	}
	return out
}

// okApp answers every batch with 200.
func okApp(t testing.TB) *testApp {
	app := startTestApp(t)
	app.handle("/events", func(w http.ResponseWriter, r *http.Request) {})
	return app
}

// eventsSink attaches an events hook to a hub of its own, outside Caddy.
func eventsSink(t testing.TB, cfg *EventsHook, logger *zap.Logger) *Hub {
	t.Helper()
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	t.Cleanup(cancel)
	if cfg.Secret == "" {
		cfg.Secret = eventsSecret
	}
	if err := cfg.provision(ctx); err != nil {
		t.Fatal(err)
	}
	hub := newHub("h")
	hub.events.attach(cfg, logger)
	t.Cleanup(func() { hub.events.detach(cfg) })
	return hub
}

func connectEvent(i int) hookEvent {
	return connectionEvent("connect", Member{Connection: fmt.Sprintf("c%d", i), User: "u", Transport: TransportSSE}, []string{"t"})
}

// connectionIDs are the connection ids of events, in order.
func connectionIDs(evs []hookEvent) []string {
	var out []string
	for _, e := range evs {
		out = append(out, e.Connection)
	}
	return out
}

func ids(from, to int) []string {
	var out []string
	for i := from; i <= to; i++ {
		out = append(out, fmt.Sprintf("c%d", i))
	}
	return out
}

// A batch goes when it is full, or once its first event has waited the
// interval; each is signed with the secret, and holds the events in the
// order they came.
func TestEventsBatchSizeAndInterval(t *testing.T) {
	app := okApp(t)
	hub := eventsSink(t, &EventsHook{Hook: Hook{URLs: []string{app.URL + "/events"}}, Interval: caddy.Duration(time.Second), Batch: 3}, zap.NewNop())
	start := time.Now()
	for i := 1; i <= 7; i++ {
		hub.hookEvent(connectEvent(i))
	}
	waitFor(t, 5*time.Second, func() bool { return len(app.requests("/events")) == 3 })
	took := time.Since(start)
	got := app.requests("/events")
	var all []hookEvent
	for i, r := range got {
		checkSignature(t, r, eventsSecret)
		if ct := r.Header.Get("Content-Type"); ct != "application/json" {
			t.Errorf("Content-Type %q", ct)
		}
		b := batchOf(t, r)
		if want := []int{3, 3, 1}[i]; len(b) != want {
			t.Errorf("batch %d holds %d events, want %d", i, len(b), want)
		}
		all = append(all, b...)
	}
	if !slices.Equal(connectionIDs(all), ids(1, 7)) {
		t.Errorf("events in the order %v", connectionIDs(all))
	}
	if took < 900*time.Millisecond {
		t.Errorf("the last event, alone, went after %v: before the interval", took)
	}
	var raw struct {
		Events []map[string]any `json:"events"`
	}
	_ = json.Unmarshal(got[0].Body, &raw)
	e := raw.Events[0]
	if e["type"] != "connect" || e["hub"] != "h" || e["connection"] != "c1" || e["user"] != "u" || e["transport"] != "sse" {
		t.Errorf("event %v", e)
	}
	if ts, _ := e["time"].(string); !strings.HasSuffix(ts, "Z") {
		t.Errorf("time %v, want RFC 3339 in UTC", e["time"])
	} else if _, err := time.Parse(time.RFC3339Nano, ts); err != nil {
		t.Error(err)
	}
}

// While the app fails (an error status, or none answering), the batch is
// retried, further and further apart, and events that come meanwhile
// wait in the queue: the app gets them all, in order, once.
func TestEventsRetriedUntilTheAppTakesThem(t *testing.T) {
	app := startTestApp(t)
	var mu sync.Mutex
	var statuses []int
	answers := []int{500, 503, 503}
	app.handle("/events", func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		status := 200
		if n := len(statuses); n < len(answers) {
			status = answers[n]
		}
		statuses = append(statuses, status)
		w.WriteHeader(status)
	})
	hub := eventsSink(t, &EventsHook{Hook: Hook{URLs: []string{app.URL + "/events"}}, Interval: caddy.Duration(20 * time.Millisecond)}, zap.NewNop())
	for i := 1; i <= 5; i++ {
		hub.hookEvent(connectEvent(i))
	}
	waitFor(t, 5*time.Second, func() bool { return len(app.requests("/events")) >= 1 })
	for i := 6; i <= 10; i++ {
		hub.hookEvent(connectEvent(i))
	}
	var all []hookEvent
	waitFor(t, 10*time.Second, func() bool {
		mu.Lock()
		defer mu.Unlock()
		all = nil
		for i, r := range app.requests("/events") {
			if statuses[i] == 200 {
				checkSignature(t, r, eventsSecret)
				all = append(all, batchOf(t, r)...)
			}
		}
		return len(all) >= 10
	})
	if !slices.Equal(connectionIDs(all), ids(1, 10)) {
		t.Fatalf("the app took %v", connectionIDs(all))
	}
	seen := app.requests("/events")
	for i := 1; i < 4; i++ {
		if string(seen[i].Body) != string(seen[0].Body) {
			t.Fatalf("try %d sent %s, not the first batch", i+1, seen[i].Body)
		}
	}
}

// Backing off: each wait is from half its delay to all of it, the delay
// doubling from 100ms up to 10s.
func TestEventsBackoffGrows(t *testing.T) {
	app := startTestApp(t)
	var mu sync.Mutex
	var at []time.Time
	app.handle("/events", func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		at = append(at, time.Now())
		mu.Unlock()
		w.WriteHeader(500)
	})
	hub := eventsSink(t, &EventsHook{Hook: Hook{URLs: []string{app.URL + "/events"}}, Interval: caddy.Duration(time.Millisecond)}, zap.NewNop())
	hub.hookEvent(connectEvent(1))
	waitFor(t, 5*time.Second, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(at) >= 5
	})
	mu.Lock()
	defer mu.Unlock()
	for i := 1; i < 5; i++ {
		least := eventsRetryFirst << (i - 1) / 2
		if gap := at[i].Sub(at[i-1]); gap < least-5*time.Millisecond || gap > 4*least+time.Second {
			t.Errorf("wait %d: %v, want from %v to %v (and the call)", i, gap, least, 2*least)
		}
	}
}

// Beyond the queue, events are dropped: counted in the metric, and
// logged once however many go at once. What the queue held still goes.
func TestEventsQueueOverflow(t *testing.T) {
	app := startTestApp(t)
	release := make(chan struct{})
	app.handle("/events", func(w http.ResponseWriter, r *http.Request) { <-release })
	core, logs := observer.New(zapcore.WarnLevel)
	cfg := &EventsHook{Hook: Hook{URLs: []string{app.URL + "/events"}, Timeout: caddy.Duration(time.Minute)},
		Interval: caddy.Duration(time.Hour), Batch: 2, Queue: 4}
	hub := eventsSink(t, cfg, zap.New(core))
	hub.hookEvent(connectEvent(1))
	hub.hookEvent(connectEvent(2))
	waitFor(t, 5*time.Second, func() bool { return len(app.requests("/events")) == 1 }) // held by the app
	for i := 3; i <= 20; i++ {
		hub.hookEvent(connectEvent(i))
	}
	if n := hub.events.dropped.Load(); n != 14 {
		t.Errorf("%d dropped, want 14 (18 for a queue of 4)", n)
	}
	if n := logs.FilterMessageSnippet("dropped").Len(); n != 1 {
		t.Errorf("%d warnings, want 1: %v", n, logs.All())
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collector{app: &App{hubs: map[string]*Hub{"h": hub}}})
	families, _ := reg.Gather()
	found := false
	for _, f := range families {
		if f.GetName() == "caddy_push_hook_events_dropped_total" {
			m := f.GetMetric()[0]
			found = m.GetCounter().GetValue() == 14 && m.GetLabel()[0].GetValue() == "h"
		}
	}
	if !found {
		t.Errorf("no caddy_push_hook_events_dropped_total{hub=\"h\"} 14")
	}
	close(release)
	waitEvents(t, app, func(evs []hookEvent) bool { return len(evs) == 6 })
	if got := connectionIDs(appEvents(t, app)); !slices.Equal(got, ids(1, 6)) {
		t.Errorf("the app got %v", got)
	}
}

// Removing the hook sends what is queued first, then the goroutine ends;
// an app that never takes it costs eventsFlushFor at most.
func TestEventsFlushOnRemoval(t *testing.T) {
	app := okApp(t)
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	cfg := &EventsHook{Hook: Hook{URLs: []string{app.URL + "/events"}}, Secret: eventsSecret, Interval: caddy.Duration(time.Hour)}
	if err := cfg.provision(ctx); err != nil {
		t.Fatal(err)
	}
	hub := newHub("h")
	hub.events.attach(cfg, zap.NewNop())
	hub.hookEvent(connectEvent(1))
	hub.events.detach(cfg)
	if got := connectionIDs(appEvents(t, app)); !slices.Equal(got, ids(1, 1)) {
		t.Fatalf("the app got %v", got)
	}
	waitNoGoroutine(t, "(*eventSink).run")
	hub.hookEvent(connectEvent(2)) // no hook: nothing

	down := startTestApp(t)
	down.handle("/events", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(500) })
	cfg = &EventsHook{Hook: Hook{URLs: []string{down.URL + "/events"}}, Secret: eventsSecret}
	if err := cfg.provision(ctx); err != nil {
		t.Fatal(err)
	}
	hub.events.attach(cfg, zap.NewNop())
	hub.hookEvent(connectEvent(3))
	start := time.Now()
	hub.events.detach(cfg)
	if took := time.Since(start); took > eventsFlushFor+time.Second {
		t.Fatalf("detach took %v", took)
	}
	if n := hub.events.dropped.Load(); n != 1 {
		t.Fatalf("%d dropped, want 1", n)
	}
	waitNoGoroutine(t, "(*eventSink).run")
}

func eventsSite(app *testApp, secret string) string {
	return `{
	push {
		hub default {
			events ` + app.URL + `/events {
				secret ` + secret + `
				interval 20ms
			}
		}
	}
}
http://127.0.0.1:PORT {
	push_sse /events
	push_sse /short {
		max_duration 300ms
	}
	push_sse /private {
		private user/*
		jwt_key ` + testSecret + `
	}
	push_ws /ws {
		publish chat
	}
	push_ws /ws-short {
		max_duration 300ms
	}
	push_ws /ws-small {
		max_message_size 1KiB
		publish small
	}
	push_ws /ws-private {
		private user/*
		jwt_key ` + testSecret + `
	}
	push_publish /publish {
		anonymous
	}
}`
}

// The app is told of each connection once admitted, and of its end with
// why it ended, over SSE and WebSocket alike: the client left, it
// reached max_duration, its token expired, an operator disconnected or
// paused it, and a reload ended it.
func TestEventsConnectAndDisconnectReasons(t *testing.T) {
	app := okApp(t)
	c := startCaddy(t, eventsSite(app, eventsSecret))
	auth := header("Authorization", "Bearer "+hs256(t, jwt.MapClaims{"sub": "alice", "exp": time.Now().Add(2 * time.Second).Unix(),
		"push": map[string]any{"subscribe": []string{"user/alice/sse", "user/alice/ws"}}}))
	hub, _ := LookupHub("default")
	ctx := context.Background()

	left := subscribe(t, c.URL+"/events?topic=sse-left", nil)
	left.next(time.Second)
	subscribe(t, c.URL+"/short?topic=sse-max", nil)
	subscribe(t, c.URL+"/private?topic=user/alice/sse", auth)
	subscribe(t, c.URL+"/events?topic=sse-disconnected", nil)
	subscribe(t, c.URL+"/events?topic=sse-paused", nil)
	subscribe(t, c.URL+"/events?topic=sse-reload", nil)
	wsLeft := mustDialWS(t, c.URL+"/ws?topic=ws-left", nil)
	mustDialWS(t, c.URL+"/ws-short?topic=ws-max", nil)
	mustDialWS(t, c.URL+"/ws-private?topic=user/alice/ws", auth)
	mustDialWS(t, c.URL+"/ws?topic=ws-disconnected", nil)
	mustDialWS(t, c.URL+"/ws?topic=ws-paused", nil)
	mustDialWS(t, c.URL+"/ws?topic=ws-reload", nil)
	connects := ofType(waitEvents(t, app, func(evs []hookEvent) bool { return len(ofType(evs, "connect")) == 12 }), "connect")
	for topic, e := range connects {
		transport := TransportSSE
		if strings.Contains(topic, "ws") {
			transport = TransportWS
		}
		if e.Hub != "default" || e.Connection == "" || e.Transport != transport || e.RemoteAddr != "127.0.0.1" || e.Reason != "" {
			t.Errorf("connect on %s: %+v", topic, e)
		}
		if strings.HasPrefix(topic, "user/alice/") != (e.User == "alice") {
			t.Errorf("connect on %s: user %q", topic, e.User)
		}
	}
	left.Close()
	_ = wsLeft.conn.Close()
	for _, tr := range []string{"sse", "ws"} {
		if n, err := hub.Disconnect(ctx, DisconnectRequest{Connection: connects[tr+"-disconnected"].Connection}); n != 1 {
			t.Fatalf("disconnect: %d %v", n, err)
		}
		if n, err := hub.Pause(ctx, PauseRequest{Topics: []string{tr + "-paused"}, For: time.Minute}); n != 1 {
			t.Fatalf("pause: %d %v", n, err)
		}
	}
	want := map[string]string{
		"sse-left": "client_left", "sse-max": "max_duration", "user/alice/sse": "token_expired",
		"sse-disconnected": "disconnected", "sse-paused": "paused",
		"ws-left": "client_left", "ws-max": "max_duration", "user/alice/ws": "token_expired",
		"ws-disconnected": "disconnected", "ws-paused": "paused",
	}
	waitEvents(t, app, func(evs []hookEvent) bool { return len(ofType(evs, "disconnect")) == len(want) })
	c.Load(eventsSite(app, eventsSecret))
	want["sse-reload"], want["ws-reload"] = "reload", "reload"
	evs := waitEvents(t, app, func(evs []hookEvent) bool { return len(ofType(evs, "disconnect")) == len(want) })
	for topic, e := range ofType(evs, "disconnect") {
		if e.Reason != want[topic] || e.Connection != connects[topic].Connection || e.Transport != connects[topic].Transport ||
			e.User != connects[topic].User || !e.Time.After(connects[topic].Time) {
			t.Errorf("disconnect on %s: %+v, want reason %s after %+v", topic, e, want[topic], connects[topic])
		}
	}
	if n := len(evs); n != 24 {
		t.Errorf("the app got %d events, want 24: each connection's connect and disconnect once\n%s", n, mustJSON(evs))
	}
}

// A client that stops reading is cut off as slow, over SSE and
// WebSocket; the app is told so.
func TestEventsSlowConsumer(t *testing.T) {
	app := okApp(t)
	c := startCaddy(t, eventsSite(app, eventsSecret))
	defer openStalledStream(t, c, "/events?topic=slow").Close()
	if !testOverTLS() {
		defer openStalledWebSocket(t, c, "/ws?topic=slow").Close()
	}
	fast := subscribe(t, c.URL+"/events?topic=slow&fast", nil)
	stalled := 2
	if testOverTLS() {
		stalled = 1
	}
	waitEvents(t, app, func(evs []hookEvent) bool { return len(ofType(evs, "connect")) == 1 && len(evs) == stalled+1 })
	pacedFlood(t, "slow", 3000, 8<<10, 50, func(i int) { fast.nextEvent(5 * time.Second) })
	evs := waitEvents(t, app, func(evs []hookEvent) bool {
		n := 0
		for _, e := range evs {
			if e.Type == "disconnect" && e.Reason == "slow" {
				n++
			}
		}
		return n == stalled
	})
	for _, e := range evs {
		if e.Type == "disconnect" && e.Reason != "slow" {
			t.Errorf("%+v", e)
		}
	}
}

// openStalledWebSocket opens a WebSocket on a connection of its own (a
// small socket buffer, cleartext) and never reads it.
func openStalledWebSocket(t testing.TB, c *testCaddy, path string) net.Conn {
	t.Helper()
	stuck, err := net.Dial("tcp", "127.0.0.1:"+c.port)
	if err != nil {
		t.Fatal(err)
	}
	if tcp, ok := stuck.(*net.TCPConn); ok {
		_ = tcp.SetReadBuffer(4096)
	}
	fmt.Fprintf(stuck, "GET %s HTTP/1.1\r\nHost: 127.0.0.1:%s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n", path, c.port)
	return stuck
}

// What a WebSocket client publishes is told to the app with its
// connection and the event's id.
func TestEventsWSClientPublish(t *testing.T) {
	app := okApp(t)
	c := startCaddy(t, eventsSite(app, eventsSecret))
	ws := mustDialWS(t, c.URL+"/ws?topic=chat", nil)
	ws.send(`{"topic":"chat","event":"msg","data":"hi"}`)
	f := ws.nextFrame(2 * time.Second)
	evs := waitEvents(t, app, func(evs []hookEvent) bool { return len(evs) == 2 })
	connect, publish := evs[0], evs[1]
	if publish.Type != "publish" || publish.Connection != connect.Connection || publish.Transport != TransportWS || publish.Event == nil ||
		!reflect.DeepEqual(*publish.Event, hookMessage{ID: f.ID, Topics: []string{"chat"}, Event: "msg", Data: "hi"}) {
		t.Fatalf("publish %s, want the frame %+v from %+v", mustJSON(publish), f, connect)
	}
	// one published elsewhere is not told
	c.publish("/publish", "topic=chat&data=server")
	ws.nextFrame(2 * time.Second)
	time.Sleep(100 * time.Millisecond)
	if n := len(appEvents(t, app)); n != 2 {
		t.Fatalf("the app got %d events, want 2", n)
	}
}

// A WebSocket the server closes for what its client sent ends for
// policy: here a message over max_message_size.
func TestEventsWSPolicy(t *testing.T) {
	app := okApp(t)
	c := startCaddy(t, eventsSite(app, eventsSecret))
	ws := mustDialWS(t, c.URL+"/ws-small?topic=small", nil)
	ws.send(strings.Repeat("x", 2048))
	if code := ws.closeCode(2 * time.Second); code != 1009 {
		t.Fatalf("closed with %d, want 1009", code)
	}
	evs := waitEvents(t, app, func(evs []hookEvent) bool { return len(evs) == 2 })
	if evs[1].Type != "disconnect" || evs[1].Reason != "policy" {
		t.Fatalf("%s", mustJSON(evs))
	}
}

// A reload keeps what is queued while the app is down: the new config's
// URLs and secret send it, the old connections' ends included. A config
// without the hook ends its goroutine, once it has told of the ends of
// the connections that close with the old config.
func TestEventsReloadLosesNothing(t *testing.T) {
	app := startTestApp(t)
	var mu sync.Mutex
	up := false
	app.handle("/events", func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		if !up {
			w.WriteHeader(500)
		}
	})
	c := startCaddy(t, eventsSite(app, eventsSecret))
	subscribe(t, c.URL+"/events?topic=a", nil)
	mustDialWS(t, c.URL+"/ws?topic=b", nil)
	waitFor(t, 5*time.Second, func() bool { return len(app.requests("/events")) > 0 })
	const newSecret = "a-new-secret-after-the-reload"
	c.Load(eventsSite(app, newSecret))
	mu.Lock()
	up = true
	mu.Unlock()
	// every batch signed with one secret or the other: checked below
	unchecked := func() []hookEvent {
		var evs []hookEvent
		for _, r := range app.requests("/events") {
			evs = append(evs, batchOf(t, r)...)
		}
		return evs
	}
	waitFor(t, 15*time.Second, func() bool { return len(ofType(unchecked(), "disconnect")) == 2 })
	reqs := app.requests("/events")
	for _, r := range reqs {
		if !signedWith(r, eventsSecret) && !signedWith(r, newSecret) {
			t.Fatalf("a batch signed with neither secret: %s", r.Body)
		}
	}
	checkSignature(t, reqs[len(reqs)-1], newSecret)
	// what the app took: the last try of each batch
	var taken []hookEvent
	for i, r := range reqs {
		if i == len(reqs)-1 || string(reqs[i+1].Body) != string(r.Body) {
			taken = append(taken, batchOf(t, r)...)
		}
	}
	if len(ofType(taken, "connect")) != 2 || len(ofType(taken, "disconnect")) != 2 || len(taken) != 4 {
		t.Fatalf("the app took %s", mustJSON(taken))
	}
	for _, e := range ofType(taken, "disconnect") {
		if e.Reason != "reload" {
			t.Errorf("%+v", e)
		}
	}
	// the streams of a config that removes the hook end with it; the
	// hook, before it goes, tells of their ends
	subscribe(t, c.URL+"/events?topic=c", nil)
	mustDialWS(t, c.URL+"/ws?topic=d", nil)
	waitFor(t, 5*time.Second, func() bool { return len(ofType(unchecked(), "connect")) == 4 })
	c.Load(`http://127.0.0.1:PORT {
	respond "no hub"
}`)
	for _, topic := range []string{"c", "d"} {
		if e := ofType(unchecked(), "disconnect")[topic]; e.Reason != "reload" {
			t.Errorf("the end of the connection on %s: %+v", topic, e)
		}
	}
	waitNoGoroutine(t, "(*eventSink).run")
}

func TestEventsCaddyfile(t *testing.T) {
	d := caddyfile.NewTestDispenser("push {\n\thub default {\n\t\tevents http://a/events http://b/events {\n\t\t\tsecret {env.S}\n\t\t\tinterval 2s\n\t\t\tbatch 50\n\t\t\tqueue 500\n\t\t\ttimeout 3s\n\t\t}\n\t}\n}")
	var a App
	if err := a.UnmarshalCaddyfile(d); err != nil {
		t.Fatal(err)
	}
	got, _ := json.Marshal(a.Hubs["default"])
	want := `{"events":{"urls":["http://a/events","http://b/events"],"timeout":3000000000,"secret":"{env.S}","interval":2000000000,"batch":50,"queue":500}}`
	if string(got) != want {
		t.Errorf("got  %s\nwant %s", got, want)
	}
	for input, want := range map[string]string{
		"events":                                       "events needs the app's URL",
		"events http://a {\n\tbatch 0\n}":              "invalid batch '0'",
		"events http://a {\n\tqueue -1\n}":             "invalid queue '-1'",
		"events http://a {\n\tinterval soon\n}":        "invalid interval 'soon'",
		"events http://a {\n\tsecret a\n\tsecret b\n}": "events option 'secret' given more than once",
		"events http://a {\n\tsecret\n}":               "wrong argument count",
		"events http://a {\n\tsigned yes\n}":           "unrecognized events option 'signed'",
	} {
		d := caddyfile.NewTestDispenser("push {\n\thub default {\n\t\t" + strings.ReplaceAll(input, "\n", "\n\t\t") + "\n\t}\n}")
		if err := new(App).UnmarshalCaddyfile(d); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: %v, want %q", input, err, want)
		}
	}
}

// Without a secret the config does not load, and says why; an empty
// placeholder is no secret either.
func TestEventsNeedASecret(t *testing.T) {
	for _, secret := range []string{"", "secret {env.PUSH_EVENTS_TEST_UNSET}"} {
		cfg := adapt(t, `{
	admin off
	push {
		hub default {
			events http://127.0.0.1:1/events {
				`+secret+`
			}
		}
	}
}`)
		err := caddyValidate(cfg)
		if err == nil || !strings.Contains(err.Error(), "events needs a secret") {
			t.Errorf("%q: %v", secret, err)
		}
	}
}

// What the authorize hook's answer says of a connection, its user and its
// meta, is in the events the app is told of it.
func TestEventsCarryAuthorizeAnswer(t *testing.T) {
	app := okApp(t)
	app.handle("/authorize", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"user":"ann","meta":{"plan":"pro"}}`)
	})
	site := strings.Replace(eventsSite(app, eventsSecret), "\tpush_sse /events\n", "\tpush_sse /events {\n\t\tauthorize "+app.URL+"/authorize\n\t}\n", 1)
	c := startCaddy(t, site)
	s := subscribe(t, c.URL+"/events?topic=met", nil)
	s.next(time.Second)
	e := ofType(waitEvents(t, app, func(evs []hookEvent) bool { return len(ofType(evs, "connect")) == 1 }), "connect")["met"]
	if e.User != "ann" || string(e.Meta) != `{"plan":"pro"}` {
		t.Errorf("connect: %+v, want user ann and meta {\"plan\":\"pro\"}", e)
	}
}
