package redis

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/caddy-push/push"
)

// loadHub runs the push app in this process on the test's Redis and
// returns its default hub.
func loadHub(t *testing.T, redisURL string) *push.Hub {
	t.Helper()
	cfg := fmt.Sprintf(`{"admin":{"disabled":true,"config":{"persist":false}},
		"apps":{"push":{"hubs":{"default":{"history":1000,"broker":{"broker":"redis","url":%q}}}}}}`, redisURL)
	if err := caddy.Load([]byte(cfg), true); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = caddy.Stop() })
	hub, ok := push.LookupHub("default")
	if !ok {
		t.Fatal("no default hub")
	}
	return hub
}

// A subscription to two topics resumes while both are published to: the
// backlog (read from two streams, one after the other) and the live
// events together hold every event after the resume id exactly once.
// An event stored between the reads must come live, not in the backlog,
// or the live events before it would be skipped as already replayed.
func TestReplayRacingPublishes(t *testing.T) {
	r := startRedis(t)
	hub := loadHub(t, r.url())
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var (
		mu  sync.Mutex
		ids []string
	)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ctx.Err() == nil; i++ {
			topic := []string{"a", "b"}[i%2]
			id, err := hub.Publish(ctx, push.Message{Topics: []string{topic}, Data: "x"})
			if err != nil {
				if ctx.Err() == nil {
					t.Error(err)
				}
				return
			}
			mu.Lock()
			ids = append(ids, id)
			mu.Unlock()
		}
	}()
	defer wg.Wait()
	defer cancel()
	published := func() int {
		mu.Lock()
		defer mu.Unlock()
		return len(ids)
	}
	for published() < 50 {
		time.Sleep(10 * time.Millisecond)
	}
	for round := range 40 {
		mu.Lock()
		from := ids[len(ids)-20]
		mu.Unlock()
		_, seq, _ := push.ParseID(from)
		sub, err := hub.Subscribe(ctx, []string{"a", "b"}, from, push.TransportSSE)
		if err != nil {
			t.Fatal(err)
		}
		got := append([]*push.Event(nil), sub.Backlog.Events...)
		var batch []*push.Event
		deadline := time.After(5 * time.Second)
		for len(got) < 60 {
			select {
			case <-sub.Ready():
				batch = sub.Take(batch)
				got = append(got, batch...)
			case <-deadline:
				t.Fatalf("round %d: %d events within 5s", round, len(got))
			}
		}
		sub.Close()
		for i, ev := range got {
			if ev.Seq != seq+uint64(i)+1 {
				t.Fatalf("round %d: event %d has seq %d, want %d (backlog of %d): a gap or a duplicate",
					round, i, ev.Seq, seq+uint64(i)+1, len(sub.Backlog.Events))
			}
		}
	}
}
