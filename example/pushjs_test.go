package example

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"

	"github.com/caddy-push/push"
)

// pushJSPage imports push.js from the server, as an app's page does, and
// lets a test open clients by name and read what each handler got. Every
// EventSource and WebSocket push.js makes is counted, with its URL, so a
// test can tell push.js's own reopens from the browser's reconnects.
const pushJSPage = `<!doctype html>
<meta charset="utf-8">
<link rel="icon" href="data:,">
<title>push.js</title>
<script>
window.opened = [];
for (const kind of ['EventSource', 'WebSocket']) {
  const Native = window[kind];
  window[kind] = class extends Native {
    constructor(url, ...rest) {
      super(url, ...rest);
      window.opened.push({ kind, url: String(url), at: Date.now() });
    }
  };
}
</script>
<script type="module">
import { subscribe, connect, Presence } from '/push.js';
const clients = {};
window.log = {};
window.results = {};
function handlers(name) {
  const log = window.log[name] = { events: [], states: [], resets: [], pauses: [], errors: [], joins: [], leaves: [], members: {} };
  return {
    onEvent: (ev) => log.events.push({ id: ev.id, type: ev.type, topic: ev.topic ?? '', data: ev.data }),
    onReset: (ev) => log.resets.push({ id: ev.id, type: ev.type, data: ev.data }),
    onPause: (until) => log.pauses.push({ until, at: Date.now(), id: clients[name].lastEventId }),
    onState: (state) => log.states.push({ state, at: Date.now() }),
    onError: (message) => log.errors.push(message),
    presence: new Presence({
      onJoin: (topic, m) => log.joins.push({ topic, ...m }),
      onLeave: (topic, m) => log.leaves.push({ topic, ...m }),
      onChange: (topic, members) => { log.members[topic] = [...members.keys()]; },
    }),
  };
}
window.sse = (name, target) => { clients[name] = subscribe(target, handlers(name)); };
window.ws = (name, target) => { clients[name] = connect(target, handlers(name)); };
window.state = (name) => clients[name].state;
window.lastEventId = (name) => clients[name].lastEventId;
// start calls a client's method; its outcome lands in results[id]
window.start = (id, name, method, ...args) => {
  Promise.resolve(clients[name][method](...args)).then(
    (value) => { window.results[id] = { ok: true, value: value ?? '' }; },
    (err) => { window.results[id] = { ok: false, error: err.message }; });
};
window.ready = true;
</script>
`

// pushJSSite serves the page, push.js and the endpoints the tests use.
// HISTORY stands for the hub's history.
const pushJSSite = `{
	push {
		hub default {
			history HISTORY
		}
	}
}

http://localhost:8080 {
	root * .
	push_client /push.js
	push_sse /events {
		retry 300ms
		presence
	}
	push_ws /ws {
		publish chat/a
		presence
	}
	push_publish /publish {
		anonymous
	}
	file_server
}
`

// pushJSServer is a site serving pushJSPage from a root of its own, so a
// test can load another config over it.
type pushJSServer struct {
	*demo
	root string
}

func startPushJS(t *testing.T, site string) *pushJSServer {
	t.Helper()
	root := t.TempDir()
	if err := os.WriteFile(filepath.Join(root, "index.html"), []byte(pushJSPage), 0o644); err != nil {
		t.Fatal(err)
	}
	return &pushJSServer{startSite(t, strings.Replace(site, "root * .", "root * "+root, 1)), root}
}

// load replaces the config with site, as `caddy reload` does.
func (s *pushJSServer) load(site string) {
	s.t.Helper()
	port := s.base[strings.LastIndex(s.base, ":")+1:]
	site = strings.NewReplacer(
		"root * .", "root * "+s.root,
		"\nhttp://localhost:8080 {", "\nhttp://127.0.0.1:"+port+" {",
	).Replace(site)
	site = strings.Replace(site, "{\n", "{\n\tadmin off\n\tpersist_config off\n", 1)
	cfg, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(site), nil)
	if err != nil {
		s.t.Fatal(err)
	}
	s.cfg = cfg
	s.reload()
}

// publish posts an event to topic and returns its id.
func (s *pushJSServer) publish(topic, data string) string {
	s.t.Helper()
	resp, err := http.PostForm(s.base+"/publish", url.Values{"topic": {topic}, "data": {data}})
	if err != nil {
		s.t.Fatal(err)
	}
	defer resp.Body.Close()
	id, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		s.t.Fatalf("publish %q to %s: %d %s", data, topic, resp.StatusCode, id)
	}
	return string(id)
}

// pause pauses the streams of topic through the Go API.
func pauseTopic(t *testing.T, topic string, d time.Duration) {
	t.Helper()
	hub, ok := push.LookupHub("default")
	if !ok {
		t.Fatal("no hub default")
	}
	if n, err := hub.Pause(context.Background(), push.PauseRequest{Topics: []string{topic}, For: d}); err != nil || n == 0 {
		t.Fatalf("pause: %d paused, %v", n, err)
	}
}

// jsLog is what the page recorded of one client.
type jsLog struct {
	Events []jsEvent `json:"events"`
	States []struct {
		State string `json:"state"`
		At    int64  `json:"at"`
	} `json:"states"`
	Resets []jsEvent `json:"resets"`
	Pauses []struct {
		Until int64  `json:"until"`
		At    int64  `json:"at"`
		ID    string `json:"id"`
	} `json:"pauses"`
	Errors  []string            `json:"errors"`
	Joins   []jsMember          `json:"joins"`
	Leaves  []jsMember          `json:"leaves"`
	Members map[string][]string `json:"members"`
}

type jsEvent struct {
	ID    string `json:"id"`
	Type  string `json:"type"`
	Topic string `json:"topic"`
	Data  string `json:"data"`
}

type jsMember struct {
	Topic      string `json:"topic"`
	Connection string `json:"connection"`
}

type jsOpened struct {
	Kind string `json:"kind"`
	URL  string `json:"url"`
	At   int64  `json:"at"`
}

// eval runs a JavaScript expression in the page, and reads its value into
// out unless out is nil.
func eval(t *testing.T, ctx context.Context, expr string, out any) {
	t.Helper()
	run(t, ctx, 5*time.Second, chromedp.Evaluate(expr, out, func(p *runtime.EvaluateParams) *runtime.EvaluateParams {
		return p.WithAwaitPromise(true)
	}))
}

func clientLog(t *testing.T, ctx context.Context, name string) jsLog {
	t.Helper()
	var l jsLog
	eval(t, ctx, `window.log[`+jsValue(name)+`]`, &l)
	return l
}

func opened(t *testing.T, ctx context.Context, kind string) []jsOpened {
	t.Helper()
	var all, some []jsOpened
	eval(t, ctx, `window.opened`, &all)
	for _, o := range all {
		if o.Kind == kind {
			some = append(some, o)
		}
	}
	return some
}

// openPage opens the page in a new browser and waits for push.js.
func openPage(t *testing.T, base string) context.Context {
	t.Helper()
	ctx := browser(t)
	run(t, ctx, 10*time.Second, chromedp.Navigate(base+"/"), waitJS(`window.ready === true`))
	return ctx
}

// open starts a client (sse or ws) named name and waits until it is open.
func open(t *testing.T, ctx context.Context, kind, name string, target any) {
	t.Helper()
	eval(t, ctx, fmt.Sprintf(`%s(%s, %s)`, kind, jsValue(name), jsValue(target)), nil)
	run(t, ctx, 10*time.Second, waitJS(fmt.Sprintf(`window.state(%s) === 'open'`, jsValue(name))))
}

// waitEvents waits until the client named name has n events.
func waitEvents(t *testing.T, ctx context.Context, name string, n int) {
	t.Helper()
	run(t, ctx, 15*time.Second, waitJS(fmt.Sprintf(`window.log[%s].events.length >= %d`, jsValue(name), n)))
}

// inOrder checks that events are want's data, once each, in order.
func inOrder(t *testing.T, who string, events []jsEvent, want ...string) {
	t.Helper()
	got := make([]string, len(events))
	for i, ev := range events {
		got[i] = ev.Data
	}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Fatalf("%s got %q, want %q once each, in order", who, got, want)
	}
}

// numbered is "0", "1", ... up to n.
func numbered(from, to int) []string {
	var s []string
	for i := from; i < to; i++ {
		s = append(s, strconv.Itoa(i))
	}
	return s
}

// A paused stream: push.js closes it, says so (state paused, onPause),
// reopens it no earlier than the pause said, within its jitter, resuming
// from the last event's id, and gets what was published meanwhile, once.
func TestPushJSPauseAndReturn(t *testing.T) {
	s := startPushJS(t, strings.Replace(pushJSSite, "HISTORY", "1000", 1))
	ctx := openPage(t, s.base)
	open(t, ctx, "sse", "feed", map[string]any{"url": "/events", "topics": []string{"feed"}, "jitter": 300})
	first := s.publish("feed", "0")
	waitEvents(t, ctx, "feed", 1)

	pauseTopic(t, "feed", 1500*time.Millisecond)
	run(t, ctx, 5*time.Second, waitJS(`window.state('feed') === 'paused'`))
	for _, data := range numbered(1, 5) {
		s.publish("feed", data)
	}
	waitEvents(t, ctx, "feed", 5)
	time.Sleep(300 * time.Millisecond) // a duplicate would arrive now
	l := clientLog(t, ctx, "feed")
	inOrder(t, "the subscription", l.Events, numbered(0, 5)...)

	if len(l.Pauses) != 1 {
		t.Fatalf("pauses %+v, want one", l.Pauses)
	}
	p := l.Pauses[0]
	if wait := time.Duration(p.Until-p.At) * time.Millisecond; wait < 1200*time.Millisecond || wait > 1600*time.Millisecond {
		t.Errorf("told to come back in %v, want 1.5s", wait)
	}
	if p.ID != first {
		t.Errorf("paused at id %q, want %q", p.ID, first)
	}
	sources := opened(t, ctx, "EventSource")
	if len(sources) != 2 {
		t.Fatalf("EventSources %+v, want the first and one after the pause", sources)
	}
	back := sources[1]
	if back.At < p.Until || back.At > p.Until+300+500 {
		t.Errorf("came back %dms after the time the pause gave, want 0 to 300 (the jitter)", back.At-p.Until)
	}
	if !strings.Contains(back.URL, "last_event_id="+url.QueryEscape(first)) {
		t.Errorf("came back at %s, want it to resume after %s", back.URL, first)
	}
	var states []string
	for _, st := range l.States {
		states = append(states, st.State)
	}
	if strings.Join(states, " ") != "connecting open paused open" {
		t.Errorf("states %q", states)
	}
}

// Back from a pause longer than the history reaches, over SSE and
// WebSocket: push.reset reaches onReset once, and live events follow.
func TestPushJSReset(t *testing.T) {
	s := startPushJS(t, strings.Replace(pushJSSite, "HISTORY", "3", 1))
	ctx := openPage(t, s.base)
	open(t, ctx, "sse", "sse", map[string]any{"url": "/events", "topics": []string{"feed"}, "jitter": 100})
	open(t, ctx, "ws", "ws", map[string]any{"url": "/ws", "topics": []string{"feed"}, "jitter": 100})
	s.publish("feed", "before")
	waitEvents(t, ctx, "sse", 1)
	waitEvents(t, ctx, "ws", 1)

	pauseTopic(t, "feed", time.Second)
	for _, data := range numbered(0, 8) { // history keeps 3
		s.publish("feed", data)
	}
	for _, name := range []string{"sse", "ws"} {
		run(t, ctx, 10*time.Second, waitJS(fmt.Sprintf(`window.log[%q].resets.length === 1 && window.state(%q) === 'open'`, name, name)))
	}
	s.publish("feed", "after")
	for _, name := range []string{"sse", "ws"} {
		waitEvents(t, ctx, name, 2)
		time.Sleep(200 * time.Millisecond)
		l := clientLog(t, ctx, name)
		inOrder(t, name, l.Events, "before", "after")
		if len(l.Resets) != 1 || l.Resets[0].Data == "" || l.Resets[0].Type != "push.reset" {
			t.Errorf("%s: resets %+v, want one saying why", name, l.Resets)
		}
		if len(l.Pauses) != 1 {
			t.Errorf("%s: pauses %+v", name, l.Pauses)
		}
	}
}

// A config reload ends every stream and socket: the browser reconnects the
// EventSource by itself, push.js the WebSocket, and each resumes: every
// event once, in order.
func TestPushJSReload(t *testing.T) {
	s := startPushJS(t, strings.Replace(pushJSSite, "HISTORY", "1000", 1))
	ctx := openPage(t, s.base)
	open(t, ctx, "sse", "sse", map[string]any{"url": "/events", "topics": []string{"feed"}})
	open(t, ctx, "ws", "ws", map[string]any{"url": "/ws", "topics": []string{"feed"}})
	const n = 30
	for i := range n {
		s.publish("feed", strconv.Itoa(i))
		if i == n/2 {
			s.reload()
		}
		time.Sleep(50 * time.Millisecond)
	}
	for _, name := range []string{"sse", "ws"} {
		waitEvents(t, ctx, name, n)
	}
	time.Sleep(300 * time.Millisecond)
	for _, name := range []string{"sse", "ws"} {
		l := clientLog(t, ctx, name)
		inOrder(t, name, l.Events, numbered(0, n)...)
		var states []string
		for _, st := range l.States {
			states = append(states, st.State)
		}
		if strings.Join(states, " ") != "connecting open reconnecting open" {
			t.Errorf("%s: states %q", name, states)
		}
	}
	if sockets := opened(t, ctx, "WebSocket"); len(sockets) != 2 || !strings.Contains(sockets[1].URL, "last_event_id=") {
		t.Errorf("WebSockets %+v, want a second one resuming", sockets)
	}
}

// An EventSource whose reconnect gets 503 gives up for good (readyState
// CLOSED); push.js opens a new one with backoff until the endpoint is
// back, resuming with last_event_id: nothing is lost.
func TestPushJSReopensGivenUpEventSource(t *testing.T) {
	site := strings.Replace(pushJSSite, "HISTORY", "1000", 1)
	s := startPushJS(t, site)
	ctx := openPage(t, s.base)
	open(t, ctx, "sse", "feed", map[string]any{"url": "/events", "topics": []string{"feed"}, "backoff": map[string]int{"min": 200, "max": 400}})
	first := s.publish("feed", "0")
	waitEvents(t, ctx, "feed", 1)

	// the endpoint answers 503 for a while (a maintenance page, a proxy
	// in front of Caddy with no upstream): the browser's reconnect fails
	down := strings.Replace(site, "\tpush_sse /events {", "\trespond /events 503\n\tpush_sse /nowhere {", 1)
	s.load(down)
	s.publish("feed", "1")
	s.publish("feed", "2")
	// at least two EventSources of push.js's own have been refused
	run(t, ctx, 10*time.Second, waitJS(`window.opened.filter(o => o.kind === 'EventSource').length >= 3`))
	if st := clientLog(t, ctx, "feed").States; st[len(st)-1].State != "reconnecting" {
		t.Fatalf("state %q while the endpoint answers 503", st[len(st)-1].State)
	}
	s.load(site)
	waitEvents(t, ctx, "feed", 3)
	time.Sleep(300 * time.Millisecond)
	inOrder(t, "the subscription", clientLog(t, ctx, "feed").Events, "0", "1", "2")
	sources := opened(t, ctx, "EventSource")
	if last := sources[len(sources)-1]; !strings.Contains(last.URL, "last_event_id="+url.QueryEscape(first)) {
		t.Errorf("the EventSource that got through opened %s, want it to resume after %s", last.URL, first)
	}
	run(t, ctx, 5*time.Second, waitJS(`window.state('feed') === 'open'`))
}

// A publish whose connection drops before anything comes back is sent
// again, with the same idempotency key, on the next connection, and
// delivered once, whether the server got the first one or not. A proxy
// between the browser and Caddy cuts the connection on the message.
func TestPushJSPublishRetried(t *testing.T) {
	s := startPushJS(t, strings.Replace(pushJSSite, "HISTORY", "1000", 1))
	proxy := startCutProxy(t, strings.TrimPrefix(s.base, "http://"))
	ctx := openPage(t, "http://"+proxy.addr())
	open(t, ctx, "ws", "chat", map[string]any{"url": "/ws", "topics": []string{"chat/a"}})
	open(t, ctx, "sse", "watch", map[string]any{"url": "/events", "topics": []string{"chat/a"}, "types": []string{"chat"}})
	// an event gives the WebSocket an id to resume from
	s.publish("chat/a", "warm")
	waitEvents(t, ctx, "chat", 1)
	waitEvents(t, ctx, "watch", 1)

	var want []string
	for _, mode := range []string{"forward", "swallow"} {
		// forward: the server publishes it, and the echo is lost with the
		// connection; swallow: the message never reaches the server
		data := "hello once, " + mode
		proxy.arm(mode)
		eval(t, ctx, fmt.Sprintf(`start(%q, 'chat', 'publish', { topic: 'chat/a', event: 'chat', data: %q })`, mode, data), nil)
		select {
		case <-proxy.cut:
		case <-time.After(5 * time.Second):
			t.Fatalf("%s: the proxy saw no message to cut", mode)
		}
		run(t, ctx, 10*time.Second, waitJS(fmt.Sprintf(`window.results[%q] !== undefined`, mode)))
		var result struct {
			OK    bool   `json:"ok"`
			Value string `json:"value"`
			Error string `json:"error"`
		}
		eval(t, ctx, fmt.Sprintf(`window.results[%q]`, mode), &result)
		if !result.OK || result.Value == "" {
			t.Fatalf("%s: publish settled %+v, want the event's id from its echo", mode, result)
		}
		want = append(want, data)
		waitEvents(t, ctx, "watch", 1+len(want))
		time.Sleep(500 * time.Millisecond) // a second copy would arrive now
		watched := clientLog(t, ctx, "watch").Events
		inOrder(t, mode+": a subscriber", watched[1:], want...)
		if got := watched[len(watched)-1].ID; got != result.Value {
			t.Errorf("%s: publish resolved with %q, the event is %q", mode, result.Value, got)
		}
		// the key went out on the cut connection and again on the next
		if conns := proxy.connsWith(data); len(conns) != 2 {
			t.Errorf("%s: the message went out on connections %v, want two", mode, conns)
		}
	}
	if sockets := opened(t, ctx, "WebSocket"); len(sockets) != 3 {
		t.Errorf("%d WebSockets, want 3: the first and one after each cut", len(sockets))
	}
}

// cutProxy stands between the browser and Caddy. Armed, it cuts the next
// WebSocket message a client sends, with its connection: it stops passing
// the server's frames on, forwards the message or swallows it, and closes
// both sides. It records every text message clients send on WebSockets.
type cutProxy struct {
	t      *testing.T
	ln     net.Listener
	target string
	cut    chan struct{}

	mu     sync.Mutex
	mode   string // "forward", "swallow" or "" (pass everything)
	conns  int
	frames []proxyFrame
}

type proxyFrame struct {
	conn int
	text string
}

func startCutProxy(t *testing.T, target string) *cutProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &cutProxy{t: t, ln: ln, target: target, cut: make(chan struct{}, 1)}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go p.serve(c)
		}
	}()
	return p
}

func (p *cutProxy) addr() string { return p.ln.Addr().String() }

func (p *cutProxy) arm(mode string) {
	p.mu.Lock()
	p.mode = mode
	p.mu.Unlock()
}

// connsWith lists the WebSocket connections a client sent text on that
// holds s (JSON-escaped as the page sends it).
func (p *cutProxy) connsWith(s string) []int {
	quoted, _ := json.Marshal(s)
	p.mu.Lock()
	defer p.mu.Unlock()
	var conns []int
	for _, f := range p.frames {
		if strings.Contains(f.text, string(quoted)) {
			conns = append(conns, f.conn)
		}
	}
	return conns
}

func (p *cutProxy) serve(client net.Conn) {
	defer client.Close()
	server, err := net.Dial("tcp", p.target)
	if err != nil {
		return
	}
	defer server.Close()
	var silenced atomic.Bool
	go func() {
		buf := make([]byte, 32<<10)
		for {
			n, err := server.Read(buf)
			if n > 0 && !silenced.Load() {
				if _, werr := client.Write(buf[:n]); werr != nil {
					return
				}
			}
			if err != nil {
				client.Close()
				return
			}
		}
	}()
	var head, frames []byte
	conn := 0 // this connection's number once it is a WebSocket
	buf := make([]byte, 32<<10)
	for {
		n, err := client.Read(buf)
		chunk := buf[:n]
		switch {
		case n == 0:
		case conn == 0 && !bytes.Contains(head, []byte("\r\n\r\n")):
			// the first request's head: an upgrade makes this a WebSocket
			head = append(head, chunk...)
			if i := bytes.Index(head, []byte("\r\n\r\n")); i >= 0 && bytes.Contains(bytes.ToLower(head[:i]), []byte("upgrade: websocket")) {
				p.mu.Lock()
				p.conns++
				conn = p.conns
				p.mu.Unlock()
				frames = append(frames, head[i+4:]...)
			}
		case conn == 0:
			// plain HTTP after the first request: passed on as it is
		default:
			frames = append(frames, chunk...)
			var texts []string
			texts, frames = clientTexts(frames)
			if len(texts) > 0 {
				p.mu.Lock()
				for _, text := range texts {
					p.frames = append(p.frames, proxyFrame{conn, text})
				}
				mode := p.mode
				p.mode = ""
				p.mu.Unlock()
				if mode != "" {
					silenced.Store(true)
					if mode == "forward" {
						_, _ = server.Write(chunk)
						time.Sleep(300 * time.Millisecond) // published, its echo on the way
					}
					p.cut <- struct{}{}
					return
				}
			}
		}
		if n > 0 {
			if _, werr := server.Write(chunk); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// clientTexts reads the whole frames at the start of b, a client's
// (masked) side of a WebSocket, and returns the text of its text frames
// and what is left of b.
func clientTexts(b []byte) ([]string, []byte) {
	var texts []string
	for len(b) >= 2 {
		op, n, hdr := b[0]&0x0F, int(b[1]&0x7F), 2
		switch n {
		case 126:
			if len(b) < 4 {
				return texts, b
			}
			n, hdr = int(binary.BigEndian.Uint16(b[2:])), 4
		case 127:
			if len(b) < 10 {
				return texts, b
			}
			n, hdr = int(binary.BigEndian.Uint64(b[2:])), 10
		}
		if len(b) < hdr+4+n {
			return texts, b
		}
		mask, payload := b[hdr:hdr+4], bytes.Clone(b[hdr+4:hdr+4+n])
		for i := range payload {
			payload[i] ^= mask[i%4]
		}
		if op == 1 {
			texts = append(texts, string(payload))
		}
		b = b[hdr+4+n:]
	}
	return texts, b
}

// Presence over WebSocket and SSE alike: each client's Presence map lists
// who is on the topic, itself included, and follows joins and leaves.
func TestPushJSPresence(t *testing.T) {
	s := startPushJS(t, strings.Replace(pushJSSite, "HISTORY", "1000", 1))
	ctx := openPage(t, s.base)
	with := func(url string) map[string]any { return map[string]any{"url": url, "topics": []string{"room"}} }
	open(t, ctx, "ws", "a", with("/ws"))
	run(t, ctx, 5*time.Second, waitJS(`window.log.a.members.room?.length === 1`))
	open(t, ctx, "sse", "b", with("/events"))
	run(t, ctx, 5*time.Second, waitJS(`window.log.b.members.room?.length === 2 && window.log.a.members.room.length === 2`))
	open(t, ctx, "ws", "c", with("/ws"))
	run(t, ctx, 5*time.Second, waitJS(`['a', 'b', 'c'].every(n => window.log[n].members.room?.length === 3)`))
	eval(t, ctx, `start('close', 'c', 'close')`, nil)
	run(t, ctx, 5*time.Second, waitJS(`['a', 'b'].every(n => window.log[n].members.room.length === 2)`))

	a, b, c := clientLog(t, ctx, "a"), clientLog(t, ctx, "b"), clientLog(t, ctx, "c")
	// a saw b and c join and c leave; b saw c come and go; c saw nobody
	// come or go (its list came whole)
	if len(a.Joins) != 2 || len(a.Leaves) != 1 || len(b.Joins) != 1 || len(b.Leaves) != 1 || len(c.Joins)+len(c.Leaves) != 0 {
		t.Fatalf("joins and leaves: a %+v %+v, b %+v %+v, c %+v %+v", a.Joins, a.Leaves, b.Joins, b.Leaves, c.Joins, c.Leaves)
	}
	gone := a.Leaves[0].Connection
	if a.Joins[1].Connection != gone || b.Joins[0].Connection != gone || b.Leaves[0].Connection != gone || a.Leaves[0].Topic != "room" || b.Leaves[0].Topic != "room" {
		t.Errorf("c is %s to a, but b saw %+v join and %+v leave", gone, b.Joins, b.Leaves)
	}
	for _, l := range []jsLog{a, b} {
		if strings.Contains(strings.Join(l.Members["room"], " "), gone) || len(l.Events) != 0 {
			t.Errorf("members %v (c was %s), events %+v", l.Members, gone, l.Events)
		}
	}
}

// liveTopicsMissing is the error a push_ws without live topics answers a
// subscribe message with: it takes it for a publish envelope.
const liveTopicsMissing = `a message must be {"topic"`

// The demo's chat moves to another room on the open WebSocket: subscribe,
// then unsubscribe, no new connection; the new room's messages arrive, the
// old room's no longer do, and what the page says goes to the new room.
func TestPushJSRoomSwitch(t *testing.T) {
	d := startDemo(t)
	ctx := browser(t)
	run(t, ctx, 10*time.Second,
		chromedp.Navigate(d.base+"/"),
		waitJS(`document.getElementById('chat-state').textContent === 'open'`),
	)
	d.publish(url.Values{"topic": {"chat/lobby"}, "type": {"chat"}, "data": {"in the lobby"}})
	run(t, ctx, 5*time.Second, waitJS(`window.pushDemo.chat.some(m => m.data === 'in the lobby')`))
	run(t, ctx, 5*time.Second, chromedp.SetValue("#chat-room", "kitchen", chromedp.ByQuery),
		chromedp.Evaluate(`document.getElementById('chat-room').dispatchEvent(new Event('change')), true`, nil),
		waitJS(`window.pushDemo.roomSwitch !== undefined`))
	var moved struct {
		How   string `json:"how"`
		Error string `json:"error"`
	}
	eval(t, ctx, `window.pushDemo.roomSwitch`, &moved)
	if moved.How != "open connection" && strings.Contains(moved.Error, liveTopicsMissing) {
		t.Skipf("this push_ws has no live topics: it answered the subscribe message with %q (they come with branch ws-topics)", moved.Error)
	}
	if moved.How != "open connection" {
		t.Fatalf("moved on a %s: %s", moved.How, moved.Error)
	}
	d.publish(url.Values{"topic": {"chat/lobby"}, "type": {"chat"}, "data": {"left behind"}})
	d.publish(url.Values{"topic": {"chat/kitchen"}, "type": {"chat"}, "data": {"in the kitchen"}})
	run(t, ctx, 5*time.Second, waitJS(`window.pushDemo.chat.some(m => m.data === 'in the kitchen')`))
	say := `document.getElementById('chat-text').value = 'cooking';
		document.getElementById('chat-form').requestSubmit(); true`
	eval(t, ctx, say, nil)
	run(t, ctx, 5*time.Second, waitJS(`window.pushDemo.chat.some(m => m.data === 'guest: cooking')`))
	time.Sleep(200 * time.Millisecond)
	var chat []jsEvent
	eval(t, ctx, `window.pushDemo.chat.filter(m => m.event === 'chat')`, &chat)
	var said []string
	for _, m := range chat {
		said = append(said, m.Topic+" "+m.Data)
	}
	if want := "chat/lobby in the lobby|chat/kitchen in the kitchen|chat/kitchen guest: cooking"; strings.Join(said, "|") != want {
		t.Errorf("the chat got %q, want %q", said, want)
	}
	var opens int
	eval(t, ctx, `window.pushDemo.chatOpens`, &opens)
	if opens != 1 {
		t.Errorf("the chat opened %d connections, want 1", opens)
	}
}

// A push_ws with fixed topics and subscribe patterns: push.js adds and
// drops topics on the open connection, and sends the changes again after
// a reconnect, so a reload does not bring the old room back.
func TestPushJSRoomSwitchFixedTopics(t *testing.T) {
	site := strings.Replace(pushJSSite, "HISTORY", "1000", 1)
	site = strings.Replace(site, "\tpush_ws /ws {\n", "\tpush_ws /ws {\n\t\ttopics chat/{query.room}\n\t\tsubscribe chat/*\n", 1)
	if _, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(site), nil); err != nil {
		if strings.Contains(err.Error(), "unrecognized push_ws subdirective 'subscribe'") {
			t.Skipf("this push_ws has no live topics: %v (they come with branch ws-topics)", err)
		}
		t.Fatal(err)
	}
	s := startPushJS(t, site)
	ctx := openPage(t, s.base)
	open(t, ctx, "ws", "chat", map[string]any{"url": "/ws?room=a"})
	eval(t, ctx, `start('sub', 'chat', 'subscribe', 'chat/b')`, nil)
	run(t, ctx, 5*time.Second, waitJS(`window.results.sub !== undefined`))
	eval(t, ctx, `start('unsub', 'chat', 'unsubscribe', 'chat/a')`, nil)
	run(t, ctx, 5*time.Second, waitJS(`window.results.unsub !== undefined`))
	var results map[string]struct {
		OK    bool   `json:"ok"`
		Error string `json:"error"`
	}
	eval(t, ctx, `window.results`, &results)
	if !results["sub"].OK || !results["unsub"].OK {
		t.Fatalf("subscribe and unsubscribe: %+v", results)
	}
	s.publish("chat/a", "a 1")
	s.publish("chat/b", "b 1")
	waitEvents(t, ctx, "chat", 1)
	s.reload()
	s.publish("chat/a", "a 2")
	s.publish("chat/b", "b 2")
	waitEvents(t, ctx, "chat", 2)
	time.Sleep(500 * time.Millisecond)
	inOrder(t, "the chat", clientLog(t, ctx, "chat").Events, "b 1", "b 2")
}

// push_mercure through push.js's SSE client, by URL: a Mercure topic,
// typed and untyped updates with the hub's #ids, a reload the browser
// resumes from, and a pause push.js resumes from with last_event_id.
func TestPushJSMercure(t *testing.T) {
	s := startPushJS(t, `{
}

http://localhost:8080 {
	root * .
	push_client /push.js
	push_mercure {
		publisher_jwt `+mercureSecret+`
		anonymous
	}
	file_server
}
`)
	ctx := openPage(t, s.base)
	const book = "https://example.com/books/1"
	open(t, ctx, "sse", "books", map[string]any{"url": "/.well-known/mercure", "topics": []string{book}, "types": []string{"book"}, "jitter": 100})
	first := s.mercurePublish(url.Values{"topic": {book}, "type": {"book"}, "data": {"0"}})
	s.mercurePublish(url.Values{"topic": {book}, "data": {"1"}})
	waitEvents(t, ctx, "books", 2)
	s.reload()
	s.mercurePublish(url.Values{"topic": {book}, "data": {"2"}})
	waitEvents(t, ctx, "books", 3)
	pauseTopic(t, book, time.Second)
	run(t, ctx, 5*time.Second, waitJS(`window.state('books') === 'paused'`))
	last := s.mercurePublish(url.Values{"topic": {book}, "data": {"3"}})
	waitEvents(t, ctx, "books", 4)
	time.Sleep(300 * time.Millisecond)

	l := clientLog(t, ctx, "books")
	inOrder(t, "the Mercure subscription", l.Events, "0", "1", "2", "3")
	if l.Events[0].ID != first || l.Events[0].Type != "book" || l.Events[1].Type != "message" || l.Events[3].ID != last {
		t.Errorf("events %+v, want the hub's ids %s…%s and the types", l.Events, first, last)
	}
	sources := opened(t, ctx, "EventSource")
	if len(sources) != 2 || !strings.Contains(sources[1].URL, "last_event_id="+url.QueryEscape(l.Events[2].ID)) ||
		!strings.Contains(sources[1].URL, "topic="+url.QueryEscape(book)) {
		t.Errorf("EventSources %+v, want the second to resume after %s", sources, l.Events[2].ID)
	}
	var lastID string
	eval(t, ctx, `window.lastEventId('books')`, &lastID)
	if lastID != last {
		t.Errorf("lastEventId %q, want %q", lastID, last)
	}
}
