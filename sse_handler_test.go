package push

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

const basicSite = `
http://127.0.0.1:PORT {
	push_sse /events
	push_sse /news {
		topics news
		retry 1500ms
	}
	push_publish /publish {
		anonymous
	}
}
`

func header(kv ...string) http.Header {
	h := http.Header{}
	for i := 0; i < len(kv); i += 2 {
		h.Set(kv[i], kv[i+1])
	}
	return h
}

// publishN publishes n numbered events to topic and returns their ids.
func (c *testCaddy) publishN(topic string, n int) []string {
	c.t.Helper()
	ids := make([]string, n)
	for i := range ids {
		status, id := c.publish("/publish", "topic="+url.QueryEscape(topic)+"&data="+strconv.Itoa(i))
		if status != 200 {
			c.t.Fatalf("publish %d: %d %s", i, status, id)
		}
		ids[i] = id
	}
	return ids
}

func TestSSEOpensAtOnceWithHeaders(t *testing.T) {
	c := startCaddy(t, basicSite)
	s := subscribe(t, c.URL+"/news", nil)
	h := s.Resp.Header
	if s.Resp.StatusCode != 200 ||
		h.Get("Content-Type") != "text/event-stream; charset=utf-8" ||
		!strings.Contains(h.Get("Cache-Control"), "no-cache") ||
		h.Get("X-Accel-Buffering") != "no" || h.Get("Content-Encoding") != "" {
		t.Fatalf("status %d, headers %v", s.Resp.StatusCode, h)
	}
	// no event is published: the opening must be flushed on its own
	if it, _ := s.next(time.Second); it.Retry != 1500 {
		t.Fatalf("first item %+v, want retry 1500", it)
	}
	if it, _ := s.next(time.Second); it.ID == "" {
		t.Fatalf("second item %+v, want the hub's head id", it)
	}
	if it, _ := s.next(time.Second); it.Comment == "" {
		t.Fatalf("third item %+v, want a comment", it)
	}
}

func TestSSEDeliversPublishedEvent(t *testing.T) {
	c := startCaddy(t, basicSite)
	s := subscribe(t, c.URL+"/news", nil)
	status, id := c.publish("/publish", "topic=news&data=hello&type=greet&retry=2500")
	if status != 200 {
		t.Fatalf("publish: %d %s", status, id)
	}
	ev := s.nextEvent(2 * time.Second)
	if ev.ID != id || ev.Type != "greet" || ev.Data != "hello" || ev.Retry != 2500 {
		t.Fatalf("got %+v, want id %s", ev, id)
	}
}

// The exact bytes: event: only when set, one data: line per line.
func TestSSEWireFormat(t *testing.T) {
	c := startCaddy(t, basicSite)
	resp, err := testClient.Get(c.URL + "/news")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	br := bufio.NewReader(resp.Body)
	readUntilBlank(t, br) // opening
	_, id1 := c.post("/publish", "application/json", `{"topic":"news","data":"a\r\nb\rc\nd"}`)
	_, id2 := c.post("/publish", "application/json", `{"topic":"news","event":"x","data":""}`)
	want := "id: " + id1 + "\ndata: a\ndata: b\ndata: c\ndata: d\n\n" +
		"id: " + id2 + "\nevent: x\ndata: \n\n"
	got := readUntilBlank(t, br) + readUntilBlank(t, br)
	if got != want {
		t.Fatalf("got %q\nwant %q", got, want)
	}
}

func readUntilBlank(t *testing.T, br *bufio.Reader) string {
	t.Helper()
	var b strings.Builder
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			t.Fatalf("reading stream: %v (so far %q)", err, b.String())
		}
		b.WriteString(line)
		if line == "\n" {
			return b.String()
		}
	}
}

func TestSSENoInjection(t *testing.T) {
	c := startCaddy(t, basicSite)
	s := subscribe(t, c.URL+"/news", nil)
	payloads := []string{
		"x\n\nevent: evil\ndata: y",
		"\rid: 9",
		"\r\n\r\ndata: z\r\n\r\n",
		"nul\x00inside",
		": comment\nretry: 1",
		"",
	}
	for _, p := range payloads {
		data, _ := json.Marshal(p)
		body := `{"topic":"news","data":` + string(data) + `}`
		if status, msg := c.post("/publish", "application/json", body); status != 200 {
			t.Fatalf("publish %q: %d %s", p, status, msg)
		}
	}
	// SSE carries every line break as LF
	lf := strings.NewReplacer("\r\n", "\n", "\r", "\n")
	for _, p := range payloads {
		ev := s.nextEvent(2 * time.Second)
		if want := lf.Replace(p); ev.Data != want || ev.Type != "message" || ev.Retry != 1500 {
			t.Fatalf("got %+v, want data %q as a plain message", ev, want)
		}
	}
	s.quiet(100 * time.Millisecond)
}

func TestSSETopics(t *testing.T) {
	c := startCaddy(t, `
http://127.0.0.1:PORT {
	push_sse /events
	push_sse /room {
		topics room/{query.room} user/{http.auth.user.id} lobby
	}
	push_sse /nobody {
		topics user/{http.auth.user.id}
	}
	push_publish /publish {
		anonymous
	}
}`)
	// a two-topic event reaches a subscriber of both once
	both := subscribe(t, c.URL+"/events?topic=a&topic=b", nil)
	// the user template is dropped: no user; the query one expands
	room := subscribe(t, c.URL+"/room?room=42", nil)
	_, id1 := c.publish("/publish", "topic=a&topic=b&data=ab")
	_, id2 := c.publish("/publish", "topic=room/42&data=r")
	_, _ = c.publish("/publish", "topic=user/&data=leak")
	_, id4 := c.publish("/publish", "topic=lobby&data=l")
	if ev := both.nextEvent(time.Second); ev.ID != id1 || ev.Data != "ab" {
		t.Fatalf("both got %+v", ev)
	}
	both.quiet(100 * time.Millisecond)
	if evs := room.events(2, time.Second); evs[0].ID != id2 || evs[1].ID != id4 {
		t.Fatalf("room got %+v", evs)
	}

	for _, tc := range []struct{ path, want string }{
		{"/events", "no topic"},
		{"/nobody", "no topic"},
		{"/events?topic=" + strings.Repeat("x", 257), "longer than 256"},
		{"/events?topic=a%00b", "control"},
		{"/events?topic=%ff", "UTF-8"},
		{"/events?topic=%zz", "malformed query"},
		{"/events?" + strings.Repeat("topic=t&", 0) + manyTopics(33), "too many topics"},
	} {
		status, body := do(t, mustRequest(t, "GET", c.URL+tc.path))
		if status != 400 || !strings.Contains(body, tc.want) || strings.Count(body, "\n") != 1 {
			t.Errorf("GET %.60s: %d %q, want 400 with %q", tc.path, status, body, tc.want)
		}
	}
}

func manyTopics(n int) string {
	q := url.Values{}
	for i := range n {
		q.Add("topic", "t"+strconv.Itoa(i))
	}
	return q.Encode()
}

func mustRequest(t testing.TB, method, u string) *http.Request {
	t.Helper()
	req, err := http.NewRequest(method, u, nil)
	if err != nil {
		t.Fatal(err)
	}
	return req
}

func TestSSEResume(t *testing.T) {
	c := startCaddy(t, basicSite)
	ids := c.publishN("news", 5)
	for name, open := range map[string]func() *sseClient{
		"header": func() *sseClient { return subscribe(t, c.URL+"/news", header("Last-Event-ID", ids[1])) },
		"query":  func() *sseClient { return subscribe(t, c.URL+"/news?lastEventId="+url.QueryEscape(ids[1]), nil) },
	} {
		s := open()
		evs := s.events(3, time.Second)
		for i, ev := range evs {
			if ev.ID != ids[i+2] || ev.Data != strconv.Itoa(i+2) {
				t.Fatalf("%s: event %d is %+v, want id %s", name, i, ev, ids[i+2])
			}
		}
		s.quiet(50 * time.Millisecond)
	}
	// resuming from the newest id replays nothing and then goes live
	s := subscribe(t, c.URL+"/news", header("Last-Event-ID", ids[4]))
	s.quiet(50 * time.Millisecond)
	_, id := c.publish("/publish", "topic=news&data=live")
	if ev := s.nextEvent(time.Second); ev.ID != id {
		t.Fatalf("got %+v, want live %s", ev, id)
	}
}

func TestSSEResetWhenIDCannotBeResumed(t *testing.T) {
	c := startCaddy(t, `
{
	push {
		hub default {
			history 3
		}
		hub short {
			history_ttl 300ms
		}
	}
}
http://127.0.0.1:PORT {
	push_sse /news {
		topics news
	}
	push_sse /short {
		hub short
		topics news
	}
	push_publish /publish {
		anonymous
	}
	push_publish /publish-short {
		hub short
		anonymous
	}
}`)
	ids := c.publishN("news", 6)
	epoch, seq, _ := ParseID(ids[0])
	_, shortID := c.publish("/publish-short", "topic=news&data=old")
	time.Sleep(400 * time.Millisecond)
	cases := map[string]struct{ path, id string }{
		"unknown":       {"/news", "garbage"},
		"ahead":         {"/news", FormatID(epoch, seq+100)},
		"earlier epoch": {"/news", FormatID("abc", seq)},
		"10 KB":         {"/news", strings.Repeat("9", 10000)},
		"trimmed":       {"/news", ids[1]},
		"expired":       {"/short", FormatID(strings.Split(shortID, "-")[0], 0)},
	}
	for name, tc := range cases {
		s := subscribe(t, c.URL+tc.path, header("Last-Event-ID", tc.id))
		ev := s.nextEvent(time.Second)
		if ev.Type != "push.reset" || ev.Data == "" || ev.ID == "" {
			t.Errorf("%s: first event %+v, want push.reset with a reason and the head id", name, ev)
		}
		s.quiet(50 * time.Millisecond)
	}
	// within history: no reset
	s := subscribe(t, c.URL+"/news", header("Last-Event-ID", ids[2]))
	if evs := s.events(3, time.Second); evs[0].ID != ids[3] || evs[2].ID != ids[5] {
		t.Fatalf("got %+v", evs)
	}
	// after a reset, resuming from the reset's id loses nothing
	s = subscribe(t, c.URL+"/news", header("Last-Event-ID", "garbage"))
	reset := s.nextEvent(time.Second)
	s.Close()
	_, id := c.publish("/publish", "topic=news&data=after")
	s = subscribe(t, c.URL+"/news", header("Last-Event-ID", reset.ID))
	if ev := s.nextEvent(time.Second); ev.ID != id {
		t.Fatalf("after reset got %+v, want %s", ev, id)
	}
}

// Clients resume while a publisher runs: each sees every event after its
// id exactly once, in order, across the backlog/live boundary.
func TestSSEReplayRacingLive(t *testing.T) {
	c := startCaddy(t, basicSite)
	hub, _ := LookupHub("default")
	const n = 400
	ids := make(chan string, n)
	go func() {
		for i := range n {
			id, err := hub.Publish(context.Background(), Message{Topics: []string{"news"}, Data: strconv.Itoa(i)})
			if err != nil {
				t.Error(err)
				return
			}
			ids <- id
		}
	}()
	var all []string
	var wg sync.WaitGroup
	for len(all) < n {
		all = append(all, <-ids)
		if len(all)%40 != 0 {
			continue
		}
		from := len(all) - 1
		s := subscribe(t, c.URL+"/news", header("Last-Event-ID", all[from]))
		wg.Add(1)
		go func() {
			defer wg.Done()
			for want := from + 1; want < n; want++ {
				ev := s.nextEvent(5 * time.Second)
				if ev.Data != strconv.Itoa(want) {
					t.Errorf("resumed after %d: got data %s, want %d", from, ev.Data, want)
					return
				}
			}
		}()
	}
	wg.Wait()
}

// A stream quiet for longer than the write timeout stays open, after its
// opening and after an event: the timeout bounds a write, not the silence
// between writes (over HTTP/2 a write deadline left in place is a timer
// that resets the stream).
func TestSSEQuietStreamOutlivesWriteTimeout(t *testing.T) {
	c := startCaddy(t, basicSite)
	s := subscribe(t, c.URL+"/news", nil)
	for i := range 2 {
		time.Sleep(2 * writeTimeout())
		_, id := c.publish("/publish", "topic=news&data="+strconv.Itoa(i))
		if ev := s.nextEvent(time.Second); ev.ID != id {
			t.Fatalf("after %v of quiet got %+v, want %s", 2*writeTimeout(), ev, id)
		}
	}
}

func TestSSEKeepalive(t *testing.T) {
	c := startCaddy(t, `
http://127.0.0.1:PORT {
	push_sse /events {
		keepalive 100ms
	}
}`)
	s := subscribe(t, c.URL+"/events?topic=x", nil)
	deadline := time.Now().Add(time.Second)
	for time.Now().Before(deadline) {
		if it, _ := s.next(time.Second); it.Comment == "keepalive" {
			return
		}
	}
	t.Fatal("no keepalive comment")
}

// max_duration ends the stream with a short retry; the client resumes and
// gets what was published while it was away.
func TestSSEMaxDurationResumesLosslessly(t *testing.T) {
	c := startCaddy(t, `
http://127.0.0.1:PORT {
	push_sse /events {
		max_duration 300ms
	}
	push_publish /publish {
		anonymous
	}
}`)
	start := time.Now()
	s := subscribe(t, c.URL+"/events?topic=x", nil)
	_, id1 := c.publish("/publish", "topic=x&data=1")
	items := s.ended(2 * time.Second)
	if d := time.Since(start); d < 250*time.Millisecond || d > 1500*time.Millisecond { // 300ms ±10%, plus a loaded machine
		t.Fatalf("stream lasted %v, want 300ms ±10%%", d)
	}
	last := items[len(items)-1]
	if last.Retry <= 0 || last.Retry > 1000 {
		t.Fatalf("stream ended with %+v, want a short retry", last)
	}
	_, id2 := c.publish("/publish", "topic=x&data=2")
	s = subscribe(t, c.URL+"/events?topic=x", header("Last-Event-ID", id1))
	if ev := s.nextEvent(time.Second); ev.ID != id2 {
		t.Fatalf("resumed with %+v, want %s", ev, id2)
	}
}

func TestSSEMaxConnections(t *testing.T) {
	c := startCaddy(t, `
http://127.0.0.1:PORT {
	push_sse /events {
		max_connections 2
	}
}`)
	a := subscribe(t, c.URL+"/events?topic=x", nil)
	subscribe(t, c.URL+"/events?topic=x", nil)
	third := subscribe(t, c.URL+"/events?topic=x", nil)
	if third.Resp.StatusCode != 503 || third.Resp.Header.Get("Retry-After") == "" {
		t.Fatalf("third: %d %v, want 503 with Retry-After", third.Resp.StatusCode, third.Resp.Header)
	}
	a.Close()
	waitFor(t, time.Second, func() bool {
		s := subscribe(t, c.URL+"/events?topic=x", nil)
		return s.Resp.StatusCode == 200
	})
}

func waitFor(t testing.TB, d time.Duration, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %v", d)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A reload ends open streams at once with a short retry, keeps the hub
// and its history, and a client resuming with its last id misses nothing.
func TestSSEReloadKeepsHistory(t *testing.T) {
	c := startCaddy(t, basicSite)
	s := subscribe(t, c.URL+"/news", nil)
	_, id1 := c.publish("/publish", "topic=news&data=before")
	if ev := s.nextEvent(time.Second); ev.ID != id1 {
		t.Fatalf("got %+v", ev)
	}
	hub, _ := LookupHub("default")
	start := time.Now()
	c.Load(basicSite)
	items := s.ended(time.Second)
	if d := time.Since(start); d > time.Second {
		t.Fatalf("stream ended %v after reload", d)
	}
	if len(items) == 0 || items[len(items)-1].Retry > 1000 || items[len(items)-1].Retry <= 0 {
		t.Fatalf("stream ended with %+v, want a short retry", items)
	}
	if h2, _ := LookupHub("default"); h2 != hub {
		t.Fatal("reload replaced the hub")
	}
	id2, _ := hub.Publish(context.Background(), Message{Topics: []string{"news"}, Data: "during"})
	_, id3 := c.publish("/publish", "topic=news&data=after")
	s = subscribe(t, c.URL+"/news", header("Last-Event-ID", id1))
	if evs := s.events(2, time.Second); evs[0].ID != id2 || evs[1].ID != id3 {
		t.Fatalf("resumed with %+v, want %s %s", evs, id2, id3)
	}
	s.Close()
	waitNoGoroutine(t, "(*SSEHandler).stream")
}

// waitNoGoroutine fails when a goroutine running fn is still alive.
func waitNoGoroutine(t testing.TB, fn string) {
	t.Helper()
	waitFor(t, 2*time.Second, func() bool {
		buf := make([]byte, 1<<20)
		return !strings.Contains(string(buf[:runtime.Stack(buf, true)]), fn)
	})
}

// caddy stop must not wait on open streams, even with the default
// eternal grace period.
func TestSSEStopDoesNotHang(t *testing.T) {
	c := startCaddy(t, basicSite)
	s := subscribe(t, c.URL+"/news", nil)
	s.next(time.Second)
	c.Load(`http://127.0.0.1:PORT {
	respond "other config"
}`)
	s.ended(time.Second)
	waitNoGoroutine(t, "(*SSEHandler).stream")
}

func TestSSEBehindEncode(t *testing.T) {
	c := startCaddy(t, `
http://127.0.0.1:PORT {
	encode zstd gzip
	push_sse /events
	push_publish /publish {
		anonymous
	}
}`)
	s := subscribe(t, c.URL+"/events?topic=x", header("Accept-Encoding", "gzip, zstd"))
	if ce := s.Resp.Header.Get("Content-Encoding"); ce != "" {
		t.Fatalf("Content-Encoding %q on an event stream", ce)
	}
	if it, _ := s.next(time.Second); it.Retry == 0 {
		t.Fatalf("opening not flushed through encode: %+v", it)
	}
	_, id := c.publish("/publish", "topic=x&data=y")
	if ev := s.nextEvent(time.Second); ev.ID != id {
		t.Fatalf("got %+v", ev)
	}
}

// startTLSCaddy runs site, whose address is https://localhost:PORT with
// tls internal, and returns its base URL once the certificate is issued.
func startTLSCaddy(t *testing.T, site string) (*testCaddy, string) {
	t.Helper()
	storage, err := os.MkdirTemp("", "push-tls-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(storage) }) // after Caddy stops
	c := startCaddy(t, `
{
	skip_install_trust
	storage file_system `+storage+`
}
`+site)
	base := "https://localhost:" + c.port
	// the internal CA issues the certificate in the background
	client := tlsClient(c, true)
	waitFor(t, 10*time.Second, func() bool {
		resp, err := client.Get(base + "/")
		if err == nil {
			resp.Body.Close()
		}
		return err == nil
	})
	return c, base
}

// tlsClient reaches c's https://localhost site over HTTP/2, or HTTP/1.1.
func tlsClient(c *testCaddy, h2 bool) *http.Client {
	tr := &http.Transport{
		TLSClientConfig:   &tls.Config{InsecureSkipVerify: true}, // the test's own internal CA
		ForceAttemptHTTP2: h2,
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, network, "127.0.0.1:"+c.port)
		},
	}
	if !h2 {
		tr.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
	}
	return &http.Client{Transport: tr}
}

// tlsSite is an SSE stream and an open publish route over HTTPS.
const tlsSite = `
https://localhost:PORT {
	tls internal
	push_sse /events
	push_publish /publish {
		anonymous
	}
}`

// publishWith posts a form with client, as a publisher would.
func publishWith(t testing.TB, client *http.Client, url, form string) {
	t.Helper()
	req, _ := http.NewRequest("POST", url, strings.NewReader(form))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("publish: %d", resp.StatusCode)
	}
}

func TestSSEOverHTTP2(t *testing.T) {
	c, base := startTLSCaddy(t, tlsSite)
	client := tlsClient(c, true)
	s := subscribeWith(t, client, base+"/events?topic=x", nil)
	if s.Resp.ProtoMajor != 2 {
		t.Fatalf("protocol %s, want HTTP/2", s.Resp.Proto)
	}
	s.next(time.Second)
	publishWith(t, client, base+"/publish", "topic=x&data=h2")
	if ev := s.nextEvent(time.Second); ev.Data != "h2" {
		t.Fatalf("got %+v", ev)
	}
}

// An HTTP/2 stream that idles for longer than the write timeout stays
// open: HTTP/2 resets a stream whose write deadline passes even with no
// write under way, so each write's deadline must be lifted once it is
// done (every idle HTTP/2 stream died 10 s after its last write).
func TestSSEOverHTTP2IdlesPastWriteTimeout(t *testing.T) {
	c, base := startTLSCaddy(t, strings.Replace(tlsSite, "push_sse /events", "push_sse /events {\n\t\tkeepalive 1m\n\t}", 1))
	client := tlsClient(c, true)
	s := subscribeWith(t, client, base+"/events?topic=x", nil)
	if s.Resp.ProtoMajor != 2 {
		t.Fatalf("protocol %s, want HTTP/2", s.Resp.Proto)
	}
	s.next(time.Second)
	publishWith(t, client, base+"/publish", "topic=x&data=one")
	if ev := s.nextEvent(time.Second); ev.Data != "one" {
		t.Fatalf("got %+v", ev)
	}
	s.quiet(3 * writeTimeout()) // fails if the stream ends meanwhile
	publishWith(t, client, base+"/publish", "topic=x&data=two")
	if ev := s.nextEvent(time.Second); ev.Data != "two" {
		t.Fatalf("after idling: got %+v", ev)
	}
}

// A stream that writes more often than its deadline is renewed keeps
// one deadline armed across writes (sseWriter) and renews it in time:
// events spaced well under writeTimeout for several times writeTimeout
// all arrive on the one stream, and it idles past writeTimeout after.
func TestSSEOverHTTP2BusyStreamRenewsDeadline(t *testing.T) {
	c, base := startTLSCaddy(t, strings.Replace(tlsSite, "push_sse /events", "push_sse /events {\n\t\tkeepalive 1m\n\t}", 1))
	client := tlsClient(c, true)
	s := subscribeWith(t, client, base+"/events?topic=x", nil)
	s.next(time.Second)
	wt := writeTimeout()
	n := int(4 * wt / (wt / 8))
	for i := range n {
		publishWith(t, client, base+"/publish", fmt.Sprintf("topic=x&data=%d", i))
		if ev := s.nextEvent(time.Second); ev.Data != strconv.Itoa(i) {
			t.Fatalf("event %d: got %+v", i, ev)
		}
		time.Sleep(wt / 8)
	}
	s.quiet(2 * wt)
	publishWith(t, client, base+"/publish", "topic=x&data=last")
	if ev := s.nextEvent(time.Second); ev.Data != "last" {
		t.Fatalf("after idling: got %+v", ev)
	}
}

// A client that stops reading is cut off; the others keep receiving and
// the hub never waits for it.
func TestSSESlowConsumer(t *testing.T) {
	c := startCaddy(t, `
http://127.0.0.1:PORT {
	push_sse /events
	metrics /metrics
}`)
	defer openStalledStream(t, c, "/events?topic=x").Close()
	fast := subscribe(t, c.URL+"/events?topic=x", nil)
	hub, _ := LookupHub("default")
	waitFor(t, time.Second, func() bool { return hub.stats.of(TransportSSE).connections.Load() == 2 })

	const n = 3000
	start := time.Now()
	pacedFlood(t, "x", n, 8<<10, 50, func(i int) {
		if ev := fast.nextEvent(5 * time.Second); len(ev.Data) != 8<<10 {
			t.Fatalf("event %d: %d bytes", i, len(ev.Data))
		}
	})
	t.Logf("fast client got %d events of 8 KiB in %v", n, time.Since(start))
	waitFor(t, 3*time.Second, func() bool { return hub.stats.of(TransportSSE).slow.Load() == 1 })
	waitFor(t, 3*time.Second, func() bool { return hub.stats.of(TransportSSE).connections.Load() == 1 })
	status, body := do(t, mustRequest(t, "GET", c.URL+"/metrics"))
	if status != 200 || !strings.Contains(body, `caddy_push_slow_disconnects_total{hub="default",transport="sse"} 1`) {
		t.Fatalf("metrics: %d\n%s", status, grepLines(body, "caddy_push"))
	}
}

// openStalledStream opens a stream on a connection of its own and never
// reads it: over cleartext a raw client with a small socket buffer; over
// h2 and h3 a client whose flow control lets little unread data in.
func openStalledStream(t testing.TB, c *testCaddy, path string) io.Closer {
	t.Helper()
	if testOverTLS() {
		client := newStalledClient()
		resp, err := client.Get(c.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		return closerFunc(func() error {
			resp.Body.Close()
			client.CloseIdleConnections()
			return nil
		})
	}
	stuck, err := net.Dial("tcp", "127.0.0.1:"+c.port)
	if err != nil {
		t.Fatal(err)
	}
	if tcp, ok := stuck.(*net.TCPConn); ok {
		_ = tcp.SetReadBuffer(4096)
	}
	fmt.Fprintf(stuck, "GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", path)
	return stuck
}

type closerFunc func() error

func (f closerFunc) Close() error { return f() }

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

func TestSSEMethodNotAllowed(t *testing.T) {
	c := startCaddy(t, basicSite)
	req := mustRequest(t, "POST", c.URL+"/news")
	resp, err := testClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 405 || resp.Header.Get("Allow") != "GET" || len(b) == 0 {
		t.Fatalf("%d %v %q", resp.StatusCode, resp.Header, b)
	}
}

func TestMetrics(t *testing.T) {
	c := startCaddy(t, `
http://127.0.0.1:PORT {
	push_sse /events
	push_ws /ws
	push_publish /publish {
		anonymous
	}
	metrics /metrics
}`)
	s := subscribe(t, c.URL+"/events?topic=m", nil)
	ws := mustDialWS(t, c.URL+"/ws?topic=m", nil)
	ids := c.publishN("m", 3)
	s.events(3, time.Second)
	for range 3 {
		ws.nextFrame(time.Second)
	}
	r := subscribe(t, c.URL+"/events?topic=m", header("Last-Event-ID", ids[0]))
	r.events(2, time.Second)
	// a client can read an event before the server has counted it
	waitMetrics := func(want ...string) {
		t.Helper()
		var body string
		deadline := time.Now().Add(2 * time.Second)
		for {
			_, body = do(t, mustRequest(t, "GET", c.URL+"/metrics"))
			missing := slices.DeleteFunc(slices.Clone(want), func(w string) bool { return strings.Contains(body, w) })
			if len(missing) == 0 {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("metrics lack %v:\n%s", missing, grepLines(body, "caddy_push"))
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	waitMetrics(
		`caddy_push_connections{hub="default",transport="sse"} 2`,
		`caddy_push_connections{hub="default",transport="ws"} 1`,
		`caddy_push_events_published_total{hub="default"} 3`,
		`caddy_push_events_delivered_total{hub="default",transport="sse"} 5`,
		`caddy_push_events_delivered_total{hub="default",transport="ws"} 3`,
		`caddy_push_events_replayed_total{hub="default",transport="sse"} 2`,
		`caddy_push_slow_disconnects_total{hub="default",transport="sse"} 0`,
	)
	// a WebSocket connection runs on after ServeHTTP: it leaves the gauge
	// when it ends
	ws.conn.Close()
	waitMetrics(`caddy_push_connections{hub="default",transport="ws"} 0`)
}

// An SSE stream writes under Caddy's write idle timeout wrapper, stepping
// over Caddy's own pass-through wrappers only.
func TestSSEWriterUnderIdleTimeout(t *testing.T) {
	inner := httptest.NewRecorder()
	idle := func() *caddyhttp.IdleTimeoutWriter {
		return &caddyhttp.IdleTimeoutWriter{ResponseWriterWrapper: &caddyhttp.ResponseWriterWrapper{ResponseWriter: inner}}
	}
	under := func(w http.ResponseWriter) http.ResponseWriter {
		sw := &sseWriter{w: w, rc: http.NewResponseController(w)}
		sw.underIdleTimeout()
		return sw.w
	}
	direct := idle()
	if got := under(direct); got != direct.ResponseWriterWrapper {
		t.Fatalf("the wrapper itself: writes to %T, want the writer under it", got)
	}
	logged := idle()
	rec := caddyhttp.NewResponseRecorder(logged, nil, nil)
	rec.WriteHeader(200)
	if got := under(rec); got != logged.ResponseWriterWrapper {
		t.Fatalf("under an access-log recorder: writes to %T, want the writer under the idle wrapper", got)
	}
	buffered := caddyhttp.NewResponseRecorder(idle(), new(bytes.Buffer), func(int, http.Header) bool { return true })
	buffered.WriteHeader(200)
	if got := under(buffered); got != buffered {
		t.Fatalf("under a buffering recorder: writes to %T, want the recorder", got)
	}
	foreign := &foreignWriter{idle()}
	if got := under(foreign); got != foreign {
		t.Fatalf("under another package's wrapper: writes to %T, want that wrapper", got)
	}
	if got := under(inner); got != inner {
		t.Fatalf("no wrapper: writes to %T", got)
	}
}

type foreignWriter struct{ http.ResponseWriter }

func (f *foreignWriter) Unwrap() http.ResponseWriter { return f.ResponseWriter }

// A client that cannot set headers resumes with lastEventId or, as the
// Mercure draft names it, last_event_id, over SSE and WebSocket alike;
// lastEventId wins when both are given.
func TestResumeQueryParameterNames(t *testing.T) {
	c := startCaddy(t, `
http://127.0.0.1:PORT {
	push_sse /events
	push_ws /ws
	push_publish /publish {
		anonymous
	}
}`)
	_, id1 := c.publish("/publish", "topic=q&data=one")
	_, id2 := c.publish("/publish", "topic=q&data=two")
	_, id3 := c.publish("/publish", "topic=q&data=three")
	for _, tc := range []struct{ query, want string }{
		{"last_event_id=" + id1, id2},
		{"lastEventId=" + id2, id3},
		{"lastEventId=" + id2 + "&last_event_id=" + id1, id3},
	} {
		s := subscribe(t, c.URL+"/events?topic=q&"+tc.query, nil)
		if ev := s.nextEvent(2 * time.Second); ev.ID != tc.want {
			t.Errorf("SSE with %s: first event %s, want %s", tc.query, ev.ID, tc.want)
		}
		s.Close()
		ws := mustDialWS(t, c.URL+"/ws?topic=q&"+tc.query, nil)
		if f := ws.nextFrame(2 * time.Second); f.ID != tc.want {
			t.Errorf("WebSocket with %s: first frame %s, want %s", tc.query, f.ID, tc.want)
		}
	}
}
