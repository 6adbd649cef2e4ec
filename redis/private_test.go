package redis

import (
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/gorilla/websocket"
)

// The private flag travels in Redis's wire event: a private event
// published on node B reaches a reader on node A whose token allows its
// topic, not an anonymous subscriber there, live and from Redis's
// history; a public one reaches both.
func TestPrivateEventsAcrossNodes(t *testing.T) {
	r := startRedis(t)
	routes := fmt.Sprintf(`push_sse /events {
		jwt_key %s
	}
	push_ws /ws {
		jwt_key %s
	}
	push_publish /publish {
		anonymous
	}`, rosterSecret, rosterSecret)
	a := startNodeWith(t, r.url(), "", routes)
	b := startNodeWith(t, r.url(), "", routes)
	tok, err := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{"mercure": map[string]any{"subscribe": []string{"news"}}}).SignedString([]byte(rosterSecret))
	if err != nil {
		t.Fatal(err)
	}
	reader := func(lastID string) *websocket.Conn {
		u := strings.Replace(a.base, "http://", "ws://", 1) + "/ws?topic=news&lastEventId=" + url.QueryEscape(lastID)
		c, _, err := websocket.DefaultDialer.Dial(u, http.Header{"Authorization": {"Bearer " + tok}})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	expect := func(c *websocket.Conn, datas ...string) {
		t.Helper()
		for _, want := range datas {
			_ = c.SetReadDeadline(time.Now().Add(3 * time.Second))
			var frame struct{ ID, Topic, Data string }
			if err := c.ReadJSON(&frame); err != nil || frame.Data != want {
				t.Fatalf("reader got %+v, %v; want %q", frame, err, want)
			}
		}
	}

	_, before := b.publish("news", "before")
	anon := subscribe(t, a.base, "news", "")
	live := reader("")
	time.Sleep(200 * time.Millisecond) // both nodes follow Redis
	resp, err := http.PostForm(b.base+"/publish", url.Values{"topic": {"news"}, "data": {"secret"}, "private": {"on"}})
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("private publish: %v %v", resp, err)
	}
	resp.Body.Close()
	if status, id := b.publish("news", "public"); status != 200 {
		t.Fatalf("public publish: %d %s", status, id)
	}
	if ev := anon.next(t, 3*time.Second); ev.Data != "public" {
		t.Fatalf("anonymous subscriber got %+v, want the public event", ev)
	}
	expect(live, "secret", "public")

	// resumed from Redis's history
	if ev := subscribe(t, a.base, "news", before).next(t, 3*time.Second); ev.Data != "public" {
		t.Fatalf("anonymous resume got %+v, want the public event", ev)
	}
	expect(reader(before), "secret", "public")
}

// A wire event without the private field is public: events stored
// before private events existed read as they did.
func TestWireEventPrivate(t *testing.T) {
	for _, tc := range []struct {
		wire    string
		private bool
	}{
		{`{"p":"e","s":1,"t":0,"k":["a"],"e":"","d":"x","r":0}`, false},
		{`{"p":"e","s":1,"t":0,"k":["a"],"e":"","d":"x","r":0,"x":true}`, true},
	} {
		ev, err := decode(tc.wire)
		if err != nil || ev.Private != tc.private || ev.Data != "x" {
			t.Fatalf("%s: %+v, %v", tc.wire, ev, err)
		}
	}
}
