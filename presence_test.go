package push

import (
	"cmp"
	"context"
	"encoding/json"
	"net/http"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/golang-jwt/jwt/v5"
)

func TestCaddyfilePresence(t *testing.T) {
	for _, tc := range []struct {
		name, input string
		want        Endpoint
		err         string
	}{
		{name: "presence", input: "presence", want: Endpoint{Presence: true}},
		{name: "presence_limit", input: "presence\n\tpresence_limit 50", want: Endpoint{Presence: true, PresenceLimit: 50}},
		{name: "presence with a pattern", input: "presence on", want: Endpoint{Presence: true, PresenceTopics: []string{"on"}}},
		{name: "presence with patterns", input: "presence room/* user/*/inbox", want: Endpoint{Presence: true, PresenceTopics: []string{"room/*", "user/*/inbox"}}},
		{name: "presence_limit without value", input: "presence_limit", err: "wrong argument count or unexpected line ending after 'presence_limit'"},
		{name: "presence_limit not a number", input: "presence_limit many", err: "invalid presence_limit 'many'"},
		{name: "presence_limit negative", input: "presence_limit -1", err: "invalid presence_limit '-1'"},
		{name: "presence twice", input: "presence\n\tpresence", err: "option 'presence' given more than once"},
	} {
		for _, directive := range []string{"push_sse", "push_ws"} {
			t.Run(directive+" "+tc.name, func(t *testing.T) {
				input := directive + " {\n\t" + tc.input + "\n}"
				var got Endpoint
				var err error
				if directive == "push_sse" {
					var h SSEHandler
					err = h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(input))
					got = h.Endpoint
				} else {
					var h WSHandler
					err = h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(input))
					got = h.Endpoint
				}
				if checkErr(t, input, err, tc.err) && !reflect.DeepEqual(got, tc.want) {
					t.Errorf("endpoint:\n got %+v\nwant %+v", got, tc.want)
				}
			})
		}
	}
	for handler, want := range map[string]string{
		`"presence_limit":-3`:                        "presence_limit must not be negative",
		`"presence_topics":["room/*"]`:               "presence_topics needs presence",
		`"presence":true,"presence_topics":["a\nb"]`: `presence pattern: topic "a\nb" has control characters`,
	} {
		cfg := `{"apps":{"http":{"servers":{"s":{"listen":["127.0.0.1:0"],"routes":[{"handle":[{"handler":"push_sse",` + handler + `}]}]}}}}}`
		if err := caddyValidate([]byte(cfg)); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s in JSON: %v, want %q", handler, err, want)
		}
	}
}

var presenceSite = `
http://127.0.0.1:PORT {
	basic_auth /auth/* {
		alice ` + bcryptHash("a-pass") + `
		bob ` + bcryptHash("b-pass") + `
	}
	push_sse /auth/events {
		topics room
		presence
	}
	push_ws /auth/ws {
		topics room
		presence
	}
	push_sse /jwt/events {
		topics room
		presence
		jwt_key ` + testSecret + `
	}
	push_ws /jwt/ws {
		topics room
		presence
		jwt_key ` + testSecret + `
	}
	push_sse /limited {
		topics room
		presence
		presence_limit 4
	}
	push_ws /text {
		topics room
		presence
		format text
	}
	push_sse /quiet {
		topics room
	}
	push_publish /publish {
		anonymous
	}
}`

// snapshotOf decodes a push.presence event's data into user names (or
// "-" for a connection without one), in order; nil when it has only the
// count.
func snapshotOf(t testing.TB, data string) (users []string, count int) {
	t.Helper()
	var s struct {
		Topic   string
		Count   int
		Members []struct{ Connection, User string }
	}
	if err := json.Unmarshal([]byte(data), &s); err != nil || s.Topic != "room" {
		t.Fatalf("push.presence data %q: %v", data, err)
	}
	for _, m := range s.Members {
		if m.Connection == "" {
			t.Fatalf("member without a connection id in %s", data)
		}
		users = append(users, cmp.Or(m.User, "-"))
	}
	return users, s.Count
}

// firstSSEEvent returns a stream's first event, checking that nothing
// but the opening's id came before it.
func firstSSEEvent(t testing.TB, s *sseClient) sseEvent {
	t.Helper()
	ids := 0
	for {
		it, ok := s.next(2 * time.Second)
		if !ok {
			t.Fatal("stream ended")
		}
		if it.ID != "" {
			ids++
		}
		if it.Event != nil {
			if ids > 1 {
				t.Fatalf("push.presence came after an event id: %+v", it.Event)
			}
			return *it.Event
		}
	}
}

// A connection first gets who is on each of its topics (itself included,
// oldest first), then push.join and push.leave as they come; the same
// over SSE and WebSocket, with users from basic_auth and from JWTs.
func TestPresenceSnapshot(t *testing.T) {
	c := startCaddy(t, presenceSite)
	bearer := func(sub string) http.Header {
		return http.Header{"Authorization": {"Bearer " + hs256(t, jwt.MapClaims{"sub": sub})}}
	}
	check := func(who string, ev sseEvent, want ...string) {
		t.Helper()
		users, count := snapshotOf(t, ev.Data)
		if ev.Type != "push.presence" || !reflect.DeepEqual(users, want) || count != len(want) {
			t.Fatalf("%s's first event: %+v, want the members %v", who, ev, want)
		}
	}
	alice := subscribe(t, c.URL+"/auth/events", basicAuthHeader("alice", "a-pass"))
	check("alice", firstSSEEvent(t, alice), "alice")
	if ev := alice.nextEvent(2 * time.Second); ev.Type != "push.join" || !strings.Contains(ev.Data, `"user":"alice"`) {
		t.Fatalf("alice's own join: %+v", ev)
	}

	bob := mustDialWS(t, c.URL+"/auth/ws", basicAuthHeader("bob", "b-pass"))
	raw := bob.next(2 * time.Second)
	var frame map[string]string
	if err := json.Unmarshal(raw, &frame); err != nil {
		t.Fatal(err)
	}
	if _, hasID := frame["id"]; hasID || frame["topic"] != "room" {
		t.Fatalf("bob's first frame %s: want a topic and no id", raw)
	}
	check("bob", sseEvent{Type: frame["event"], Data: frame["data"]}, "alice", "bob")
	if ev := alice.nextEvent(2 * time.Second); ev.Type != "push.join" || !strings.Contains(ev.Data, `"user":"bob"`) {
		t.Fatalf("alice saw %+v, want bob's join", ev)
	}

	carol := subscribe(t, c.URL+"/jwt/events", bearer("carol"))
	check("carol", firstSSEEvent(t, carol), "alice", "bob", "carol")
	dave := mustDialWS(t, c.URL+"/jwt/ws", bearer("dave"))
	f := dave.nextFrame(2 * time.Second)
	check("dave", sseEvent{Type: f.Event, Data: f.Data}, "alice", "bob", "carol", "dave")
	anon := subscribe(t, c.URL+"/jwt/events", nil)
	check("an anonymous client", firstSSEEvent(t, anon), "alice", "bob", "carol", "dave", "-")

	// over presence_limit: the count, no list
	limited := subscribe(t, c.URL+"/limited", nil)
	ev := firstSSEEvent(t, limited)
	if users, count := snapshotOf(t, ev.Data); ev.Type != "push.presence" || users != nil || count != 6 || strings.Contains(ev.Data, "members") {
		t.Fatalf("over the limit: %+v", ev)
	}
	// text format: the data alone
	text := mustDialWS(t, c.URL+"/text", nil)
	if users, count := snapshotOf(t, string(text.next(2*time.Second))); count != 7 || len(users) != 7 {
		t.Fatalf("text format snapshot: %v %d", users, count)
	}
	// without presence: no snapshot, and no join
	quiet := subscribe(t, c.URL+"/quiet", nil)
	_, id := c.publish("/publish", "topic=room&data=hi")
	if ev := quiet.nextEvent(2 * time.Second); ev.ID != id {
		t.Fatalf("a client without presence got %+v first", ev)
	}

	// diffs: bob leaves, alice hears it, and a newcomer no longer sees bob
	for _, j := range []string{"carol", "dave", "-", "-", "-", "hi"} {
		ev := alice.nextEvent(2 * time.Second)
		if j == "hi" && ev.Data == "hi" {
			continue
		}
		if ev.Type != "push.join" {
			t.Fatalf("alice got %+v, want the join of %s", ev, j)
		}
	}
	bob.conn.Close()
	if ev := alice.nextEvent(2 * time.Second); ev.Type != "push.leave" || !strings.Contains(ev.Data, `"user":"bob"`) {
		t.Fatalf("alice saw %+v, want bob's leave", ev)
	}
	late := subscribe(t, c.URL+"/auth/events", basicAuthHeader("alice", "a-pass"))
	check("alice's second tab", firstSSEEvent(t, late), "alice", "carol", "dave", "-", "-", "-", "alice")
}

const churnSite = `
{
	push {
		hub default {
			history 5
		}
	}
}
http://127.0.0.1:PORT {
	push_sse /room {
		topics room
		presence
	}
	push_ws /ws {
		topics room
		presence
	}
	push_publish /publish {
		anonymous
	}
}`

// push.join and push.leave are live only: a loop of short connects no
// longer pushes a topic's events out of its history (a resumer gets them,
// not push.reset), and the notices carry no id, so they never move a
// client's resume point, over SSE and WebSocket.
func TestPresenceEventsAreLiveOnly(t *testing.T) {
	c := startCaddy(t, churnSite)
	watch := subscribe(t, c.URL+"/room", nil)
	if ev := firstSSEEvent(t, watch); ev.Type != "push.presence" {
		t.Fatalf("first event %+v", ev)
	}
	if ev := watch.nextEvent(2 * time.Second); ev.Type != "push.join" {
		t.Fatalf("got %+v, want its own join", ev)
	}
	ws := mustDialWS(t, c.URL+"/ws", nil)
	ws.next(2 * time.Second) // push.presence
	ws.next(2 * time.Second) // its own join
	if ev := watch.nextEvent(2 * time.Second); ev.Type != "push.join" {
		t.Fatalf("got %+v, want the WebSocket's join", ev)
	}
	_, first := c.publish("/publish", "topic=room&data=first")
	_, second := c.publish("/publish", "topic=room&data=second")
	for _, id := range []string{first, second} {
		if ev := watch.nextEvent(2 * time.Second); ev.ID != id {
			t.Fatalf("got %+v, want %s", ev, id)
		}
		if f := ws.nextFrame(2 * time.Second); f.ID != id {
			t.Fatalf("ws got %+v, want %s", f, id)
		}
	}

	const churn = 10 // twice as many notices as history keeps
	for range churn {
		s := subscribe(t, c.URL+"/room", nil)
		firstSSEEvent(t, s)
		s.Close()
	}
	joins := 0
	for range 2 * churn {
		ev := watch.nextEvent(2 * time.Second)
		if ev.Type != "push.join" && ev.Type != "push.leave" || ev.ID != second {
			t.Fatalf("got %+v, want a presence notice that leaves the last id at %s", ev, second)
		}
		if ev.Type == "push.join" {
			joins++
		}
		raw := ws.next(2 * time.Second)
		var f map[string]string
		if err := json.Unmarshal(raw, &f); err != nil || f["event"] != ev.Type && !strings.HasPrefix(f["event"], "push.") {
			t.Fatalf("ws frame %s: %v", raw, err)
		}
		if _, hasID := f["id"]; hasID || f["topic"] != "room" {
			t.Fatalf("ws presence frame %s: want a topic and no id", raw)
		}
	}
	if joins != churn {
		t.Fatalf("%d joins, want %d", joins, churn)
	}

	// history kept the events: a client resuming from first gets second,
	// after its snapshot, and no push.reset nor any stored notice
	resumed := subscribe(t, c.URL+"/room", header("Last-Event-ID", first))
	if ev := firstSSEEvent(t, resumed); ev.Type != "push.presence" {
		t.Fatalf("resumed stream began with %+v", ev)
	}
	if ev := resumed.nextEvent(2 * time.Second); ev.ID != second || ev.Data != "second" {
		t.Fatalf("resumed stream got %+v, want %s", ev, second)
	}
	ws2 := mustDialWSSetup(t, c.URL+"/ws?lastEventId="+first, nil)
	ws2.next(2 * time.Second) // push.presence
	if f := ws2.nextFrame(2 * time.Second); f.ID != second {
		t.Fatalf("resumed WebSocket got %+v, want %s", f, second)
	}
}

// A subscription following several of a member's topics hears its join
// once, as any event; none is kept for replay.
func TestPresenceLiveEventOncePerSubscription(t *testing.T) {
	h := openHub(t, HistoryLimits{Events: 100})
	head := mustPublish(t, h, "before", "a")
	s := mustSubscribe(t, h, "", "a", "b")
	m, err := h.subscribe(context.Background(), []string{"a", "b"}, nil, "", Member{Connection: "c1", Transport: TransportSSE, Since: time.Now()}, nil, true)
	if err != nil {
		t.Fatal(err)
	}
	m.Close()
	id := mustPublish(t, h, "after", "a", "b")
	var got []*Event
	for deadline := time.After(2 * time.Second); len(got) < 3; {
		select {
		case <-s.Ready():
			got = append(got, s.Take(nil)...)
		case <-deadline:
			t.Fatalf("got %v, want 3 events", got)
		}
	}
	if len(got) != 3 || got[0].Type != "push.join" || got[1].Type != "push.leave" || got[2].ID != id {
		t.Fatalf("got %v", got)
	}
	for _, ev := range got[:2] {
		if ev.ID != "" || len(ev.SSE()) == 0 || strings.Contains(string(ev.SSE()), "id:") {
			t.Fatalf("presence notice %q carries an id", ev.SSE())
		}
	}
	b, err := h.broker.Replay(context.Background(), []string{"a", "b"}, head)
	if err != nil || len(b.Events) != 1 || b.Events[0].ID != id {
		t.Fatalf("replay after %s: %v %v, want only %s", head, b.Events, err, id)
	}
}

var presenceTopicsSite = `
http://127.0.0.1:PORT {
	@members path /events /ws /all
	basic_auth @members {
		alice ` + bcryptHash("a-pass") + `
		bob ` + bcryptHash("b-pass") + `
	}
	push_sse /events {
		topics lobby room/{query.room}
		presence room/*
	}
	push_ws /ws {
		topics lobby room/{query.room}
		presence room/*
	}
	push_sse /all {
		topics lobby room/{query.room}
		presence
	}
	push_sse /public {
		topics lobby
	}
}`

// presence <pattern...> announces a member, and lists it, only on the
// topics the patterns match: the followers of a public topic the member
// also follows learn nothing of it. Bare presence still covers every topic.
func TestPresenceOnListedTopicsOnly(t *testing.T) {
	c := startCaddy(t, presenceTopicsSite)
	spy := subscribe(t, c.URL+"/public", nil)
	snapshot := func(data string) (topic string, users []string) {
		t.Helper()
		var s struct {
			Topic   string
			Members []struct{ User string }
		}
		if err := json.Unmarshal([]byte(data), &s); err != nil {
			t.Fatalf("push.presence data %q: %v", data, err)
		}
		for _, m := range s.Members {
			users = append(users, m.User)
		}
		return s.Topic, users
	}

	alice := subscribe(t, c.URL+"/events?room=1", basicAuthHeader("alice", "a-pass"))
	if ev := firstSSEEvent(t, alice); ev.Type != "push.presence" {
		t.Fatalf("alice's first event: %+v", ev)
	} else if topic, users := snapshot(ev.Data); topic != "room/1" || !reflect.DeepEqual(users, []string{"alice"}) {
		t.Fatalf("alice's snapshot: %s %v, want room/1's only", topic, users)
	}
	if ev := alice.nextEvent(2 * time.Second); ev.Type != "push.join" || !strings.Contains(ev.Data, `"alice"`) {
		t.Fatalf("alice's own join: %+v", ev)
	}

	bob := mustDialWS(t, c.URL+"/ws?room=1", basicAuthHeader("bob", "b-pass"))
	if f := bob.nextFrame(2 * time.Second); f.Event != "push.presence" {
		t.Fatalf("bob's first frame: %+v", f)
	} else if topic, users := snapshot(f.Data); topic != "room/1" || !reflect.DeepEqual(users, []string{"alice", "bob"}) {
		t.Fatalf("bob's snapshot: %s %v", topic, users)
	}
	if f := bob.nextFrame(2 * time.Second); f.Event != "push.join" || f.Topic != "room/1" {
		t.Fatalf("bob's own join: %+v, want it on room/1", f)
	}
	if ev := alice.nextEvent(2 * time.Second); ev.Type != "push.join" || !strings.Contains(ev.Data, `"bob"`) {
		t.Fatalf("alice got %+v, want bob's join", ev)
	}
	spy.quiet(200 * time.Millisecond)

	// bare presence: every topic, lobby included; its lobby snapshot
	// lists only those announced on lobby
	all := subscribe(t, c.URL+"/all?room=1", basicAuthHeader("alice", "a-pass"))
	want := map[string][]string{"lobby": {"alice"}, "room/1": {"alice", "bob", "alice"}}
	for range 2 {
		ev := firstSSEEvent(t, all)
		topic, users := snapshot(ev.Data)
		if ev.Type != "push.presence" || !reflect.DeepEqual(users, want[topic]) {
			t.Fatalf("bare presence snapshot: %s %v, want %v", topic, users, want[topic])
		}
		delete(want, topic)
	}
	if ev := spy.nextEvent(2 * time.Second); ev.Type != "push.join" || !strings.Contains(ev.Data, `"alice"`) {
		t.Fatalf("the lobby got %+v, want the join of bare presence", ev)
	}

	bob.conn.Close()
	if ev := alice.nextEvent(2 * time.Second); ev.Type != "push.join" {
		t.Fatalf("alice got %+v, want the /all join", ev)
	}
	if ev := alice.nextEvent(2 * time.Second); ev.Type != "push.leave" || !strings.Contains(ev.Data, `"bob"`) {
		t.Fatalf("alice got %+v, want bob's leave", ev)
	}
	spy.quiet(200 * time.Millisecond)
}
