package push

import (
	"context"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"
)

const customIDSite = `
http://127.0.0.1:PORT {
	push_sse /events
	push_ws /ws
	push_publish /publish {
		anonymous
	}
}
`

// publishOK publishes a form and returns the id the route answers.
func (c *testCaddy) publishOK(form string) string {
	c.t.Helper()
	status, id := c.publish("/publish", form)
	if status != 200 {
		c.t.Fatalf("publish %q: %d %s", form, status, id)
	}
	return id
}

// openingID is the id a stream opens with, before its ": ok" comment:
// "" when it has none.
func (c *sseClient) openingID() string {
	c.t.Helper()
	id := ""
	for {
		it, ok := c.next(2 * time.Second)
		switch {
		case !ok || it.Event != nil:
			c.t.Fatal("stream did not open with a comment")
		case it.Comment == "ok":
			return id
		case it.ID != "":
			id = it.ID
		}
	}
}

// eventIDs are the ids of evs.
func eventIDs(evs []sseEvent) []string {
	out := make([]string, len(evs))
	for i, ev := range evs {
		out[i] = ev.ID
	}
	return out
}

// A publisher's id is the event's id for its clients: the publish route
// answers it, SSE sends it as id and WebSocket as "id", and a client
// resumes from it by every name of the last id, getting exactly what
// followed it.
func TestCustomIDPublishAndResume(t *testing.T) {
	c := startCaddy(t, customIDSite)
	live := subscribe(t, c.URL+"/events?topic=c", nil)
	ws := mustDialWS(t, c.URL+"/ws?topic=c", nil)
	one := c.publishOK("topic=c&id=urn:uuid:7d444840-9dc0-11d1-b245-5ffdce74fad2&data=one")
	status, two := c.post("/publish", "application/json", `{"topic":"c","id":"urn:uuid:2","data":"two"}`)
	if status != 200 {
		t.Fatalf("JSON publish: %d %s", status, two)
	}
	three := c.publishOK("topic=c&data=three")
	if one != "urn:uuid:7d444840-9dc0-11d1-b245-5ffdce74fad2" || two != "urn:uuid:2" {
		t.Fatalf("the route answered %q and %q, not the publisher's ids", one, two)
	}
	if _, _, ok := ParseID(three); !ok {
		t.Fatalf("an event without an id got %q, not a hub id", three)
	}
	want := []string{one, two, three}
	if got := eventIDs(live.events(3, 2*time.Second)); !slices.Equal(got, want) {
		t.Fatalf("SSE ids %q, want %q", got, want)
	}
	for i, id := range want {
		if f := ws.nextFrame(2 * time.Second); f.ID != id {
			t.Fatalf("WebSocket frame %d has id %q, want %q", i, f.ID, id)
		}
	}

	for name, open := range map[string]func() *sseClient{
		"Last-Event-ID": func() *sseClient { return subscribe(t, c.URL+"/events?topic=c", header("Last-Event-ID", one)) },
		"last_event_id": func() *sseClient {
			return subscribe(t, c.URL+"/events?topic=c&last_event_id="+url.QueryEscape(one), nil)
		},
		"lastEventId": func() *sseClient {
			return subscribe(t, c.URL+"/events?topic=c&lastEventId="+url.QueryEscape(one), nil)
		},
	} {
		s := open()
		// the stream opens with the id it resumes from, so that a new
		// EventSource's next reconnect resumes from there
		if id := s.openingID(); id != one {
			t.Errorf("%s: stream opened with id %q, want %q", name, id, one)
		}
		if got := eventIDs(s.events(2, 2*time.Second)); !slices.Equal(got, want[1:]) {
			t.Errorf("%s: resumed with %q, want %q", name, got, want[1:])
		}
		s.quiet(50 * time.Millisecond)
		s.Close()
	}
	ws = mustDialWS(t, c.URL+"/ws?topic=c&last_event_id="+url.QueryEscape(two), nil)
	if f := ws.nextFrame(2 * time.Second); f.ID != three {
		t.Errorf("WebSocket resumed from %q with %q, want %q", two, f.ID, three)
	}
}

// When several events in history have one id, a resume from it starts
// after the earliest of them: the later one comes again.
func TestCustomIDDuplicates(t *testing.T) {
	c := startCaddy(t, customIDSite)
	c.publishOK("topic=d&id=x&data=A")
	b := c.publishOK("topic=d&data=B")
	c.publishOK("topic=d&id=x&data=C")
	d := c.publishOK("topic=d&data=D")
	s := subscribe(t, c.URL+"/events?topic=d", header("Last-Event-ID", "x"))
	evs := s.events(3, 2*time.Second)
	if got, want := eventIDs(evs), []string{b, "x", d}; !slices.Equal(got, want) || evs[1].Data != "C" {
		t.Fatalf("resumed from x with %+v, want ids %q", evs, want)
	}
	s.quiet(50 * time.Millisecond)
}

// An id that breaks Mercure's rules, or that a client could take for one
// of the hub's, is refused with a reason, from a form and from JSON, and
// nothing is published.
func TestCustomIDRefused(t *testing.T) {
	c := startCaddy(t, customIDSite)
	watch := subscribe(t, c.URL+"/events?topic=r", nil)
	long := strings.Repeat("x", 300)
	for _, tc := range []struct{ name, id, reason string }{
		{"hash", "#a", "starts with #"},
		{"earliest", "earliest", "reserved"},
		{"C0", "a\x01b", "control or format characters"},
		{"line feed", "a\nid: b", "control or format characters"},
		{"DEL", "a\x7fb", "control or format characters"},
		{"C1", "a\u0085b", "control or format characters"},
		{"Cf", "a\u200bb", "control or format characters"},
		{"bidi", "\u202eabc", "control or format characters"},
		{"300 bytes", long, "longer than 256 bytes"},
		{"hub form", "abc-12", "has the form of the hub's own ids"},
	} {
		status, body := c.publish("/publish", "topic=r&data=x&id="+url.QueryEscape(tc.id))
		if status != 400 || !strings.Contains(body, tc.reason) || strings.Count(body, "\n") != 1 {
			t.Errorf("form %s: %d %q, want 400 with a one-line reason containing %q", tc.name, status, body, tc.reason)
		}
		status, body = c.post("/publish", "application/json", `{"topic":"r","data":"x","id":`+jsonString(tc.id)+`}`)
		if status != 400 || !strings.Contains(body, tc.reason) {
			t.Errorf("JSON %s: %d %q, want 400 with %q", tc.name, status, body, tc.reason)
		}
	}
	if status, body := c.publish("/publish", "topic=r&id=a&id=b"); status != 400 || !strings.Contains(body, "more than once") {
		t.Errorf("id twice: %d %q", status, body)
	}
	watch.quiet(100 * time.Millisecond)
}

func jsonString(s string) string { return string(appendJSONString(nil, s)) }

// Besides a hub id and a publisher's id, a client may resume from
// "earliest" (everything the history holds, however much it dropped) and
// from "#<hub id>" (Mercure's spelling); an id nobody published gets
// push.reset, as any other unknown id does.
func TestResumeEarliestHashAndUnknown(t *testing.T) {
	c := startCaddy(t, `
{
	push {
		hub default {
			history 3
		}
	}
}`+customIDSite)
	ids := make([]string, 5)
	for i := range ids {
		ids[i] = c.publishOK("topic=e&data=" + string(rune('a'+i)))
	}
	retained := ids[2:] // history 3
	for name, open := range map[string]func() *sseClient{
		"header": func() *sseClient { return subscribe(t, c.URL+"/events?topic=e", header("Last-Event-ID", "earliest")) },
		"query":  func() *sseClient { return subscribe(t, c.URL+"/events?topic=e&last_event_id=earliest", nil) },
	} {
		s := open()
		if got := eventIDs(s.events(3, 2*time.Second)); !slices.Equal(got, retained) {
			t.Errorf("earliest by %s: %q, want %q (no reset)", name, got, retained)
		}
		s.quiet(50 * time.Millisecond)
		s.Close()
	}

	s := subscribe(t, c.URL+"/events?topic=e", header("Last-Event-ID", "#"+ids[3]))
	if evs := s.events(1, 2*time.Second); evs[0].ID != ids[4] {
		t.Errorf("from #%s: %+v, want %s", ids[3], evs, ids[4])
	}
	s.quiet(50 * time.Millisecond)

	for _, unknown := range []string{"urn:uuid:never-published", "#", "##" + ids[3]} {
		s = subscribe(t, c.URL+"/events?topic=e", header("Last-Event-ID", unknown))
		if ev := s.nextEvent(2 * time.Second); ev.Type != "push.reset" || ev.Data != "unknown event id" || ev.ID != ids[4] {
			t.Errorf("from %q: %+v, want push.reset from the head %s", unknown, ev, ids[4])
		}
		s.quiet(50 * time.Millisecond)
	}

	// a topic with no history yet: nothing, then live; the stream starts
	// at the head, so a reconnect before any event resumes from there
	// (losing nothing) rather than asking for the whole history again
	s = subscribe(t, c.URL+"/events?topic=none", header("Last-Event-ID", "earliest"))
	if id := s.openingID(); id != ids[4] {
		t.Errorf("earliest opened with id %q, want the head %s", id, ids[4])
	}
	id := c.publishOK("topic=none&data=live")
	if ev := s.nextEvent(2 * time.Second); ev.ID != id {
		t.Fatalf("after earliest on an empty topic got %+v, want live %s", ev, id)
	}
}

// A repeat of a publish with its Idempotency-Key and id answers the id
// again; the same key with another id is another message.
func TestCustomIDIdempotent(t *testing.T) {
	c := startCaddy(t, customIDSite)
	post := func(body string) (int, string, string) {
		req, _ := http.NewRequest(http.MethodPost, c.URL+"/publish", strings.NewReader(body))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.Header.Set("Idempotency-Key", "k-1")
		resp, err := testClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b), resp.Header.Get("Idempotent-Replayed")
	}
	for i, replayed := range []string{"", "true"} {
		status, id, got := post("topic=i&id=urn:x:1&data=once")
		if status != 200 || id != "urn:x:1" || got != replayed {
			t.Fatalf("publish %d: %d %q, Idempotent-Replayed %q; want 200 urn:x:1, %q", i+1, status, id, got, replayed)
		}
	}
	if status, body, _ := post("topic=i&id=urn:x:2&data=once"); status != 422 {
		t.Fatalf("same key, another id: %d %q, want 422", status, body)
	}
}

// The memory broker's index of ids follows its history: an event that
// leaves it by count, by bytes or by age leaves the index (even when a
// later event of the id goes first, from another topic), and its bytes
// count while it is there.
func TestMemoryCustomIDIndex(t *testing.T) {
	ctx := context.Background()
	h := openHub(t, HistoryLimits{Events: 1})
	m := h.broker.(*memoryStore)
	publish := func(id string, topics ...string) string {
		t.Helper()
		p, err := h.PublishAs(ctx, Message{Topics: topics, Data: "x", CustomID: id}, "")
		if err != nil {
			t.Fatal(err)
		}
		return p.ID
	}
	resolve := func(id string) string {
		t.Helper()
		hubID, ok, err := m.ResolveID(ctx, id)
		if err != nil || ok != (hubID != "") {
			t.Fatalf("ResolveID(%q): %q, %v, %v", id, hubID, ok, err)
		}
		return hubID
	}
	publish("x", "t1")
	first := resolve("x")
	publish("x", "t2")
	if got := resolve("x"); got != first {
		t.Fatalf("x resolves to %q, want the earliest, %q", got, first)
	}
	publish("", "t2") // the later x leaves t2, the earlier stays in t1
	if got := resolve("x"); got != first || len(m.ids["x"]) != 1 {
		t.Fatalf("x resolves to %q (index %v), want %q", got, m.ids["x"], first)
	}
	publish("", "t1")
	if got := resolve("x"); got != "" || len(m.ids) != 0 {
		t.Fatalf("x resolves to %q (index %v) with none of its events in history", got, m.ids)
	}

	// by bytes: an entry counts while it is there
	before := m.bytes
	publish(strings.Repeat("y", 200), "b")
	withID := m.bytes - before
	before = m.bytes
	publish("", "c")
	if without := m.bytes - before; withID < without+idEntrySize+3*200 {
		t.Fatalf("an event with a 200-byte id counts %d bytes, one without %d", withID, without)
	}
	h.broker.SetHistory(HistoryLimits{Events: 100, MaxBytes: 1})
	if len(m.ids) != 0 || m.live != 0 || m.bytes != 0 {
		t.Fatalf("after eviction: index %v, %d events, %d bytes", m.ids, m.live, m.bytes)
	}

	// by age
	h.broker.SetHistory(HistoryLimits{Events: 100, TTL: 20 * time.Millisecond})
	publish("z", "old")
	time.Sleep(30 * time.Millisecond)
	h.broker.SetHistory(HistoryLimits{Events: 100, TTL: 20 * time.Millisecond})
	if len(m.ids) != 0 {
		t.Fatalf("after expiry: index %v", m.ids)
	}
}

func TestValidateCustomID(t *testing.T) {
	for _, tc := range []struct {
		id string
		ok bool
	}{
		{"urn:uuid:0f8fad5b-d9cb-469f-a165-70867728950e", true},
		{"7", true},
		{"abc-", true},
		{"a-b-c", true},
		{"ABC-12", true},   // the hub's epochs are lowercase
		{"abc-012", true},  // and its numbers have no leading zero
		{"Earliest", true}, // only "earliest" itself is Mercure's
		{"a\u2028b", true}, // a line separator is no SSE line break
		{"été 🙂", true},
		{strings.Repeat("é", 128), true},
		{strings.Repeat("a", 200) + "-12", true}, // too long to be the hub's
		{"", false},
		{"#", false},
		{"#abc-12", false},
		{"earliest", false},
		{"abc-12", false},
		{"0-0", false},
		{"a\x00b", false},
		{"a\tb", false},
		{"a\rb", false},
		{"\u0080", false},
		{"soft\u00adhyphen", false}, // Cf
		{"\ufeffbom", false},        // Cf
		{"\xff", false},
		{strings.Repeat("a", 257), false},
		{strings.Repeat("é", 128) + "a", false},
	} {
		if err := ValidateCustomID(tc.id); (err == nil) != tc.ok {
			t.Errorf("ValidateCustomID(%q) = %v, want ok %v", tc.id, err, tc.ok)
		} else if err != nil && strings.ContainsAny(err.Error(), "\r\n") {
			t.Errorf("ValidateCustomID(%q): a reason of more than one line: %q", tc.id, err)
		}
	}
}
