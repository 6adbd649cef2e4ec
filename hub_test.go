package push

import (
	"context"
	"slices"
	"strconv"
	"sync"
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

// listSink is a Sink that records what it is given.
type listSink struct {
	mu     sync.Mutex
	events []*Event
}

func (l *listSink) Deliver(ev *Event) bool {
	l.mu.Lock()
	l.events = append(l.events, ev)
	l.mu.Unlock()
	return true
}

func (l *listSink) Ended() {}

func (l *listSink) take() []*Event {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := l.events
	l.events = nil
	return out
}

// A topic added to an open subscription under a storm of publishes to
// it, to the subscription's topic and to both: the client gets every
// event of the old topic after its connect and of the new one after the
// id it resumes from, each once, each topic's in id order, whether its
// events are taken from the queue (a connection on goroutines) or
// written through a sink (the engine's), and with one lane or several.
func TestHubAddTopicNoGapNoDuplicate(t *testing.T) {
	for _, tc := range []struct {
		name  string
		lanes int
		sink  bool
	}{
		{"queue", 1, false}, {"queue, lanes", 4, false}, {"sink", 1, true}, {"sink, lanes", 4, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := openHub(t, HistoryLimits{Events: 100000})
			h.startLanes(tc.lanes)
			ctx := context.Background()
			type pub struct {
				seq    uint64
				topics []string
			}
			var mu sync.Mutex
			var published []pub
			publish := func(topics ...string) {
				id, err := h.Publish(ctx, Message{Topics: topics, Data: "x"})
				if err != nil {
					t.Error(err)
					return
				}
				_, seq, _ := ParseID(id)
				mu.Lock()
				published = append(published, pub{seq, topics})
				mu.Unlock()
			}
			// history before the connect, some of it to resume b from
			for range 50 {
				publish("a")
				publish("b")
				publish("a", "b")
			}
			mu.Lock()
			resume := published[60].seq // a b event: "b" resumes after it
			mu.Unlock()
			resumeID := FormatID(h.broker.(*memoryStore).epoch, resume)
			for range 20 {
				publish("b")
				publish("a", "b")
			}
			s, err := h.subscribe(ctx, []string{"a"}, nil, "", Member{Connection: "c", Transport: TransportWS}, nil, false)
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			connected := s.skipThrough

			var got []*Event
			sink := new(listSink)
			if tc.sink {
				s.Attach(sink)
			}
			drain := func() {
				if tc.sink {
					got = append(got, sink.take()...)
				} else {
					got = append(got, s.Take(nil)...)
				}
			}
			var storm sync.WaitGroup
			for _, topics := range [][]string{{"a"}, {"b"}, {"a", "b"}, {"b", "a"}, {"c"}} {
				storm.Add(1)
				go func() {
					defer storm.Done()
					for i := range 500 {
						publish(topics...)
						if i%10 == 0 { // a storm a reader keeps up with
							time.Sleep(100 * time.Microsecond)
						}
					}
				}()
			}
			stormDone := make(chan struct{})
			go func() { storm.Wait(); close(stormDone) }()
			// take as a writer does, before and after the topic is added
			drainWhile := func(d time.Duration) {
				for end := time.After(d); ; time.Sleep(100 * time.Microsecond) {
					drain()
					select {
					case <-end:
						return
					case <-stormDone:
						return
					default:
					}
				}
			}
			drainWhile(5 * time.Millisecond)
			if tc.sink {
				s.hold() // as the engine's transport does
				drain()  // what it wrote before
			}
			earlier, b, err := h.addTopic(ctx, s, "b", resumeID, false)
			if err != nil {
				t.Fatal(err)
			}
			got = append(got, earlier...)
			added := len(got)
			got = append(got, b.Events...)
			if tc.sink {
				s.Attach(sink)
			}
			drainWhile(time.Minute)

			want := make(map[uint64]bool)
			for _, p := range published {
				if slices.Contains(p.topics, "a") && p.seq > connected || slices.Contains(p.topics, "b") && p.seq > resume {
					want[p.seq] = true
				}
			}
			for deadline := time.Now().Add(5 * time.Second); len(got) < len(want) && time.Now().Before(deadline); time.Sleep(time.Millisecond) {
				drain()
			}
			drain()
			seen := make(map[uint64]bool)
			last := map[string]uint64{}
			for i, ev := range got {
				if seen[ev.Seq] {
					t.Fatalf("event %d (%v) twice", ev.Seq, ev.Topics)
				}
				seen[ev.Seq] = true
				if !want[ev.Seq] {
					t.Fatalf("event %d (%v) not wanted", ev.Seq, ev.Topics)
				}
				// in order, a's events after the connect, and b's from its
				// backlog on (older than events that came through a before)
				for _, topic := range ev.Topics {
					if topic == "a" && ev.Seq <= connected || topic == "b" && i < added {
						continue
					}
					if ev.Seq < last[topic] {
						t.Fatalf("event %d of %s after %d", ev.Seq, topic, last[topic])
					}
					last[topic] = ev.Seq
				}
			}
			if s.isEnded() {
				t.Fatal("the subscription was cut off")
			}
			if len(seen) != len(want) {
				t.Fatalf("got %d events, want %d", len(seen), len(want))
			}
			if len(b.Events) < 40 {
				t.Fatalf("the backlog had %d events", len(b.Events))
			}
		})
	}
}

// A removed topic's events stop at once, queued ones included; the
// subscription's other topics go on, and the topic may be added again.
func TestHubRemoveTopic(t *testing.T) {
	h := openHub(t, HistoryLimits{Events: 10})
	ctx := context.Background()
	s, err := h.subscribe(ctx, []string{"a", "b"}, nil, "", Member{Connection: "c", Transport: TransportWS}, nil, false)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	mustPublish(t, h, "b1", "b")
	h.removeTopic(s, "b")
	mustPublish(t, h, "b2", "b")
	mustPublish(t, h, "ab", "a", "b")
	if got := datas(s.Take(nil)); !slices.Equal(got, []string{"ab"}) || !slices.Equal(s.Topics, []string{"a"}) {
		t.Fatalf("after removing b: %v, topics %v", got, s.Topics)
	}
	if n := len(h.localTopics("b")); n != 0 {
		t.Fatalf("b still indexed: %v", h.localTopics(""))
	}
	_, b, err := h.addTopic(ctx, s, "b", EarliestID, false)
	if err != nil {
		t.Fatal(err)
	}
	// from the start of history, but not "ab", which came through a
	if got := datas(b.Events); !slices.Equal(got, []string{"b1", "b2"}) {
		t.Fatalf("backlog %v", got)
	}
	h.removeTopic(s, "a")
	h.removeTopic(s, "b")
	s.Close()
	h.removeTopic(s, "a")
	if _, _, err := h.addTopic(ctx, s, "a", "", false); err == nil || len(h.localTopics("")) != 0 {
		t.Fatalf("added to a closed subscription: %v, %v", err, h.localTopics(""))
	}
}

// A hub that has delivered nothing yet does not wait for its backlog's
// events to come live (a Redis node follows from its start, and may
// never deliver them); those that come late are dropped, since the
// backlog had them: each event once.
func TestHubAddTopicBeforeFirstDelivery(t *testing.T) {
	h := newHub("test")
	var mu sync.Mutex
	var held []*Event
	release := false
	b, err := MemoryBroker{}.OpenBroker(BrokerOptions{Hub: "test", History: HistoryLimits{Events: 10}, Deliver: func(ev *Event) {
		mu.Lock()
		defer mu.Unlock()
		if !release {
			held = append(held, ev) // not yet
			return
		}
		h.deliver(ev)
	}})
	if err != nil {
		t.Fatal(err)
	}
	h.broker = b
	t.Cleanup(func() { _ = h.Destruct() })
	ctx := context.Background()
	s, err := h.subscribe(ctx, []string{"a"}, nil, "", Member{Connection: "c", Transport: TransportWS}, nil, false)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	mustPublish(t, h, "ab", "a", "b")
	mustPublish(t, h, "b", "b")
	done := make(chan struct{})
	var backlog Backlog
	go func() {
		defer close(done)
		if _, backlog, err = h.addTopic(ctx, s, "b", EarliestID, false); err != nil {
			t.Error(err)
		}
	}()
	select {
	case <-done:
	case <-time.After(time.Second):
		t.Fatal("addTopic waits for events its hub may never deliver")
	}
	mu.Lock()
	release = true
	for _, ev := range held {
		h.deliver(ev) // late
	}
	mu.Unlock()
	mustPublish(t, h, "after", "b", "a")
	got := append(datas(backlog.Events), datas(s.Take(nil))...)
	if !slices.Equal(got, []string{"ab", "b", "after"}) {
		t.Fatalf("got %v", got)
	}
}
