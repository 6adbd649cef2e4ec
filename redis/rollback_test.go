package redis

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/caddy-push/push"
)

// redisCLI is a plain client of the test's Redis, for commands the hub
// never sends (SAVE, SHUTDOWN).
func (r *redisServer) client(t *testing.T) *goredis.Client {
	c := goredis.NewClient(&goredis.Options{Addr: "127.0.0.1:" + r.port, MaxRetries: -1})
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// shutdownNoSave stops Redis without writing its data, as a crash after
// the last snapshot would leave it.
func (r *redisServer) shutdownNoSave(t *testing.T) {
	t.Helper()
	_ = r.client(t).ShutdownNoSave(context.Background()).Err()
	if err := r.cmd.Wait(); err != nil && !strings.Contains(err.Error(), "exit") {
		t.Fatal(err)
	}
	r.cmd = nil
}

// TestRedisRollback is the report: Redis keeps snapshots only,
// restarts from one taken before the newest events, and the hub must not
// hand those events' ids out again, nor drop new events as old ones, nor
// let a client holding a lost id resume as if nothing happened.
func TestRedisRollback(t *testing.T) {
	r := startRedisWith(t, "--save", "", "--appendonly", "no")
	a := startNode(t, r.url(), "")
	publish := func(data string) string {
		t.Helper()
		status, id := a.publish("r", data)
		if status != 200 {
			t.Fatalf("publish %s: %d %s", data, status, id)
		}
		return id
	}
	var ids []string
	for i := range 3 {
		ids = append(ids, publish(strconv.Itoa(i)))
	}
	if err := r.client(t).Save(context.Background()).Err(); err != nil {
		t.Fatal(err)
	}
	watcher := subscribe(t, a.base, "r", "")
	time.Sleep(200 * time.Millisecond) // the node follows Redis
	for i := 3; i < 8; i++ {
		ids = append(ids, publish(strconv.Itoa(i)))
		if ev := watcher.next(t, 3*time.Second); ev.ID != ids[i] {
			t.Fatalf("watcher got %+v, want %s", ev, ids[i])
		}
	}
	r.shutdownNoSave(t)
	r.start()

	// the watcher saw events Redis no longer has: its stream ends so that
	// it resumes, and resuming from them it is told of the gap
	select {
	case <-watcher.ended:
	case <-time.After(15 * time.Second):
		t.Fatal("the watcher's stream did not end after Redis rolled back")
	}
	resumed := subscribe(t, a.base, "r", ids[7])
	if ev := resumed.next(t, 3*time.Second); ev.Type != "push.reset" {
		t.Fatalf("resumed from the newest lost id with %+v, want push.reset", ev)
	}
	fromLost := subscribe(t, a.base, "r", ids[4])
	if ev := fromLost.next(t, 3*time.Second); ev.Type != "push.reset" {
		t.Fatalf("resumed from a lost id with %+v, want push.reset", ev)
	}

	seen := map[string]bool{}
	for _, id := range ids {
		seen[id] = true
	}
	var after []string
	for i := 8; i < 11; i++ {
		id := publish(strconv.Itoa(i))
		if seen[id] {
			t.Fatalf("publish after the rollback answered %s, an id handed out before", id)
		}
		seen[id] = true
		after = append(after, id)
	}
	for _, s := range []*stream{resumed, fromLost} {
		for i, want := range after {
			if ev := s.next(t, 3*time.Second); ev.ID != want || ev.Data != strconv.Itoa(8+i) {
				t.Fatalf("after the reset: %+v, want %s", ev, want)
			}
		}
	}

	// ids Redis kept still resume without a gap, across the new epoch
	kept := subscribe(t, a.base, "r", ids[1])
	if ev := kept.next(t, 3*time.Second); ev.ID != ids[2] || ev.Data != "2" {
		t.Fatalf("resumed from a kept id with %+v, want %s", ev, ids[2])
	}
	for i, want := range after {
		if ev := kept.next(t, 3*time.Second); ev.ID != want || ev.Data != strconv.Itoa(8+i) {
			t.Fatalf("resumed from a kept id: %+v, want %s", ev, want)
		}
	}
}

// A restart that lost nothing (every write persisted) starts a new epoch
// too, since the hub cannot tell it from a rollback by the data alone;
// but the old epoch carries on in the new one: live streams go on, and a
// resume from any earlier id replays without push.reset.
func TestRestartKeepsTheTimeline(t *testing.T) {
	r := startRedis(t)
	hub := loadHub(t, r.url())
	ctx := context.Background()
	first, err := hub.Publish(ctx, push.Message{Topics: []string{"k"}, Data: "0"})
	if err != nil {
		t.Fatal(err)
	}
	r.kill()
	r.start()
	var second string
	deadline := time.Now().Add(10 * time.Second)
	for second, err = hub.Publish(ctx, push.Message{Topics: []string{"k"}, Data: "1"}); err != nil; second, err = hub.Publish(ctx, push.Message{Topics: []string{"k"}, Data: "1"}) {
		if time.Now().After(deadline) {
			t.Fatal(err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	e1, s1, _ := push.ParseID(first)
	e2, s2, _ := push.ParseID(second)
	if e1 == e2 || s2 != s1+1 {
		t.Fatalf("ids %s then %s: want a new epoch and the next seq", first, second)
	}
	sub, err := hub.Subscribe(ctx, []string{"k"}, first, push.TransportSSE)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	if sub.Backlog.Reset != "" || len(sub.Backlog.Events) != 1 || sub.Backlog.Events[0].ID != second {
		t.Fatalf("resume across the restart: reset %q, %d events", sub.Backlog.Reset, len(sub.Backlog.Events))
	}
}

// Topic streams and their trim marks expire history_ttl after the topic's
// last event, so a topic published once does not stay in Redis; a client
// resuming from before them is still told of the gap, and one resuming
// from after every event of the hub is not.
func TestTopicStreamsExpire(t *testing.T) {
	r := startRedis(t)
	a := startNode(t, r.url(), "history 1\n\t\t\thistory_ttl 1s")
	var ids []string
	for i := range 2 {
		status, id := a.publish("once", strconv.Itoa(i))
		if status != 200 {
			t.Fatalf("publish: %d %s", status, id)
		}
		ids = append(ids, id)
	}
	c := r.client(t)
	ctx := context.Background()
	for _, k := range []string{"push:default:t:once", "push:default:tr:once"} {
		if ttl, err := c.PTTL(ctx, k).Result(); err != nil || ttl <= 0 || ttl > time.Second {
			t.Fatalf("%s expires in %v (%v), want within history_ttl", k, ttl, err)
		}
	}
	time.Sleep(1200 * time.Millisecond)
	if n, err := c.Exists(ctx, "push:default:t:once", "push:default:tr:once").Result(); err != nil || n != 0 {
		t.Fatalf("%d of the topic's keys are left after history_ttl (%v)", n, err)
	}
	if ev := subscribe(t, a.base, "once", ids[0]).next(t, 3*time.Second); ev.Type != "push.reset" {
		t.Fatalf("resumed from before the expired events with %+v, want push.reset", ev)
	}
	// nothing after the newest id: nothing to miss, whatever expired
	s := subscribe(t, a.base, "once", ids[1])
	status, id := a.publish("once", "fresh")
	if status != 200 {
		t.Fatalf("publish: %d %s", status, id)
	}
	if ev := s.next(t, 3*time.Second); ev.ID != id {
		t.Fatalf("resumed from the newest id with %+v, want %s", ev, id)
	}
}

// A publish whose answer comes later than the client waits is answered
// 503 and never sent again: go-redis would resend a command after a read
// timeout, and the script, which Redis runs once it gets to it, would
// store the event twice.
func TestSlowRedisPublishesOnce(t *testing.T) {
	r := startRedisWith(t, "--save", "", "--appendonly", "no", "--enable-debug-command", "local")
	hub := loadHub(t, r.url())
	ctx := context.Background()
	if _, err := hub.Publish(ctx, push.Message{Topics: []string{"warm"}, Data: "x"}); err != nil {
		t.Fatal(err)
	}
	slept := make(chan error, 1)
	go func() { slept <- r.client(t).Do(ctx, "debug", "sleep", "2.5").Err() }()
	time.Sleep(100 * time.Millisecond) // Redis is asleep
	_, err := hub.Publish(ctx, push.Message{Topics: []string{"slow"}, Data: "once"})
	if err == nil || !strings.Contains(err.Error(), "unavailable") {
		t.Fatalf("a publish Redis answered too late: %v, want unavailable (503)", err)
	}
	if err := <-slept; err != nil {
		t.Fatal(err)
	}
	// Redis runs the late script once it is awake, which on a busy
	// machine may take a while: wait for it, then make sure it ran once
	c := r.client(t)
	var n int64
	for deadline := time.Now().Add(5 * time.Second); n == 0 && time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		n, _ = c.XLen(ctx, "push:default:t:slow").Result()
	}
	time.Sleep(200 * time.Millisecond)
	if n, err = c.XLen(ctx, "push:default:t:slow").Result(); err != nil || n != 1 {
		t.Fatalf("the topic holds %d events (%v), want the one (stored once, late)", n, err)
	}
}
