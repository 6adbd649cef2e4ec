package main

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// Publishing over WebSocket: every acknowledged event reaches every
// subscriber once, over both subscriber transports, and the result says
// how it was published.
func TestRunPublishingOverWebSocket(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a server and runs loads for seconds")
	}
	addr, _ := startCaddy(t)
	for _, transport := range []string{"sse", "ws"} {
		t.Run(transport, func(t *testing.T) {
			var progress bytes.Buffer
			r, err := run(t.Context(), testConfig(t, addr, "-transport", transport, "-pub-ws"), &progress)
			if err != nil {
				t.Fatalf("%v\n%s", err, progress.String())
			}
			checkComplete(t, r)
			if r.PublishOver != "ws" || !strings.HasSuffix(r.Label, " pub-ws") {
				t.Errorf("published over %q, label %q", r.PublishOver, r.Label)
			}
		})
	}
}

// A message the server refuses comes back as an error frame, and is
// counted as a failed publish: here the route takes no messages at all.
func TestPublishOverWebSocketRefused(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a server")
	}
	addr, _ := startCaddy(t)
	p := wsPublisher(t, addr, "ws://{addr}/ws?topic={topic}", "refused", 64)
	p.run(t.Context(), 50, 100*time.Millisecond)
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, n := p.failures.snapshot(); n > 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	p.close()
	f, n := p.failures.snapshot()
	if n == 0 || p.sent.Load() == 0 {
		t.Fatalf("sent %d, failures %v", p.sent.Load(), f)
	}
	for k := range f {
		if !strings.Contains(k, "does not accept messages") {
			t.Errorf("failure %q", k)
		}
	}
}

// Client frames of every length encoding (7-bit, 16-bit, 64-bit) are
// read whole by a real WebSocket server.
func TestClientTextFrames(t *testing.T) {
	got := make(chan []byte, 8)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := (&websocket.Upgrader{}).Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer c.Close()
		for {
			kind, msg, err := c.ReadMessage()
			if err != nil {
				close(got)
				return
			}
			if kind != websocket.TextMessage {
				msg = []byte("not text")
			}
			got <- msg
		}
	}))
	defer srv.Close()
	p := wsPublisher(t, strings.TrimPrefix(srv.URL, "http://"), "ws://{addr}/{topic}", "t", 0)
	defer p.close()
	conn, err := p.openWS(p.eps[0], "t")
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []int{0, 1, 125, 126, 127, 0xffff, 0x10000, 200000} {
		payload := bytes.Repeat([]byte{'a' + byte(n%26)}, n)
		if _, err := conn.Write(appendClientText(nil, payload)); err != nil {
			t.Fatal(err)
		}
		if msg := <-got; !bytes.Equal(msg, payload) {
			t.Errorf("%d bytes: the server read %d", n, len(msg))
		}
	}
	conn.Close()
	if _, ok := <-got; ok {
		t.Error("a message after the last")
	}
}

// wsPublisher is a -pub-ws publisher on one topic, to a -pub-url template.
func wsPublisher(t *testing.T, addr, url, topic string, size int) *publisher {
	t.Helper()
	c := testConfig(t, addr, "-pub-ws", "-pub-url", url)
	tg, err := newTarget(c)
	if err != nil {
		t.Fatal(err)
	}
	p, err := newPublisher(tg, []string{topic}, size, 1, c.timeout)
	if err != nil {
		t.Fatal(err)
	}
	return p
}
