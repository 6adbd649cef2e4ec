package push

import (
	"cmp"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"golang.org/x/crypto/bcrypt"
)

// proxyApp is the app behind publish_proxy in these tests. On /publish it
// answers by the message's data: "refuse" 403 with a reason, "slow"
// never in time, "garbage" not JSON, "edit" another event and data,
// "elsewhere" another topic, "reserved" a server's type, "consumed" 204,
// "boom" 500; anything else, the envelope as it came. /queue answers the
// same after 50ms, /order after 0 to 20ms.
func proxyApp(t *testing.T) *testApp {
	app := startTestApp(t)
	echo := func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		var env map[string]any
		if err := json.Unmarshal(body, &env); err != nil {
			http.Error(w, "not an envelope", http.StatusBadRequest)
			return
		}
		answer := func() { _ = json.NewEncoder(w).Encode(env) }
		switch env["data"] {
		case "refuse":
			w.WriteHeader(http.StatusForbidden)
			_, _ = io.WriteString(w, `{"reason":"not on my watch"}`)
		case "slow":
			select {
			case <-r.Context().Done():
			case <-time.After(5 * time.Second):
			}
			answer()
		case "garbage":
			_, _ = io.WriteString(w, "not json")
		case "edit":
			env["event"], env["data"] = "edited", "EDITED"
			answer()
		case "elsewhere":
			env["topic"] = "room/2"
			answer()
		case "reserved":
			env["event"] = "push.join"
			answer()
		case "consumed":
			w.WriteHeader(http.StatusNoContent)
		case "boom":
			http.Error(w, "oops", http.StatusInternalServerError)
		default:
			_, _ = w.Write(body) // as it came, byte for byte
		}
	}
	app.handle("/publish", echo)
	app.handle("/rate", echo)
	app.handle("/queue", func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(50 * time.Millisecond)
		echo(w, r)
	})
	app.handle("/order", func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(time.Duration(len(app.requests("/order"))%3) * 10 * time.Millisecond)
		echo(w, r)
	})
	return app
}

// publish_proxy on both transports: the engine's, and goroutines of the
// connection's own.
func TestPublishProxy(t *testing.T) {
	for _, transport := range []string{"engine", "goroutines"} {
		t.Run(transport, func(t *testing.T) { testPublishProxy(t, transport == "engine") })
	}
}

func testPublishProxy(t *testing.T, onEngineIfAny bool) {
	app := proxyApp(t)
	gone := httptest.NewServer(http.NotFoundHandler())
	gone.Close()
	hash, _ := bcrypt.GenerateFromPassword([]byte("a-pass"), bcrypt.MinCost)
	globals := ""
	if !onEngineIfAny {
		globals = "{\n\tpush {\n\t\tengine off\n\t}\n}\n"
	}
	c := startCaddy(t, globals+`
http://127.0.0.1:PORT {
	push_sse /events
	basic_auth /ws {
		alice `+string(hash)+`
	}
	push_ws /ws {
		topics room/{query.room}
		publish room/{query.room}
		publish_proxy `+app.URL+`/publish {
			timeout 300ms
		}
	}
	push_ws /multi {
		topics a b
		publish a b
		publish_proxy `+app.URL+`/publish
	}
	push_ws /text {
		format text
		topics t
		publish t
		publish_proxy `+app.URL+`/publish
	}
	push_ws /down {
		topics down
		publish down
		publish_proxy `+gone.URL+`
	}
	push_ws /rate {
		topics r
		publish r
		publish_rate 1
		publish_burst 2
		publish_proxy `+app.URL+`/rate
	}
	push_ws /queue {
		topics q
		publish q
		publish_proxy `+app.URL+`/queue
	}
	push_ws /order {
		topics o
		publish o
		publish_proxy `+app.URL+`/order
	}
	push_ws /long {
		topics l
		publish l
		publish_proxy `+app.URL+`/publish {
			timeout 5s
		}
	}
}`)
	hub, _ := LookupHub("default")
	alice := func() http.Header {
		r, _ := http.NewRequest("GET", "/", nil)
		r.SetBasicAuth("alice", "a-pass")
		return r.Header
	}()
	sse := subscribe(t, c.URL+"/events?topic=room/1&topic=room/2&topic=down&topic=r&topic=l", nil)
	ws := mustDialWS(t, c.URL+"/ws?room=1", alice)
	if onEngine() != onEngineIfAny && onEngine() {
		t.Fatal("engine off, yet on")
	}
	if !onEngine() { // the socket's goroutine may not have begun
		waitFor(t, time.Second, func() bool { return goroutinesIn("(*socket).run") > 0 })
	} else if n := goroutinesIn("(*socket).run"); n > 0 {
		t.Fatalf("on the engine, %d goroutines of sockets", n)
	}
	published := func(t *testing.T, ws *wsClient, topic, event, data string) {
		t.Helper()
		if f := ws.nextFrame(2 * time.Second); f.ID == "" || f.Topic != topic || f.Event != event || f.Data != data {
			t.Fatalf("the sender got %+v, want %s %s %q", f, topic, event, data)
		}
		if ev := sse.nextEvent(2 * time.Second); ev.Type != cmp.Or(event, "message") || ev.Data != data {
			t.Fatalf("a subscriber got %+v, want %s %q", ev, event, data)
		}
	}
	refused := func(t *testing.T, ws *wsClient, reason string) {
		t.Helper()
		raw := string(ws.next(2 * time.Second))
		if !strings.HasPrefix(raw, `{"error":`) || !strings.Contains(raw, reason) {
			t.Fatalf("got %s, want an error frame with %q", raw, reason)
		}
	}
	// nothing was published to topic before a marker the hub publishes
	// now: the subscriber, and the topic's WebSocket followers, get the
	// marker next
	nothingPublished := func(t *testing.T, topic string, followers ...*wsClient) {
		t.Helper()
		id, err := hub.Publish(context.Background(), Message{Topics: []string{topic}, Data: "marker"})
		if err != nil {
			t.Fatal(err)
		}
		if ev := sse.nextEvent(2 * time.Second); ev.ID != id {
			t.Fatalf("a subscriber got %+v before the marker", ev)
		}
		for _, ws := range followers {
			if f := ws.nextFrame(2 * time.Second); f.ID != id {
				t.Fatalf("a follower got %+v before the marker", f)
			}
		}
	}

	t.Run("passes through", func(t *testing.T) {
		ws.send("hello")
		published(t, ws, "room/1", "", "hello")
		ws.send(`{"event":"shout","data":{"loud":true},"key":"k1"}`)
		published(t, ws, "room/1", "shout", `{"loud":true}`)
		got := app.requests("/publish")
		if len(got) != 2 {
			t.Fatalf("the app got %d calls, want 2", len(got))
		}
		var first, second map[string]any
		_ = json.Unmarshal(got[0].Body, &first)
		_ = json.Unmarshal(got[1].Body, &second)
		if first["topic"] != "room/1" || first["data"] != "hello" || first["user"] != "alice" || first["connection"] == "" ||
			len(first) != 4 || got[0].Header.Get("Content-Type") != "application/json" {
			t.Errorf("the app got %s", got[0].Body)
		}
		loud, _ := second["data"].(map[string]any)
		if second["event"] != "shout" || loud["loud"] != true || second["key"] != "k1" || second["connection"] != first["connection"] {
			t.Errorf("the app got %s", got[1].Body)
		}
		// a key is scoped to the user, as without the app: a repeat publishes nothing
		ws.send(`{"event":"shout","data":{"loud":true},"key":"k1"}`)
		waitFor(t, time.Second, func() bool { return len(app.requests("/publish")) == 3 })
		nothingPublished(t, "room/1", ws)
	})
	t.Run("rewrites", func(t *testing.T) {
		ws.send("edit")
		published(t, ws, "room/1", "edited", "EDITED")
	})
	t.Run("consumes", func(t *testing.T) {
		ws.send("consumed") // 204: nothing published, nothing said
		ws.send("after")
		published(t, ws, "room/1", "", "after")
	})
	t.Run("refuses", func(t *testing.T) {
		for _, tc := range []struct{ data, reason string }{
			{"refuse", `"not on my watch"`},
			{"slow", replyProxyNotConfirmed},
			{"boom", replyProxyNotConfirmed},
			{"garbage", replyProxyBadAnswer},
			{"elsewhere", `may not publish to topic \"room/2\"`},
			{"reserved", "reserved for the server"},
		} {
			ws.send(tc.data)
			refused(t, ws, tc.reason)
			nothingPublished(t, "room/1", ws)
			nothingPublished(t, "room/2")
		}
		// checked before the call: the app is not asked
		calls := len(app.requests("/publish"))
		ws.send(`{"topic":"room/2","data":"x"}`)
		refused(t, ws, `may not publish to topic \"room/2\"`)
		ws.send(`{"event":"push.leave","data":"x"}`)
		refused(t, ws, "reserved for the server")
		if n := len(app.requests("/publish")); n != calls {
			t.Errorf("the app got %d calls for messages refused before", n-calls)
		}
		// and the connection stays
		ws.send("still here")
		published(t, ws, "room/1", "", "still here")
	})
	t.Run("app down", func(t *testing.T) {
		down := mustDialWS(t, c.URL+"/down", nil)
		down.send("hello")
		refused(t, down, replyProxyNotConfirmed)
		nothingPublished(t, "down", down)
	})
	t.Run("several topics", func(t *testing.T) {
		multi := mustDialWS(t, c.URL+"/multi", nil)
		multi.send(`{"topic":"b","data":"to b"}`)
		if f := multi.nextFrame(2 * time.Second); f.Topic != "b" || f.Data != "to b" {
			t.Fatalf("got %+v", f)
		}
		multi.send("plain text")
		refused(t, multi, "a message must be")
	})
	t.Run("text format", func(t *testing.T) {
		text := mustDialWS(t, c.URL+"/text", nil)
		text.send("hi")
		if raw := string(text.next(2 * time.Second)); raw != "hi" {
			t.Fatalf("got %q", raw)
		}
		got := app.requests("/publish")
		var env map[string]any
		_ = json.Unmarshal(got[len(got)-1].Body, &env)
		if env["topic"] != "t" || env["data"] != "hi" || env["user"] != "" {
			t.Fatalf("the app got %s", got[len(got)-1].Body)
		}
	})
	t.Run("rate limit first", func(t *testing.T) {
		rate := mustDialWS(t, c.URL+"/rate", nil)
		for i := range 3 {
			rate.send("r" + strconv.Itoa(i))
		}
		// the refusal may come before the others are published
		var frames []string
		for range 3 {
			frames = append(frames, string(rate.next(2*time.Second)))
		}
		if !slices.ContainsFunc(frames, func(f string) bool { return strings.Contains(f, replyRateExceeded) }) {
			t.Fatalf("got %s, want a refusal", frames)
		}
		for i := range 2 {
			if ev := sse.nextEvent(2 * time.Second); ev.Data != "r"+strconv.Itoa(i) {
				t.Fatalf("got %+v", ev)
			}
		}
		nothingPublished(t, "r", rate)
		if n := len(app.requests("/rate")); n != 2 {
			t.Fatalf("the app got %d calls, want 2: none for the message over the rate", n)
		}
	})
	t.Run("in order", func(t *testing.T) {
		// as many as may wait: all go, in order, whatever the app's pace
		order := mustDialWS(t, c.URL+"/order", nil)
		for i := range maxProxyWaiting {
			order.send("o" + strconv.Itoa(i))
		}
		for i := range maxProxyWaiting {
			if f := order.nextFrame(2 * time.Second); f.Data != "o"+strconv.Itoa(i) {
				t.Fatalf("got %+v, want o%d", f, i)
			}
		}
	})
	t.Run("queue bound", func(t *testing.T) {
		queue := mustDialWS(t, c.URL+"/queue", nil)
		const n = 12
		for i := range n {
			queue.send("q" + strconv.Itoa(i))
		}
		var accepted, full int
		for range n {
			if raw := string(queue.next(5 * time.Second)); strings.Contains(raw, replyProxyQueueFull) {
				full++
			} else {
				accepted++
			}
		}
		// one with the app, maxProxyWaiting waiting (one more, if the
		// first was taken before the rest arrived)
		if accepted < maxProxyWaiting || accepted > maxProxyWaiting+1 || full != n-accepted {
			t.Fatalf("%d published, %d refused with a full queue", accepted, full)
		}
		if calls := len(app.requests("/queue")); calls != accepted {
			t.Fatalf("the app got %d calls for %d published", calls, accepted)
		}
		// an idle connection keeps no goroutine for the app
		waitFor(t, time.Second, func() bool { return goroutinesIn("(*proxyQueue).run") == 0 })
	})
	t.Run("ends with the connection", func(t *testing.T) {
		long := mustDialWS(t, c.URL+"/long", nil)
		calls := len(app.requests("/publish"))
		long.send("slow")
		waitFor(t, time.Second, func() bool { return len(app.requests("/publish")) > calls })
		_ = long.conn.Close()
		// the call is cancelled, not left to its 5s, and nothing is published
		waitFor(t, time.Second, func() bool { return goroutinesIn("(*proxyQueue).run") == 0 })
		nothingPublished(t, "l")
	})
}

func TestPublishProxyCaddyfile(t *testing.T) {
	d := caddyfile.NewTestDispenser("push_ws {\n\tpublish chat\n\tpublish_proxy http://app/a http://app/b {\n\t\ttimeout 1s\n\t}\n\tformat text\n}")
	var h WSHandler
	if err := h.UnmarshalCaddyfile(d); err != nil {
		t.Fatal(err)
	}
	if p := h.PublishProxy; p == nil || len(p.URLs) != 2 || p.Timeout != caddy.Duration(time.Second) || h.Format != FormatText {
		t.Fatalf("got %+v", h)
	}
	for input, want := range map[string]string{
		"push_ws {\n\tpublish_proxy\n}":                                    "needs the app's URL",
		"push_ws {\n\tpublish_proxy http://a {\n\t\tsecret x\n\t}\n}":      "unrecognized publish_proxy option 'secret'",
		"push_ws {\n\tpublish_proxy http://a\n\tpublish_proxy http://b\n}": "given more than once",
	} {
		var h WSHandler
		if err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(input)); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: %v, want %q", input, err, want)
		}
	}
	// without publish there is nothing to confirm: the config is refused
	cfg := adapt(t, "http://127.0.0.1:1 {\n\tpush_ws {\n\t\tpublish_proxy http://127.0.0.1:2\n\t}\n}")
	if !strings.Contains(string(cfg), `"publish_proxy":{"urls":["http://127.0.0.1:2"]}`) {
		t.Errorf("adapted to %s", cfg)
	}
	if err := caddyValidate(cfg); err == nil || !strings.Contains(err.Error(), "publish_proxy needs publish") {
		t.Errorf("loaded without publish: %v", err)
	}
}
