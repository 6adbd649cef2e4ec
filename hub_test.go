package push

import (
	"context"
	"strconv"
	"testing"
	"time"
)

// openHub starts a hub on the in-memory broker, outside any Caddy config.
func openHub(t testing.TB, limits HistoryLimits) *Hub {
	t.Helper()
	h := newHub("test")
	b, err := MemoryBroker{}.OpenBroker(BrokerOptions{Hub: "test", History: limits, Deliver: h.deliver})
	if err != nil {
		t.Fatal(err)
	}
	h.broker = b
	t.Cleanup(func() { _ = h.Destruct() })
	return h
}

func mustSubscribe(t testing.TB, h *Hub, lastID string, topics ...string) *Subscription {
	t.Helper()
	s, err := h.Subscribe(context.Background(), topics, lastID, TransportSSE)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

func mustPublish(t testing.TB, h *Hub, data string, topics ...string) string {
	t.Helper()
	id, err := h.Publish(context.Background(), Message{Topics: topics, Data: data})
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func datas(events []*Event) []string {
	out := make([]string, len(events))
	for i, e := range events {
		out[i] = e.Data
	}
	return out
}

func TestHubMultiTopicEventOnce(t *testing.T) {
	h := openHub(t, HistoryLimits{Events: 10})
	s := mustSubscribe(t, h, "", "a", "b", "c")
	mustPublish(t, h, "1", "a", "b", "c")
	mustPublish(t, h, "2", "b", "a", "b")
	mustPublish(t, h, "3", "z")
	if got := datas(s.Take(nil)); len(got) != 2 || got[0] != "1" || got[1] != "2" {
		t.Fatalf("got %v", got)
	}
	// replay of several topics merges by id, once each
	r := mustSubscribe(t, h, FormatID(h.broker.(*memoryStore).epoch, 0), "a", "b")
	if got := datas(r.Backlog.Events); len(got) != 2 || got[0] != "1" || got[1] != "2" {
		t.Fatalf("backlog %v", got)
	}
}

func TestHubHistoryLimits(t *testing.T) {
	h := openHub(t, HistoryLimits{Events: 3, TTL: time.Hour})
	ids := make([]string, 6)
	for i := range ids {
		ids[i] = mustPublish(t, h, strconv.Itoa(i), "t")
	}
	if s := mustSubscribe(t, h, ids[2], "t"); s.Backlog.Reset != "" || len(s.Backlog.Events) != 3 {
		t.Fatalf("from the oldest kept: %+v", s.Backlog)
	}
	if s := mustSubscribe(t, h, ids[1], "t"); s.Backlog.Reset == "" {
		t.Fatal("no reset for a trimmed id")
	}
	// an id of another topic's event does not reset a quiet topic
	other := mustPublish(t, h, "o", "other")
	if s := mustSubscribe(t, h, other, "t", "quiet"); s.Backlog.Reset != "" || len(s.Backlog.Events) != 0 {
		t.Fatalf("quiet topic: %+v", s.Backlog)
	}
	// shrinking history on reload trims at once
	h.broker.SetHistory(HistoryLimits{Events: 1})
	if s := mustSubscribe(t, h, ids[3], "t"); s.Backlog.Reset == "" {
		t.Fatal("no reset after history shrank")
	}
}

func TestHubNoHistory(t *testing.T) {
	h := openHub(t, HistoryLimits{Events: 0})
	first := mustPublish(t, h, "0", "t")
	mustPublish(t, h, "1", "t")
	if s := mustSubscribe(t, h, first, "t"); s.Backlog.Reset == "" {
		t.Fatal("history 0 replayed or silently skipped a missed event")
	}
}

// A broker that lost events ends every subscription, without counting
// them as slow: each client resumes from its own last id.
func TestHubResyncEndsSubscriptions(t *testing.T) {
	h := openHub(t, HistoryLimits{})
	a, b := mustSubscribe(t, h, "", "t"), mustSubscribe(t, h, "", "u", "t")
	h.resync()
	for _, s := range []*Subscription{a, b} {
		select {
		case <-s.Ended():
		default:
			t.Fatal("a subscription did not end")
		}
		if s.FellBehind() {
			t.Fatal("a resync counted as falling behind")
		}
	}
	if n := h.stats.of(TransportSSE).slow.Load(); n != 0 {
		t.Fatalf("slow disconnects counted %d times", n)
	}
}

// BenchmarkFanout publishes one event to 10,000 subscribers of a topic,
// and drains each subscriber as its writer would. The figure that
// matters is ns/delivery and allocs/op, which should stay ~1 (the
// event itself) however many subscribers there are.
func BenchmarkFanout(b *testing.B) {
	const subscribers = 10000
	h := openHub(b, HistoryLimits{Events: 100})
	subs := make([]*Subscription, subscribers)
	bufs := make([][]*Event, subscribers)
	for i := range subs {
		subs[i] = mustSubscribe(b, h, "", "t")
	}
	msg := Message{Topics: []string{"t"}, Data: "payload"}
	ctx := context.Background()
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if _, err := h.Publish(ctx, msg); err != nil {
			b.Fatal(err)
		}
		for i, s := range subs {
			bufs[i] = s.Take(bufs[i])
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*subscribers), "ns/delivery")
}

// BenchmarkPublish measures publishes per second into a hub with history
// and no subscribers, from parallel publishers over 100 topics.
func BenchmarkPublish(b *testing.B) {
	h := openHub(b, HistoryLimits{Events: 1000, TTL: time.Hour})
	topics := make([][]string, 100)
	for i := range topics {
		topics[i] = []string{"topic/" + strconv.Itoa(i)}
	}
	ctx := context.Background()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			i++
			if _, err := h.Publish(ctx, Message{Topics: topics[i%len(topics)], Data: "payload"}); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// history_max_bytes evicts the oldest events of the hub first, across
// topics, and a client resuming from before them gets a reset.
func TestHubHistoryMaxBytes(t *testing.T) {
	h := openHub(t, HistoryLimits{Events: 1000, MaxBytes: 10 * 6700}) // ten events of 1000 bytes
	big := string(make([]byte, 1000))
	var ids []string
	for i := range 20 {
		ids = append(ids, mustPublish(t, h, big, "t"+strconv.Itoa(i%3)))
	}
	m := h.broker.(*memoryStore)
	if m.bytes > m.limits.MaxBytes || m.live < 9 || m.live > 10 {
		t.Fatalf("history holds %d events, %d bytes", m.live, m.bytes)
	}
	if s := mustSubscribe(t, h, ids[2], "t0", "t1", "t2"); s.Backlog.Reset == "" {
		t.Fatal("no reset for an evicted id")
	}
	s := mustSubscribe(t, h, ids[12], "t0", "t1", "t2")
	if s.Backlog.Reset != "" || len(s.Backlog.Events) != 7 {
		t.Fatalf("from a retained id: %+v", s.Backlog)
	}
	// the log does not pin released events
	h.broker.SetHistory(HistoryLimits{Events: 1, MaxBytes: 1 << 20})
	if m.live != 3 || len(m.log) > 2*m.live+64 {
		t.Fatalf("after shrinking: %d live, log %d", m.live, len(m.log))
	}
}

// An old event of a quiet topic must not make the log keep every event
// a busy topic has since released.
func TestHubLogCompacts(t *testing.T) {
	h := openHub(t, HistoryLimits{Events: 2, MaxBytes: 1 << 30})
	mustPublish(t, h, "old", "quiet")
	for range 5000 {
		mustPublish(t, h, "x", "busy")
	}
	m := h.broker.(*memoryStore)
	if m.live != 3 || len(m.log) > 2*m.live+64 {
		t.Fatalf("%d live events, log of %d", m.live, len(m.log))
	}
}
