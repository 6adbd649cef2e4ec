package redis

import (
	"context"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/caddy-push/push"
)

// A hub's broker closes promptly (a reload that drops the hub waits on
// it), after delivering what was published.
func TestClose(t *testing.T) {
	r := startRedis(t)
	var delivered atomic.Int64
	br, err := Broker{URL: r.url()}.OpenBroker(push.BrokerOptions{Hub: "zz", History: push.HistoryLimits{Events: 10, TTL: time.Hour}, Deliver: func(*push.Event) { delivered.Add(1) }, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	for range 3 {
		if err := br.Publish(context.Background(), &push.Event{Message: push.Message{Topics: []string{"t"}, Data: "x"}}); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(3 * time.Second)
	for delivered.Load() < 3 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := delivered.Load(); n != 3 {
		t.Fatalf("delivered %d of 3", n)
	}
	done := make(chan error, 1)
	go func() { done <- br.Close() }()
	select {
	case <-done:
	case <-time.After(3 * time.Second):
		t.Fatal("Close did not return")
	}
}

// A node that comes back after the hub-wide stream has been trimmed past
// its cursor cannot catch up in order: it ends its local streams (so each
// client resumes on its own) rather than leave a silent gap.
func TestCatchUpBeyondTheStream(t *testing.T) {
	r := startRedis(t)
	var resyncs atomic.Int64
	br, err := Broker{URL: r.url()}.OpenBroker(push.BrokerOptions{Hub: "gap", History: push.HistoryLimits{Events: 10},
		Deliver: func(*push.Event) {}, Resync: func() { resyncs.Add(1) }, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer br.Close()
	s := br.(*store)
	ctx := context.Background()
	for range 20 {
		if err := br.Publish(ctx, &push.Event{Message: push.Message{Topics: []string{"t"}, Data: "x"}}); err != nil {
			t.Fatal(err)
		}
	}
	epoch, head, err := s.head(ctx)
	if err != nil {
		t.Fatal(err)
	}
	cur := &cursor{epoch: epoch, seq: 15}
	if err := s.catchUp(ctx, cur, head); err != nil || cur.seq != head || resyncs.Load() != 0 {
		t.Fatalf("catching up within the stream: %v, cursor %d of %d, %d resyncs", err, cur.seq, head, resyncs.Load())
	}
	if err := s.client.XTrimMaxLen(ctx, s.key("all"), 5).Err(); err != nil {
		t.Fatal(err)
	}
	cur.seq = 2
	if err := s.catchUp(ctx, cur, head); err != nil || cur.seq != head || resyncs.Load() != 1 {
		t.Fatalf("catching up beyond the stream: %v, cursor %d of %d, %d resyncs", err, cur.seq, head, resyncs.Load())
	}
}

// An event stored right after the broker opens, before its listener has
// subscribed, is delivered all the same: the node follows the hub from its
// head as it opened, and catches up on what came before it subscribed (a
// subscription made in that moment would otherwise miss it for good).
func TestNoEventLostAsTheListenerStarts(t *testing.T) {
	r := startRedis(t)
	for i := range 20 {
		got := make(chan string, 10)
		br, err := Broker{URL: r.url()}.OpenBroker(push.BrokerOptions{Hub: "start", History: push.HistoryLimits{Events: 10},
			Deliver: func(ev *push.Event) { got <- ev.Data }, Logger: zap.NewNop()})
		if err != nil {
			t.Fatal(err)
		}
		want := strconv.Itoa(i)
		if err := br.Publish(context.Background(), &push.Event{Message: push.Message{Topics: []string{"t"}, Data: want}}); err != nil {
			t.Fatal(err)
		}
		select {
		case d := <-got:
			if d != want {
				t.Fatalf("run %d: delivered %q, want %q", i, d, want)
			}
		case <-time.After(3 * time.Second):
			t.Fatalf("run %d: the event stored as the listener started was never delivered", i)
		}
		br.Close()
	}
}
