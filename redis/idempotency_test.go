package redis

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"github.com/caddy-push/push"
)

// publishKeyed posts a form with an Idempotency-Key through client and
// returns the status, the id (or reason) and Idempotent-Replayed.
func publishKeyed(client *http.Client, base, key, topic, data string) (int, string, string, error) {
	req, _ := http.NewRequest("POST", base+"/publish", strings.NewReader(url.Values{"topic": {topic}, "data": {data}}.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Idempotency-Key", key)
	resp, err := client.Do(req)
	if err != nil {
		return 0, "", "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, strings.TrimSpace(string(b)), resp.Header.Get("Idempotent-Replayed"), nil
}

// answerDropper is a TCP proxy to target that passes requests on and
// drops the answers: once the target starts answering it closes the
// client's connection, as a network failure between "published" and
// "answered" would.
func answerDropper(t *testing.T, target string) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() {
		l.Close()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			client, err := l.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer client.Close()
				server, err := net.Dial("tcp", target)
				if err != nil {
					return
				}
				defer server.Close()
				go func() { _, _ = io.Copy(server, client) }()
				// the first byte of the answer: the event is published
				_, _ = server.Read(make([]byte, 1))
			}()
		}
	}()
	return "http://" + l.Addr().String()
}

// The answer from node A is lost after A published; the client retries on
// node B with the same key and gets A's event id, replayed; subscribers
// on both nodes get the event once. A different message with the key on
// B is refused with 422.
func TestIdempotencyRetryOnOtherNode(t *testing.T) {
	r := startRedis(t)
	a := startNode(t, r.url(), "")
	b := startNode(t, r.url(), "")
	onA := subscribe(t, a.base, "orders", "")
	onB := subscribe(t, b.base, "orders", "")
	time.Sleep(200 * time.Millisecond) // both nodes follow Redis
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 5 * time.Second}
	viaProxy := answerDropper(t, strings.TrimPrefix(a.base, "http://"))
	if status, _, _, err := publishKeyed(client, viaProxy, "order-7", "orders", "paid"); err == nil {
		t.Fatalf("through the dropping proxy: %d, want no answer", status)
	}
	status, id, replayed, err := publishKeyed(client, b.base, "order-7", "orders", "paid")
	if err != nil || status != 200 || replayed != "true" {
		t.Fatalf("retry on b: %d %q replayed=%q %v, want a replay", status, id, replayed, err)
	}
	for name, s := range map[string]*stream{"a": onA, "b": onB} {
		if ev := s.next(t, 3*time.Second); ev.ID != id || ev.Data != "paid" {
			t.Fatalf("node %s got %+v, want %s", name, ev, id)
		}
	}
	status, reason, _, err := publishKeyed(client, b.base, "order-7", "orders", "refunded")
	if err != nil || status != 422 || !strings.Contains(reason, "different message") {
		t.Fatalf("another message with the key: %d %q %v, want 422", status, reason, err)
	}
	for name, s := range map[string]*stream{"a": onA, "b": onB} {
		select {
		case ev := <-s.events:
			t.Fatalf("node %s got a second event %+v", name, ev)
		case <-time.After(300 * time.Millisecond):
		}
	}
}

// openStore opens a broker on the test's Redis outside Caddy, counting
// what it delivers.
func openStore(t *testing.T, redisURL, hub string, delivered *atomic.Int64) push.IdempotentBroker {
	t.Helper()
	br, err := Broker{URL: redisURL}.OpenBroker(push.BrokerOptions{Hub: hub, History: push.HistoryLimits{Events: 100, TTL: time.Hour},
		Deliver: func(*push.Event) { delivered.Add(1) }, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = br.Close() })
	return br.(push.IdempotentBroker)
}

// Two nodes given the same key at once publish once: the script checks
// and stores the key with the event, so the loser is a replay of the
// winner's id. The key expires with its window.
func TestIdempotencyScriptAcrossNodes(t *testing.T) {
	r := startRedis(t)
	var deliveredA, deliveredB atomic.Int64
	nodes := []push.IdempotentBroker{openStore(t, r.url(), "race", &deliveredA), openStore(t, r.url(), "race", &deliveredB)}
	time.Sleep(200 * time.Millisecond) // both follow Redis
	ctx := context.Background()
	key := push.IdempotencyKey{ID: [16]byte{1, 2, 3}, Fingerprint: [16]byte{9}, Window: 800 * time.Millisecond}
	const tries = 40
	var (
		wg        sync.WaitGroup
		mu        sync.Mutex
		published []string
		replays   = make(map[string]int)
	)
	for i := range tries {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ev := &push.Event{Message: push.Message{Topics: []string{"t"}, Data: "x"}}
			first, err := nodes[i%2].PublishOnce(ctx, ev, key)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err != nil:
				t.Error(err)
			case first == "":
				published = append(published, ev.ID)
			default:
				replays[first]++
			}
		}()
	}
	wg.Wait()
	if len(published) != 1 || replays[published[0]] != tries-1 {
		t.Fatalf("published %v, replays %v: want one event and %d replays of it", published, replays, tries-1)
	}
	waitFor(t, 3*time.Second, func() bool { return deliveredA.Load() == 1 && deliveredB.Load() == 1 })
	// a different message with the key is refused
	ev := &push.Event{Message: push.Message{Topics: []string{"t"}, Data: "y"}}
	other := key
	other.Fingerprint[0]++
	if _, err := nodes[1].PublishOnce(ctx, ev, other); !errors.Is(err, push.ErrIdempotencyConflict) {
		t.Fatalf("another message: %v, want ErrIdempotencyConflict", err)
	}
	// Redis keeps the key for the window, no longer
	rc := goredis.NewClient(&goredis.Options{Addr: "127.0.0.1:" + r.port})
	defer rc.Close()
	keys, err := rc.Keys(ctx, "push:race:key:*").Result()
	if err != nil || len(keys) != 1 {
		t.Fatalf("idempotency keys in redis: %v %v, want one", keys, err)
	}
	if ttl, err := rc.PTTL(ctx, keys[0]).Result(); err != nil || ttl <= 0 || ttl > key.Window {
		t.Fatalf("key's TTL %v %v, want at most the window %v", ttl, err, key.Window)
	}
	waitFor(t, 5*time.Second, func() bool { return rc.Exists(ctx, keys[0]).Val() == 0 })
	ev = &push.Event{Message: push.Message{Topics: []string{"t"}, Data: "x"}}
	if first, err := nodes[0].PublishOnce(ctx, ev, key); err != nil || first != "" || ev.ID == published[0] {
		t.Fatalf("after the window: %q %v, want a new event", first, err)
	}
}

func waitFor(t *testing.T, d time.Duration, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %v", d)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
