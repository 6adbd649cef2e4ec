package push

import (
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/caddy-push/push/internal/engine"
)

// Over cleartext HTTP/1.1 the engine owns WebSocket connections: no
// goroutine stays per connection, events and client messages flow, and a
// client's close is answered and frees its place.
func TestWSConnectionsLeaveGoroutines(t *testing.T) {
	if !engine.Supported || engineOff.Load() {
		t.Skip("the connection engine is off")
	}
	if testOverTLS() {
		t.Skip("the engine owns cleartext WebSockets only; over TLS each keeps its goroutines")
	}
	c := startCaddy(t, wsSite)
	hub, _ := LookupHub("default")
	const n = 50
	answered := make(chan int, 1)
	clients := make([]*wsClient, n)
	for i := range clients {
		clients[i] = mustDialWSSetup(t, c.URL+"/multi", func(conn *websocket.Conn) {
			conn.SetCloseHandler(func(code int, _ string) error {
				select {
				case answered <- code:
				default:
				}
				return nil
			})
		})
	}
	waitFor(t, time.Second, func() bool {
		return goroutinesIn("(*WSHandler).ServeHTTP")+goroutinesIn("(*socket).run")+goroutinesIn("(*socket).read") == 0
	})
	// (a connection of the test's set-up may still be winding down)
	if got := goroutinesIn("net/http.(*conn).serve"); got > n/10 {
		t.Fatalf("%d net/http connection goroutines for %d hijacked connections", got, n)
	}
	clients[0].send(`{"topic":"a","data":"from 0"}`)
	for i, w := range clients {
		if f := w.nextFrame(time.Second); f.Topic != "a" || f.Data != "from 0" {
			t.Fatalf("client %d got %+v", i, f)
		}
	}
	// a client's close is answered with its code, and the place is freed
	_ = clients[1].conn.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, "bye"), time.Now().Add(time.Second))
	clients[1].closeCode(time.Second)
	if code := <-answered; code != websocket.CloseNormalClosure {
		t.Fatalf("close answered with %d, want 1000", code)
	}
	// a protocol error closes with 1002
	if _, err := clients[2].conn.UnderlyingConn().Write(appendServerFrame(nil, opText, []byte("unmasked"))); err != nil {
		t.Fatal(err)
	}
	if code := clients[2].closeCode(time.Second); code != websocket.CloseProtocolError {
		t.Fatalf("unmasked frame: close %d, want 1002", code)
	}
	for _, w := range clients {
		w.conn.Close()
	}
	waitFor(t, 2*time.Second, func() bool { return hub.stats.of(TransportWS).connections.Load() == 0 })
}

// When the broker loses events (Resync), a WebSocket closes with 1012 and
// an SSE stream ends with a short retry: both resume from their last id.
func TestResyncEndsConnectionsToResume(t *testing.T) {
	c := startCaddy(t, wsSite)
	ws := mustDialWS(t, c.URL+"/ws?topic=r", nil)
	s := subscribe(t, c.URL+"/events?topic=r", nil)
	hub, _ := LookupHub("default")
	waitFor(t, time.Second, func() bool {
		return hub.stats.of(TransportWS).connections.Load() == 1 && hub.stats.of(TransportSSE).connections.Load() == 1
	})
	hub.resync()
	if code := ws.closeCode(2 * time.Second); code != websocket.CloseServiceRestart {
		t.Fatalf("websocket closed with %d, want 1012", code)
	}
	items := s.ended(2 * time.Second)
	if last := items[len(items)-1]; last.Retry <= 0 || last.Retry > 1000 {
		t.Fatalf("stream ended with %+v, want a short retry", last)
	}
}
