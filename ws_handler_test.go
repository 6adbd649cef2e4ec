package push

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"golang.org/x/crypto/bcrypt"
)

const wsSite = `
http://127.0.0.1:PORT {
	push_sse /events
	push_ws /ws
	push_ws /text {
		format text
	}
	push_ws /chat {
		topics chat/{query.room}
		publish chat/{query.room}
		presence
	}
	push_ws /multi {
		topics a b
		publish a b
	}
	push_ws /small {
		max_message_size 1KiB
		publish small
		topics small
	}
	push_publish /publish {
		anonymous
	}
}`

// wsClient is a real WebSocket client reading frames in the background.
type wsClient struct {
	t      testing.TB
	conn   *websocket.Conn
	Resp   *http.Response
	frames chan []byte
	closed chan error // the error that ended reading (a *websocket.CloseError on close)
}

func dialWS(t testing.TB, url string, h http.Header) (*wsClient, error) {
	t.Helper()
	return dialWSWith(t, wsDialer(), url, h)
}

func dialWSWith(t testing.TB, d *websocket.Dialer, url string, h http.Header) (*wsClient, error) {
	t.Helper()
	return dialWSFull(t, d, url, h, nil)
}

// mustDialWSSetup dials and lets setup configure the connection before
// the client starts reading.
func mustDialWSSetup(t testing.TB, url string, setup func(*websocket.Conn)) *wsClient {
	t.Helper()
	c, err := dialWSFull(t, wsDialer(), url, nil, setup)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func dialWSFull(t testing.TB, d *websocket.Dialer, url string, h http.Header, setup func(*websocket.Conn)) (*wsClient, error) {
	t.Helper()
	conn, resp, err := d.Dial(wsURL(url), h)
	if err != nil {
		return &wsClient{t: t, Resp: resp}, err
	}
	if setup != nil {
		setup(conn)
	}
	c := &wsClient{t: t, conn: conn, Resp: resp, frames: make(chan []byte, 10000), closed: make(chan error, 1)}
	t.Cleanup(func() { conn.Close() })
	go func() {
		for {
			_, data, err := conn.ReadMessage()
			if err != nil {
				c.closed <- err
				close(c.frames)
				return
			}
			c.frames <- data
		}
	}()
	return c, nil
}

func mustDialWS(t testing.TB, url string, h http.Header) *wsClient {
	t.Helper()
	c, err := dialWS(t, url, h)
	if err != nil {
		status := 0
		if c.Resp != nil {
			status = c.Resp.StatusCode
		}
		t.Fatalf("dial %s: %v (status %d)", url, err, status)
	}
	return c
}

func (c *wsClient) next(timeout time.Duration) []byte {
	c.t.Helper()
	select {
	case f, ok := <-c.frames:
		if !ok {
			c.t.Fatalf("connection closed: %v", <-c.closed)
		}
		return f
	case <-time.After(timeout):
		c.t.Fatalf("no frame within %v", timeout)
		return nil
	}
}

func (c *wsClient) nextFrame(timeout time.Duration) wsFrame {
	c.t.Helper()
	var f wsFrame
	if err := json.Unmarshal(c.next(timeout), &f); err != nil {
		c.t.Fatal(err)
	}
	return f
}

// closeCode waits for the server to close and returns its close code.
func (c *wsClient) closeCode(timeout time.Duration) int {
	c.t.Helper()
	return c.closeError(timeout).Code
}

// closeError waits for the server to close and returns its close frame.
func (c *wsClient) closeError(timeout time.Duration) *websocket.CloseError {
	c.t.Helper()
	deadline := time.After(timeout)
	for {
		select {
		case _, ok := <-c.frames:
			if ok {
				continue
			}
			var ce *websocket.CloseError
			if err := <-c.closed; errors.As(err, &ce) {
				return ce
			}
			return &websocket.CloseError{Code: websocket.CloseAbnormalClosure}
		case <-deadline:
			c.t.Fatalf("connection not closed within %v", timeout)
			return nil
		}
	}
}

func (c *wsClient) send(s string) {
	c.t.Helper()
	if err := c.conn.WriteMessage(websocket.TextMessage, []byte(s)); err != nil {
		c.t.Fatal(err)
	}
}

func TestWSReceivesWhatSSEReceives(t *testing.T) {
	c := startCaddy(t, wsSite)
	ws := mustDialWS(t, c.URL+"/ws?topic=news&topic=sport", nil)
	text := mustDialWS(t, c.URL+"/text?topic=news", nil)
	sse := subscribe(t, c.URL+"/events?topic=news", nil)
	_, id := c.publish("/publish", "topic=sport&topic=news&type=score&data=2-1")
	if f := ws.nextFrame(time.Second); f != (wsFrame{ID: id, Topic: "sport", Event: "score", Data: "2-1"}) {
		t.Fatalf("json frame %+v", f)
	}
	if f := string(text.next(time.Second)); f != "2-1" {
		t.Fatalf("text frame %q", f)
	}
	if ev := sse.nextEvent(time.Second); ev.ID != id {
		t.Fatalf("sse %+v", ev)
	}
	// event is omitted when unset
	_, id = c.publish("/publish", "topic=news&data=plain")
	if raw := string(ws.next(time.Second)); raw != `{"id":"`+id+`","topic":"news","data":"plain"}` {
		t.Fatalf("raw frame %s", raw)
	}
}

// The writer sends the events' shared frames itself: every payload
// length form of RFC 6455 (7-bit, 16-bit, 64-bit) must reach the client
// whole, in both formats, one batch after another.
func TestWSFrameLengths(t *testing.T) {
	c := startCaddy(t, wsSite)
	ws := mustDialWS(t, c.URL+"/ws?topic=sizes", nil)
	text := mustDialWS(t, c.URL+"/text?topic=sizes", nil)
	hub, _ := LookupHub("default")
	sizes := []int{0, 1, 125, 126, 127, 65535, 65536, 200000}
	ids := make([]string, len(sizes))
	for i, n := range sizes {
		var err error
		if ids[i], err = hub.Publish(context.Background(), Message{Topics: []string{"sizes"}, Data: strings.Repeat("é", n/2) + strings.Repeat("x", n%2)}); err != nil {
			t.Fatal(err)
		}
	}
	for i, n := range sizes {
		want := strings.Repeat("é", n/2) + strings.Repeat("x", n%2)
		if got := string(text.next(5 * time.Second)); got != want {
			t.Fatalf("text frame of %d bytes: got %d bytes", n, len(got))
		}
		if f := ws.nextFrame(5 * time.Second); f.ID != ids[i] || f.Data != want {
			t.Fatalf("json frame of %d bytes: id %s, %d bytes", n, f.ID, len(f.Data))
		}
	}
}

// A batch reaches the other end as one write (on a pipe, one Read gets
// at most one Write); once a flush has failed, nothing more is written.
func TestBatchConn(t *testing.T) {
	near, far := net.Pipe()
	c := &batchConn{Conn: near}
	read := make(chan string)
	go func() {
		buf := make([]byte, 64)
		n, _ := far.Read(buf)
		read <- string(buf[:n])
	}()
	c.hold()
	for _, frame := range []string{"one", "two", "three"} {
		if _, err := c.Write([]byte(frame)); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.flush(); err != nil {
		t.Fatal(err)
	}
	if got := <-read; got != "onetwothree" {
		t.Fatalf("one read got %q", got)
	}
	far.Close()
	c.hold()
	_, _ = c.Write([]byte("lost"))
	if err := c.flush(); err == nil {
		t.Fatal("flush to a closed pipe succeeded")
	}
	if _, err := c.Write([]byte("after")); err == nil {
		t.Fatal("a write after a failed flush went through")
	}
}

func TestWSClientPublish(t *testing.T) {
	c := startCaddy(t, wsSite)
	a := mustDialWS(t, c.URL+"/chat?room=1", nil)
	a.nextFrame(time.Second) // who is there
	a.nextFrame(time.Second) // its own join
	sse := subscribe(t, c.URL+"/events?topic=chat/1", nil)
	b := mustDialWS(t, c.URL+"/chat?room=1", nil)
	b.nextFrame(time.Second) // who is there
	b.nextFrame(time.Second) // b's join
	if f := a.nextFrame(time.Second); f.Event != "push.join" {
		t.Fatalf("a saw %+v, want b's join", f)
	}
	sse.nextEvent(time.Second)

	// one publish topic: any text is the data; the envelope works too
	a.send("hello")
	a.send(`{"event":"shout","data":{"loud":true}}`)
	for _, want := range []wsFrame{{Topic: "chat/1", Data: "hello"}, {Topic: "chat/1", Event: "shout", Data: `{"loud":true}`}} {
		for name, got := range map[string]wsFrame{"sender": a.nextFrame(time.Second), "other": b.nextFrame(time.Second)} {
			if got.ID == "" || got.Topic != want.Topic || got.Event != want.Event || got.Data != want.Data {
				t.Fatalf("%s got %+v, want %+v", name, got, want)
			}
		}
		if ev := sse.nextEvent(time.Second); ev.Data != want.Data {
			t.Fatalf("sse got %+v", ev)
		}
	}
	// another room is refused with an error frame; the connection stays
	a.send(`{"topic":"chat/2","data":"x"}`)
	if raw := string(a.next(time.Second)); !strings.Contains(raw, `"error"`) || !strings.Contains(raw, "chat/2") {
		t.Fatalf("got %s, want an error frame", raw)
	}
	a.send("still here")
	if f := a.nextFrame(time.Second); f.Data != "still here" {
		t.Fatalf("got %+v", f)
	}
	// leave
	b.conn.Close()
	if f := a.nextFrame(time.Second); f.Event != "push.leave" || !strings.Contains(f.Data, `"connection"`) {
		t.Fatalf("got %+v, want b's leave", f)
	}
}

func TestWSClientErrors(t *testing.T) {
	c := startCaddy(t, wsSite)
	ro := mustDialWS(t, c.URL+"/ws?topic=x", nil)
	multi := mustDialWS(t, c.URL+"/multi", nil)
	for _, tc := range []struct {
		c     *wsClient
		frame string
		want  string
	}{
		{ro, "hi", "does not accept"},
		{multi, "plain text", "must be"},
		{multi, `{"topic":"c","data":"x"}`, `topic \"c\"`},
		{multi, `{"topic":"a","data":"x","extra":1}`, "must be"},
		{multi, `{"topic":"a","event":"x\ny","data":"z"}`, "event type"},
		{multi, `{"topic":"a","id":"#1","data":"z"}`, "starts with #"},
		{multi, `{"topic":"a","data":"\ud800"}`, ""},
	} {
		tc.c.send(tc.frame)
		raw := string(tc.c.next(time.Second))
		if tc.want == "" {
			continue // accepted (JSON turns a lone surrogate into U+FFFD)
		}
		if !strings.HasPrefix(raw, `{"error":`) || !strings.Contains(raw, tc.want) {
			t.Errorf("frame %q: got %s, want an error with %q", tc.frame, raw, tc.want)
		}
	}
	if err := multi.conn.WriteMessage(websocket.BinaryMessage, []byte{1, 2}); err != nil {
		t.Fatal(err)
	}
	if raw := string(multi.next(time.Second)); !strings.Contains(raw, "binary") {
		t.Fatalf("binary frame: %s", raw)
	}
	multi.send(`{"topic":"b","data":"ok","id":"urn:ok"}`)
	if f := multi.nextFrame(time.Second); f.Topic != "b" || f.Data != "ok" || f.ID != "urn:ok" {
		t.Fatalf("still open? %+v (with the publisher's id?)", f)
	}
}

func TestWSMessageTooBig(t *testing.T) {
	c := startCaddy(t, wsSite)
	ws := mustDialWS(t, c.URL+"/small", nil)
	ws.send(strings.Repeat("x", 2000))
	if code := ws.closeCode(time.Second); code != websocket.CloseMessageTooBig {
		t.Fatalf("close %d, want 1009", code)
	}
}

func TestWSOrigins(t *testing.T) {
	c := startCaddy(t, `
http://127.0.0.1:PORT {
	push_ws /same
	push_ws /listed {
		origins https://app.example
	}
	push_ws /any {
		origins *
	}
}`)
	for _, tc := range []struct {
		path, origin string
		status       int
	}{
		{"/same?topic=x", c.URL, 101},
		{"/same?topic=x", "https://evil.example", 403},
		{"/same?topic=x", "null", 403},
		{"/listed?topic=x", "https://app.example", 101},
		{"/listed?topic=x", c.URL, 403},
		{"/any?topic=x", "https://anything.example", 101},
	} {
		ws, _ := dialWS(t, c.URL+tc.path, header("Origin", tc.origin))
		if ws.Resp == nil || ws.Resp.StatusCode != tc.status {
			t.Errorf("%s from %s: %v, want %d", tc.path, tc.origin, ws.Resp, tc.status)
		}
	}
	// a plain GET is told to upgrade, with an Upgrade header where there
	// is such a thing: over HTTP/1.1
	resp, err := testClient.Get(c.URL + "/same?topic=x")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 426 || len(body) == 0 || (resp.Header.Get("Upgrade") == "websocket") != (resp.ProtoMajor == 1) {
		t.Fatalf("plain GET over %s: %d, Upgrade %q, %q", resp.Proto, resp.StatusCode, resp.Header.Get("Upgrade"), body)
	}
}

func TestWSPingPong(t *testing.T) {
	c := startCaddy(t, `
http://127.0.0.1:PORT {
	push_ws /ws {
		ping_interval 150ms
		pong_timeout 150ms
	}
}`)
	// gorilla's client answers pings while it reads
	pings := make(chan struct{}, 100)
	ok := mustDialWSSetup(t, c.URL+"/ws?topic=x", func(conn *websocket.Conn) {
		conn.SetPingHandler(func(data string) error {
			pings <- struct{}{}
			return conn.WriteControl(websocket.PongMessage, []byte(data), time.Now().Add(time.Second))
		})
	})
	// a client that never answers is dropped
	deaf := mustDialWSSetup(t, c.URL+"/ws?topic=x", func(conn *websocket.Conn) {
		conn.SetPingHandler(func(string) error { return nil })
	})
	deaf.closeCode(2 * time.Second)
	for range 3 {
		select {
		case <-pings:
		case <-time.After(time.Second):
			t.Fatal("no ping")
		}
	}
	select {
	case err := <-ok.closed:
		t.Fatalf("a client that answers was dropped: %v", err)
	default:
	}
}

func TestWSMaxConnections(t *testing.T) {
	c := startCaddy(t, `
http://127.0.0.1:PORT {
	push_ws /ws {
		max_connections 1
	}
}`)
	first := mustDialWS(t, c.URL+"/ws?topic=x", nil)
	ws, err := dialWS(t, c.URL+"/ws?topic=x", nil)
	if err == nil || ws.Resp == nil || ws.Resp.StatusCode != 503 {
		t.Fatalf("second connection: %v %v, want 503", err, ws.Resp)
	}
	// the connection gives its place back when it ends
	first.conn.Close()
	waitFor(t, 2*time.Second, func() bool {
		ws, err := dialWS(t, c.URL+"/ws?topic=x", nil)
		if err == nil {
			ws.conn.Close()
		}
		return err == nil
	})
}

// A reload closes every open connection with 1001 at once; the client
// resumes with lastEventId and misses nothing. So does caddy stop.
func TestWSReloadAndResume(t *testing.T) {
	c := startCaddy(t, wsSite)
	ws := mustDialWS(t, c.URL+"/ws?topic=r", nil)
	_, id1 := c.publish("/publish", "topic=r&data=1")
	ws.nextFrame(time.Second)
	start := time.Now()
	c.Load(wsSite)
	if code := ws.closeCode(time.Second); code != websocket.CloseGoingAway {
		t.Fatalf("close %d, want 1001", code)
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("closed %v after the reload", d)
	}
	_, id2 := c.publish("/publish", "topic=r&data=2")
	ws = mustDialWS(t, c.URL+"/ws?topic=r&lastEventId="+id1, nil)
	if f := ws.nextFrame(time.Second); f.ID != id2 {
		t.Fatalf("resumed with %+v, want %s", f, id2)
	}
	ws2 := mustDialWS(t, c.URL+"/ws?topic=r&lastEventId=nonsense", nil)
	if f := ws2.nextFrame(time.Second); f.Event != "push.reset" || f.Data == "" || f.ID == "" {
		t.Fatalf("got %+v, want push.reset", f)
	}
	c.Load(`http://127.0.0.1:PORT {
	respond "other"
}`)
	for _, w := range []*wsClient{ws, ws2} {
		if code := w.closeCode(time.Second); code != websocket.CloseGoingAway {
			t.Fatalf("close %d, want 1001", code)
		}
	}
	waitNoGoroutine(t, "(*socket).run")
}

// A client that falls behind is closed with 4008 while a fast one keeps
// receiving everything.
func TestWSSlowConsumer(t *testing.T) {
	// the slow client is slow, not stalled: on a busy machine a stall of
	// TestMain's short write timeout would cut it off without a close frame
	defer writeTimeoutSet.Store(writeTimeoutSet.Swap(int64(5 * time.Second)))
	c := startCaddy(t, wsSite)
	fast := mustDialWS(t, c.URL+"/ws?topic=s", nil)
	d := wsDialer()
	d.ReadBufferSize = 1024
	slowConn, _, err := d.Dial(wsURL(c.URL)+"/ws?topic=s", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer slowConn.Close()
	slowCode := make(chan int, 1)
	go func() {
		for {
			_ = slowConn.SetReadDeadline(time.Now().Add(10 * time.Second))
			if _, _, err := slowConn.ReadMessage(); err != nil {
				var ce *websocket.CloseError
				switch {
				case errors.As(err, &ce):
					slowCode <- ce.Code
				case errors.Is(err, io.ErrUnexpectedEOF):
					// dropped over TLS: the connection ends inside a
					// record, which gorilla does not call 1006
					slowCode <- websocket.CloseAbnormalClosure
				default:
					t.Logf("slow client: %v", err)
					slowCode <- 0
				}
				return
			}
			time.Sleep(3 * time.Millisecond)
		}
	}()
	pacedFlood(t, "s", 3000, 8<<10, 50, func(i int) {
		if f := fast.nextFrame(5 * time.Second); len(f.Data) != 8<<10 {
			t.Fatalf("frame %d: %d bytes", i, len(f.Data))
		}
	})
	hub, _ := LookupHub("default")
	// the slow one has been reading all along, a frame every few ms: it
	// is told 4008. On goroutines it may be dropped instead if a write to
	// it timed out (a frame may have gone out half); the engine sends
	// 4008 in place of the frames not begun
	code := <-slowCode
	if code != CloseSlowConsumer && (code != websocket.CloseAbnormalClosure || onEngine()) {
		t.Fatalf("close %d, want %d", code, CloseSlowConsumer)
	} else {
		t.Logf("slow client closed with %d", code)
	}
	if n := hub.stats.of(TransportWS).slow.Load(); n != 1 {
		t.Fatalf("%d slow disconnects counted", n)
	}
}

// One user's topic behind basic_auth reaches only that user.
func TestWSPerUserTopics(t *testing.T) {
	hash := func(p string) string {
		h, _ := bcrypt.GenerateFromPassword([]byte(p), bcrypt.MinCost)
		return string(h)
	}
	c := startCaddy(t, `
http://127.0.0.1:PORT {
	basic_auth /me {
		alice `+hash("a-pass")+`
		bob `+hash("b-pass")+`
	}
	push_ws /me {
		topics user/{http.auth.user.id}
	}
	push_publish /publish {
		anonymous
	}
}`)
	auth := func(user, pass string) http.Header {
		r, _ := http.NewRequest("GET", "/", nil)
		r.SetBasicAuth(user, pass)
		return r.Header
	}
	alice := mustDialWS(t, c.URL+"/me", auth("alice", "a-pass"))
	bob := mustDialWS(t, c.URL+"/me", auth("bob", "b-pass"))
	if ws, _ := dialWS(t, c.URL+"/me", auth("alice", "wrong")); ws.Resp == nil || ws.Resp.StatusCode != 401 {
		t.Fatalf("wrong password: %v", ws.Resp)
	}
	_, id := c.publish("/publish", "topic=user/alice&data=for-alice")
	if f := alice.nextFrame(time.Second); f.ID != id {
		t.Fatalf("alice got %+v", f)
	}
	select {
	case f := <-bob.frames:
		t.Fatalf("bob got %s", f)
	case <-time.After(100 * time.Millisecond):
	}
}

func TestWSCompression(t *testing.T) {
	c := startCaddy(t, `
http://127.0.0.1:PORT {
	push_ws /ws {
		compression
	}
	push_ws /plain
	push_publish /publish {
		anonymous
	}
}`)
	d := wsDialer()
	d.EnableCompression = true
	ws, err := dialWSWith(t, d, c.URL+"/ws?topic=z", nil)
	if err != nil {
		t.Fatal(err)
	}
	if ext := ws.Resp.Header.Get("Sec-WebSocket-Extensions"); !strings.Contains(ext, "permessage-deflate") {
		t.Fatalf("extensions %q", ext)
	}
	plain, _ := dialWSWith(t, d, c.URL+"/plain?topic=z", nil)
	if ext := plain.Resp.Header.Get("Sec-WebSocket-Extensions"); ext != "" {
		t.Fatalf("compression negotiated though off: %q", ext)
	}
	_, id := c.publish("/publish", "topic=z&data="+strings.Repeat("abc", 1000))
	for _, w := range []*wsClient{ws, plain} {
		if f := w.nextFrame(time.Second); f.ID != id || len(f.Data) != 3000 {
			t.Fatalf("got %s", f.ID)
		}
	}
}

func TestWSPublishRate(t *testing.T) {
	c := startCaddy(t, `
http://127.0.0.1:PORT {
	push_ws /ws {
		topics r
		publish r
		publish_rate 5
		publish_burst 10
	}
}`)
	ws := mustDialWS(t, c.URL+"/ws", nil)
	errorsSeen := 0
	for i := range 40 {
		// the server may close (1008) before the flood is over
		if ws.conn.WriteMessage(websocket.TextMessage, []byte(strconv.Itoa(i))) != nil {
			break
		}
	}
	for {
		select {
		case f, ok := <-ws.frames:
			if !ok {
				var ce *websocket.CloseError
				if err := <-ws.closed; !errors.As(err, &ce) || ce.Code != websocket.ClosePolicyViolation {
					t.Fatalf("closed with %v, want 1008", err)
				}
				if errorsSeen == 0 {
					t.Fatal("closed without a warning first")
				}
				return
			}
			if strings.Contains(string(f), "rate") {
				errorsSeen++
			}
		case <-time.After(2 * time.Second):
			t.Fatal("a sustained flood was not closed")
		}
	}
}

// BenchmarkNetworkFanout publishes through the Go API to 500 clients of
// one topic over real loopback connections through Caddy, SSE and
// WebSocket (json format) in the same run, so that their costs compare
// as a ratio. ns/delivery is wall time per event delivered to one client,
// server and clients together, on the benchmark's machine. Publishing
// stays at most 64 events ahead of the clients, so none is cut off.
func BenchmarkNetworkFanout(b *testing.B) {
	const clients, window = 500, 64
	c := startCaddy(b, wsSite)
	hub, _ := LookupHub("default")
	client := newTestClient()
	b.Cleanup(client.CloseIdleConnections)
	open := map[string]func(topic string, delivered *atomic.Int64) io.Closer{
		"sse": func(topic string, delivered *atomic.Int64) io.Closer {
			resp, err := client.Get(c.URL + "/events?topic=" + topic)
			if err != nil || resp.StatusCode != http.StatusOK {
				b.Fatalf("subscribing: %v %v", err, resp)
			}
			go func() {
				br := bufio.NewReader(resp.Body)
				for {
					line, err := br.ReadSlice('\n')
					if err != nil {
						return
					}
					if bytes.HasPrefix(line, []byte("data: ")) {
						delivered.Add(1)
					}
				}
			}()
			return resp.Body
		},
		"ws": func(topic string, delivered *atomic.Int64) io.Closer {
			conn, _, err := wsDialer().Dial(wsURL(c.URL)+"/ws?topic="+topic, nil)
			if err != nil {
				b.Fatalf("dialing: %v", err)
			}
			go func() {
				for {
					_, r, err := conn.NextReader()
					if err != nil {
						return
					}
					_, _ = io.Copy(io.Discard, r)
					delivered.Add(1)
				}
			}()
			return conn
		},
	}
	for _, name := range []string{"sse", "ws"} {
		b.Run(name, func(b *testing.B) {
			var delivered atomic.Int64
			for range clients {
				defer open[name]("bench-"+name, &delivered).Close()
			}
			msg := Message{Topics: []string{"bench-" + name}, Data: strings.Repeat("x", 256)}
			sent := int64(0)
			wait := func(upTo int64) {
				for deadline := time.Now().Add(10 * time.Second); delivered.Load() < upTo*clients; time.Sleep(50 * time.Microsecond) {
					if time.Now().After(deadline) {
						b.Fatalf("%d of %d deliveries after 10s", delivered.Load(), upTo*clients)
					}
				}
			}
			b.ResetTimer()
			for b.Loop() {
				if _, err := hub.Publish(context.Background(), msg); err != nil {
					b.Fatal(err)
				}
				sent++
				wait(sent - window)
			}
			wait(sent)
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(sent*clients), "ns/delivery")
		})
	}
}
