package redis

import (
	"context"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/caddy-push/push"
)

// A pause asked of the hub on one node (this process) pauses the matching
// streams on another node (a Caddy process) on the same Redis, and only
// those.
func TestPauseReachesEveryNode(t *testing.T) {
	r := startRedis(t)
	hub := loadHub(t, r.url())
	b := startNode(t, r.url(), "")
	news := subscribe(t, b.base, "news", "")
	other := subscribe(t, b.base, "other", "")
	time.Sleep(200 * time.Millisecond) // both nodes follow Redis

	n, err := hub.Pause(context.Background(), push.PauseRequest{Topics: []string{"news"}, For: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if n != 0 {
		t.Fatalf("paused %d streams on this node, which has none", n)
	}
	ev := news.next(t, 3*time.Second)
	ms, err := strconv.ParseInt(ev.Data, 10, 64)
	if ev.Type != "pause" || err != nil {
		t.Fatalf("b's stream got %+v, want a pause", ev)
	}
	if d := time.Until(time.UnixMilli(ms)); d < 25*time.Second || d > 31*time.Second {
		t.Fatalf("paused until %v from now, want 30s", d)
	}
	select {
	case <-news.ended:
	case <-time.After(3 * time.Second):
		t.Fatal("b's paused stream did not end")
	}
	_, id := b.publish("other", "still here")
	if ev := other.next(t, 3*time.Second); ev.ID != id {
		t.Fatalf("b's stream of another topic got %+v, want %s", ev, id)
	}
}

// While Redis is down, an EventSource that connects gets a pause, not a
// 503 it would never retry; other clients get the 503.
func TestPauseWhileRedisIsDown(t *testing.T) {
	r := startRedis(t)
	a := startNode(t, r.url(), "")
	r.kill()
	get := func(accept string) (*http.Response, string) {
		req, _ := http.NewRequest(http.MethodGet, a.base+"/events?topic=news", nil)
		if accept != "" {
			req.Header.Set("Accept", accept)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp, string(body)
	}
	resp, body := get("")
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("without Accept: %d %v %q, want 503 with Retry-After", resp.StatusCode, resp.Header, body)
	}
	resp, body = get("text/event-stream")
	if resp.StatusCode != http.StatusOK || !strings.Contains(body, "event: pause\n") || !strings.Contains(body, "\nretry: ") {
		t.Fatalf("as EventSource: %d %q, want 200 and a pause", resp.StatusCode, body)
	}
}
