package push

import (
	"context"
	"slices"
	"strconv"
	"testing"
	"time"
)

const (
	bookPattern = "https://example.com/books/:id"
	book1       = "https://example.com/books/1"
	book2       = "https://example.com/books/2"
	user7       = "https://example.com/users/7"
)

func mustSelector(t testing.TB, kind mercureSelectorKind, raw string) *mercureSelector {
	t.Helper()
	s, err := newMercureSelector(kind, raw, "")
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func urlPattern(t testing.TB, raw string) *mercureSelector {
	return mustSelector(t, mercureSelectorURLPattern, raw)
}

func legacy(t testing.TB, raw string) *mercureSelector {
	return mustSelector(t, mercureSelectorLegacy, raw)
}

// subscribePatterns subscribes to topics and patterns, on grant.
func subscribePatterns(t testing.TB, h *Hub, lastID string, grant *Grant, topics []string, patterns ...*mercureSelector) *Subscription {
	t.Helper()
	who := Member{Connection: connectionID(), Transport: TransportSSE, Since: time.Now()}
	s, err := h.subscribe(context.Background(), topics, patterns, lastID, who, grant, false)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

func publishPrivate(t testing.TB, h *Hub, data string, topics ...string) string {
	t.Helper()
	id, err := h.Publish(context.Background(), Message{Topics: topics, Data: data, Private: true})
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func wantDatas(t *testing.T, what string, events []*Event, want ...string) {
	t.Helper()
	if got := datas(events); !slices.Equal(got, want) {
		t.Errorf("%s got %q, want %q", what, got, want)
	}
}

// Pattern subscriptions get the events of the topics they match, live,
// in order, and each once: through an exact topic and a pattern, two
// patterns, or two of the event's topics.
func TestPatternSubscriptionLive(t *testing.T) {
	h := openHub(t, HistoryLimits{Events: 10})
	url := subscribePatterns(t, h, "", nil, nil, urlPattern(t, bookPattern))
	all := subscribePatterns(t, h, "", nil, nil, legacy(t, "*"))
	template := subscribePatterns(t, h, "", nil, nil, legacy(t, "https://example.com/users/{id}"))
	both := subscribePatterns(t, h, "", nil, []string{book1}, urlPattern(t, bookPattern))
	two := subscribePatterns(t, h, "", nil, nil, urlPattern(t, bookPattern), legacy(t, "https://example.com/books/{id}"))
	none := subscribePatterns(t, h, "", nil, nil, urlPattern(t, "https://example.com/authors/:id"))
	exact := mustSubscribe(t, h, "", book1)

	mustPublish(t, h, "1", book1)
	mustPublish(t, h, "2", user7)
	mustPublish(t, h, "3", book1, book2)
	mustPublish(t, h, "4", "https://example.com/other")
	mustPublish(t, h, "5", "https://example.com/books/1/reviews")

	wantDatas(t, "url pattern", url.Take(nil), "1", "3")
	wantDatas(t, "*", all.Take(nil), "1", "2", "3", "4", "5")
	wantDatas(t, "URI template", template.Take(nil), "2")
	wantDatas(t, "topic and pattern", both.Take(nil), "1", "3")
	wantDatas(t, "two patterns", two.Take(nil), "1", "3")
	wantDatas(t, "non-matching pattern", none.Take(nil))
	wantDatas(t, "exact topic", exact.Take(nil), "1", "3")

	// live events (push.join) follow the same rules
	who := Member{Connection: connectionID(), Transport: TransportSSE, Since: time.Now()}
	joiner, err := h.subscribe(context.Background(), []string{book1, book2}, nil, "", who, nil, true)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(joiner.Close)
	for name, s := range map[string]*Subscription{"url pattern": url, "topic and pattern": both, "two patterns": two, "*": all} {
		if got := s.Take(nil); len(got) != 1 || got[0].Type != "push.join" {
			t.Errorf("%s got %v, want one push.join", name, got)
		}
	}
	if got := template.Take(nil); len(got) != 0 {
		t.Errorf("URI template got %v", got)
	}
}

// A private event reaches a pattern subscription only when its Mercure
// token's subscribe selectors match one of the event's topics, live and
// replayed; the union rule does not look at the subscription's patterns.
func TestPatternSubscriptionPrivate(t *testing.T) {
	h := openHub(t, HistoryLimits{Events: 10})
	grant := func(doc string) *Grant {
		return &Grant{mercure: mercureParse(t, doc, mercureClaimsOptions{})}
	}
	books := grant(`{"mercure": {"subscribe": ["https://example.com/books/{id}"]}}`)
	users := grant(`{"mercure": {"subscribe": ["https://example.com/users/{id}"]}}`)
	nothing := grant(`{"mercure": {"subscribe": []}}`)
	star := legacy(t, "*")
	reader := subscribePatterns(t, h, "", books, nil, star)
	other := subscribePatterns(t, h, "", users, nil, star)
	denied := subscribePatterns(t, h, "", nothing, nil, star)
	anonymous := subscribePatterns(t, h, "", nil, nil, star)
	// a push token's grant keeps its own rule
	pushGrant := subscribePatterns(t, h, "", &Grant{Subscribe: []string{book1}}, nil, urlPattern(t, bookPattern))

	publishPrivate(t, h, "p-book", book1)
	publishPrivate(t, h, "p-user", user7)
	mustPublish(t, h, "public", book2)
	publishPrivate(t, h, "p-both", book2, user7)

	wantDatas(t, "books reader", reader.Take(nil), "p-book", "public", "p-both")
	wantDatas(t, "users reader", other.Take(nil), "p-user", "public", "p-both")
	wantDatas(t, "token without subscribe", denied.Take(nil), "public")
	wantDatas(t, "anonymous", anonymous.Take(nil), "public")
	wantDatas(t, "push grant", pushGrant.Take(nil), "p-book", "public")

	from := FormatID(h.broker.(*memoryStore).epoch, 0)
	late := subscribePatterns(t, h, from, users, nil, star)
	wantDatas(t, "users reader's backlog", late.Backlog.Events, "p-user", "public", "p-both")
	if late.skipThrough != 4 {
		t.Fatalf("backlog covers up to %d, want 4", late.skipThrough)
	}
}

// A pattern subscription resuming from an id replays the matching events
// after it, in order, each once, then goes on live without a duplicate;
// from "earliest", every matching event kept.
func TestPatternSubscriptionReplay(t *testing.T) {
	h := openHub(t, HistoryLimits{Events: 10})
	first := mustPublish(t, h, "1", book1)
	mustPublish(t, h, "2", user7)
	mustPublish(t, h, "3", book1, book2)
	mustPublish(t, h, "4", "https://example.com/other")

	s := subscribePatterns(t, h, first, nil, []string{"https://example.com/other"}, urlPattern(t, bookPattern))
	if s.Backlog.Reset != "" {
		t.Fatalf("reset: %s", s.Backlog.Reset)
	}
	wantDatas(t, "backlog", s.Backlog.Events, "3", "4")
	mustPublish(t, h, "5", book2)
	wantDatas(t, "live after the backlog", s.Take(nil), "5")

	e := subscribePatterns(t, h, EarliestID, nil, nil, urlPattern(t, bookPattern))
	wantDatas(t, "from earliest", e.Backlog.Events, "1", "3", "5")
	if fresh := subscribePatterns(t, h, "", nil, nil, urlPattern(t, bookPattern)); len(fresh.Backlog.Events) != 0 || fresh.Backlog.HeadSeq != 5 {
		t.Fatalf("without an id: %+v", fresh.Backlog)
	}
	if s := subscribePatterns(t, h, "nope", nil, nil, urlPattern(t, bookPattern)); s.Backlog.Reset != "unknown event id" {
		t.Fatalf("an unknown id: %+v", s.Backlog)
	}
}

// A pattern subscription resuming from before events history dropped is
// reset: of a matching topic, or of any topic the broker has forgotten
// (it cannot tell whether it matched). From "earliest" it never is.
func TestPatternSubscriptionReplayReset(t *testing.T) {
	h := openHub(t, HistoryLimits{Events: 2})
	first := mustPublish(t, h, "1", book1)
	mustPublish(t, h, "2", book1)
	mustPublish(t, h, "3", book1)
	pattern := urlPattern(t, bookPattern)
	zero := FormatID(h.broker.(*memoryStore).epoch, 0)
	if s := subscribePatterns(t, h, zero, nil, nil, pattern); s.Backlog.Reset != "events after this id are no longer in history" {
		t.Fatalf("resumed from before a dropped event: %+v", s.Backlog)
	}
	s := subscribePatterns(t, h, first, nil, nil, pattern)
	wantDatas(t, "from the oldest kept", s.Backlog.Events, "2", "3")
	// dropped events of another topic do not matter, while it is known
	for range 4 {
		mustPublish(t, h, "u", user7)
	}
	if s := subscribePatterns(t, h, first, nil, nil, pattern); s.Backlog.Reset != "" {
		t.Fatalf("reset for another topic's history: %+v", s.Backlog)
	}

	h.broker.SetHistory(HistoryLimits{Events: 0}) // every topic forgotten
	last := mustPublish(t, h, "gone", "https://example.com/elsewhere")
	if s := subscribePatterns(t, h, first, nil, nil, pattern); s.Backlog.Reset == "" {
		t.Fatal("no reset once topics were forgotten")
	}
	if s := subscribePatterns(t, h, last, nil, nil, pattern); s.Backlog.Reset != "" {
		t.Fatalf("reset from the newest id: %+v", s.Backlog)
	}
	if s := subscribePatterns(t, h, EarliestID, nil, nil, pattern); s.Backlog.Reset != "" || len(s.Backlog.Events) != 0 {
		t.Fatalf("from earliest with nothing kept: %+v", s.Backlog)
	}
}

// bareBroker is a broker seen only through Broker: one that cannot match.
type bareBroker struct{ Broker }

// A broker that cannot replay by pattern resets a resuming pattern
// subscription, and still serves it live.
func TestPatternSubscriptionNoMatchReplayer(t *testing.T) {
	h := openHub(t, HistoryLimits{Events: 10})
	first := mustPublish(t, h, "1", book1)
	mustPublish(t, h, "2", book1)
	h.broker = bareBroker{h.broker}
	s := subscribePatterns(t, h, first, nil, nil, urlPattern(t, bookPattern))
	if s.Backlog.Reset != "this hub's broker cannot replay pattern subscriptions" || s.Backlog.HeadSeq != 2 {
		t.Fatalf("backlog %+v", s.Backlog)
	}
	if s := subscribePatterns(t, h, "", nil, nil, urlPattern(t, bookPattern)); s.Backlog.Reset != "" {
		t.Fatalf("without an id: %+v", s.Backlog)
	}
	mustPublish(t, h, "3", book2)
	wantDatas(t, "live", s.Take(nil), "3")
	if r := mustSubscribe(t, h, first, book1); r.Backlog.Reset != "" || len(r.Backlog.Events) != 1 {
		t.Fatalf("an exact subscription's replay: %+v", r.Backlog)
	}
}

// Subscriptions that share a pattern share its group; closing them leaves
// no group behind.
func TestPatternSubscriptionUnsubscribe(t *testing.T) {
	h := openHub(t, HistoryLimits{Events: 10})
	a := subscribePatterns(t, h, "", nil, []string{book1}, urlPattern(t, bookPattern), legacy(t, "*"))
	b := subscribePatterns(t, h, "", nil, nil, urlPattern(t, bookPattern))
	groups := func() (n int) {
		h.mu.RLock()
		defer h.mu.RUnlock()
		for _, l := range h.lanes {
			n += len(l.patterns)
		}
		return n
	}
	if n := groups(); n != 2 {
		t.Fatalf("%d pattern groups, want 2", n)
	}
	a.Close()
	if n := groups(); n != 1 {
		t.Fatalf("%d pattern groups after one left, want 1", n)
	}
	mustPublish(t, h, "1", book1)
	wantDatas(t, "the one left", b.Take(nil), "1")
	b.Close()
	h.mu.RLock()
	defer h.mu.RUnlock()
	for _, l := range h.lanes {
		if len(l.patterns) != 0 || len(l.topics) != 0 {
			t.Fatalf("left behind: %d groups, %d topics", len(l.patterns), len(l.topics))
		}
	}
}

// Commands reach pattern subscriptions: a resync and a disconnect end
// them, a pause of a topic ends those whose patterns match it.
func TestPatternSubscriptionCommands(t *testing.T) {
	h := openHub(t, HistoryLimits{Events: 10})
	books := subscribePatterns(t, h, "", nil, nil, urlPattern(t, bookPattern))
	users := subscribePatterns(t, h, "", nil, nil, legacy(t, "https://example.com/users/{id}"))
	if n := h.pauseLocal(PauseRequest{Topics: []string{book1}, For: time.Second}); n != 1 || !books.isEnded() || users.isEnded() {
		t.Fatalf("pause of %s ended %d subscriptions", book1, n)
	}
	if n := h.disconnectLocal(DisconnectRequest{Connection: users.Member().Connection}); n != 1 {
		t.Fatalf("disconnect ended %d subscriptions", n)
	}
	last := subscribePatterns(t, h, "", nil, nil, legacy(t, "*"))
	if j := h.joined(); len(j) != 3 {
		t.Fatalf("joined lists %d connections, want 3", len(j))
	}
	h.resync()
	if !last.isEnded() {
		t.Fatal("resync left a pattern subscription")
	}
}

// With lanes and an audience of more than spreadAt, every subscription
// still gets each event once, in order.
func TestPatternSubscriptionLanes(t *testing.T) {
	h := openHub(t, HistoryLimits{Events: 10})
	h.startLanes(4)
	var subs []*Subscription
	for i := range 3 * spreadAt / 2 {
		var s *Subscription
		switch i % 3 {
		case 0:
			s = subscribePatterns(t, h, "", nil, nil, urlPattern(t, bookPattern))
		case 1:
			s = subscribePatterns(t, h, "", nil, []string{book1, book2}, urlPattern(t, bookPattern), legacy(t, "https://example.com/books/{id}"))
		default:
			s = subscribePatterns(t, h, "", nil, []string{book1}, legacy(t, "*"))
		}
		subs = append(subs, s)
	}
	var want []string
	for i := range 20 {
		d := strconv.Itoa(i)
		switch i % 3 {
		case 0:
			mustPublish(t, h, d, book1)
		case 1:
			mustPublish(t, h, d, book1, book2)
		default:
			mustPublish(t, h, d, book2, "https://example.com/books/3", book1)
		}
		want = append(want, d)
	}
	for i, s := range subs {
		var got []*Event
		for deadline := time.Now().Add(5 * time.Second); len(got) < len(want) && time.Now().Before(deadline); {
			select {
			case <-s.Ready():
				got = append(got, s.Take(nil)...)
			case <-time.After(100 * time.Millisecond):
			}
		}
		// the lane writes in order: anything extra came before the last
		if !slices.Equal(datas(got), want) {
			t.Fatalf("subscription %d (lane %d) got %v", i, s.lane, datas(got))
		}
	}
}

// BenchmarkFanOutPatterns publishes one event to 10,000 subscribers and
// drains each as its writer would: all on the exact topic; 10% of them on
// URL patterns instead, spread over 10 patterns; and 10% each on a
// pattern of its own (1,000 distinct ones, the worst case for grouping).
// Compare ns/op.
func BenchmarkFanOutPatterns(b *testing.B) {
	const subscribers = 10000
	for _, bc := range []struct {
		name     string
		patterns int // distinct patterns among the 10% (0: none)
	}{{"exact", 0}, {"patterns10pct", 10}, {"distinct10pct", subscribers / 10}} {
		b.Run(bc.name, func(b *testing.B) {
			h := openHub(b, HistoryLimits{Events: 100})
			subs := make([]*Subscription, subscribers)
			bufs := make([][]*Event, subscribers)
			for i := range subs {
				if bc.patterns > 0 && i%10 == 0 {
					// distinct names, the same match: /:p0/:id, /:p1/:id...
					p := urlPattern(b, "https://example.com/:p"+strconv.Itoa(i/10%bc.patterns)+"/:id")
					subs[i] = subscribePatterns(b, h, "", nil, nil, p)
				} else {
					subs[i] = mustSubscribe(b, h, "", book1)
				}
			}
			msg := Message{Topics: []string{book1}, Data: "payload"}
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
			if n := len(bufs[0]) + len(bufs[1]); n != 2 {
				b.Fatalf("the last event reached %d of 2 subscribers", n)
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*subscribers), "ns/delivery")
		})
	}
}
