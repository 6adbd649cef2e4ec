package push

import (
	"context"
	"encoding/json"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/golang-jwt/jwt/v5"
)

const wsSubscribeSite = `{
	push {
		hub default {
			history 100000
		}
	}
}
http://127.0.0.1:PORT {
	push_ws /ws
	push_ws /few {
		max_topics 2
	}
	push_ws /text {
		format text
	}
	push_ws /fixed {
		topics news
	}
	push_ws /chat {
		topics chat/{query.room}
		publish chat/{query.room}
		subscribe chat/*
		presence
	}
	push_ws /rooms {
		presence chat/*
	}
	push_ws /private {
		private secret/*
		jwt_key {env.PUSH_TEST_JWT}
	}
	push_publish /publish {
		anonymous
	}
}`

func startSubscribeCaddy(t *testing.T) (*testCaddy, *Hub) {
	t.Helper()
	t.Setenv("PUSH_TEST_JWT", testSecret)
	c := startCaddy(t, wsSubscribeSite)
	hub, ok := LookupHub("default")
	if !ok {
		t.Fatal("no hub default")
	}
	return c, hub
}

// wsReply is any server frame of the json format: an event, an answer
// to a command, or an error.
type wsReply struct {
	ID           string `json:"id"`
	Topic        string `json:"topic"`
	Event        string `json:"event"`
	Data         string `json:"data"`
	Error        string `json:"error"`
	Subscribed   string `json:"subscribed"`
	Unsubscribed string `json:"unsubscribed"`
}

func (c *wsClient) nextReply(timeout time.Duration) wsReply {
	c.t.Helper()
	var r wsReply
	if err := json.Unmarshal(c.next(timeout), &r); err != nil {
		c.t.Fatal(err)
	}
	return r
}

// expect reads frames until one that want accepts, and returns it with
// the frames before it.
func (c *wsClient) expect(want func(wsReply) bool) (wsReply, []wsReply) {
	c.t.Helper()
	var before []wsReply
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); {
		r := c.nextReply(time.Until(deadline))
		if want(r) {
			return r, before
		}
		before = append(before, r)
	}
	c.t.Fatalf("no such frame within 5s; got %+v", before)
	return wsReply{}, nil
}

// command sends a command and returns its answer (or error frame), with
// the frames that came before it.
func (c *wsClient) command(cmd string) (wsReply, []wsReply) {
	c.t.Helper()
	c.send(cmd)
	return c.expect(func(r wsReply) bool { return r.Subscribed != "" || r.Unsubscribed != "" || r.Error != "" })
}

func mustPublishHub(t testing.TB, h *Hub, data string, topics ...string) string {
	t.Helper()
	id, err := h.Publish(context.Background(), Message{Topics: topics, Data: data})
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// A client adds a topic and gets its events, then takes it off and gets
// none; its first topic goes on either way.
func TestWSSubscribeAndUnsubscribe(t *testing.T) {
	c, hub := startSubscribeCaddy(t)
	ws := mustDialWS(t, c.URL+"/ws?topic=a", nil)
	if r, _ := ws.command(`{"subscribe":"b"}`); r.Subscribed != "b" {
		t.Fatalf("answer %+v", r)
	}
	id := mustPublishHub(t, hub, "1", "b")
	if r := ws.nextReply(time.Second); r.ID != id || r.Topic != "b" || r.Data != "1" {
		t.Fatalf("event of b: %+v", r)
	}
	// a topic it follows is answered at once
	if r, _ := ws.command(`{"subscribe":"a"}`); r.Subscribed != "a" {
		t.Fatalf("answer %+v", r)
	}
	if r, _ := ws.command(`{"unsubscribe":"b"}`); r.Unsubscribed != "b" {
		t.Fatalf("answer %+v", r)
	}
	mustPublishHub(t, hub, "2", "b")
	mustPublishHub(t, hub, "3", "a", "b")
	if r := ws.nextReply(time.Second); r.Data != "3" || r.Topic != "a" {
		t.Fatalf("after unsubscribing b: %+v", r)
	}
	// and every topic: the connection stays, and may come back
	if r, _ := ws.command(`{"unsubscribe":"a"}`); r.Unsubscribed != "a" {
		t.Fatalf("answer %+v", r)
	}
	mustPublishHub(t, hub, "4", "a")
	if r, _ := ws.command(` {"last_event_id":"","subscribe":"a"}`); r.Subscribed != "a" {
		t.Fatalf("answer %+v", r)
	}
	mustPublishHub(t, hub, "5", "a")
	if r := ws.nextReply(time.Second); r.Data != "5" {
		t.Fatalf("after subscribing a again: %+v", r)
	}
	if got := hub.localTopics(""); got["a"] != 1 || got["b"] != 0 {
		t.Fatalf("the hub's index: %v", got)
	}
}

// A topic added with the last id the client saw replays what it missed,
// then goes live, while events are published to it, to the connection's
// topic and to both: the client gets every event of a after its connect
// and of b after that id, each once, each topic's in id order.
func TestWSSubscribeResumeUnderPublishStorm(t *testing.T) {
	c, hub := startSubscribeCaddy(t)
	type published struct {
		id     string
		topics []string
	}
	var mu sync.Mutex
	var all []published
	publish := func(topics ...string) {
		id, err := hub.Publish(context.Background(), Message{Topics: topics, Data: "x"})
		if err != nil {
			t.Error(err)
			return
		}
		mu.Lock()
		all = append(all, published{id, topics})
		mu.Unlock()
	}
	for range 30 {
		publish("a")
		publish("b")
		publish("a", "b")
	}
	resume := all[40].id
	ws := mustDialWS(t, c.URL+"/ws?topic=a", nil)
	connected := all[len(all)-1].id

	var storm sync.WaitGroup
	for _, topics := range [][]string{{"a"}, {"b"}, {"a", "b"}, {"c"}} {
		storm.Add(1)
		go func() {
			defer storm.Done()
			for i := range 300 {
				publish(topics...)
				if i%10 == 0 {
					time.Sleep(200 * time.Microsecond)
				}
			}
		}()
	}
	time.Sleep(5 * time.Millisecond)
	ws.send(`{"subscribe":"b","lastEventId":"` + resume + `"}`)
	storm.Wait()

	seq := func(id string) uint64 { _, n, _ := ParseID(id); return n }
	want := make(map[string][]string)
	for _, p := range all {
		if slices.Contains(p.topics, "a") && seq(p.id) > seq(connected) || slices.Contains(p.topics, "b") && seq(p.id) > seq(resume) {
			want[p.id] = p.topics
		}
	}
	got := make(map[string]bool)
	var lastA, lastB uint64
	answered, sawB := false, false
	for len(got) < len(want) {
		r := ws.nextReply(5 * time.Second)
		switch {
		case r.Subscribed == "b":
			answered = true
			continue
		case r.Error != "":
			t.Fatalf("error frame %+v", r)
		}
		topics, ok := want[r.ID]
		if !ok || got[r.ID] {
			t.Fatalf("event %s (%v): wanted %v, already got %v", r.ID, topics, ok, got[r.ID])
		}
		got[r.ID] = true
		n := seq(r.ID)
		if slices.Contains(topics, "a") && n > seq(connected) {
			if n < lastA {
				t.Fatalf("event %s of a after %d", r.ID, lastA)
			}
			lastA = n
		}
		// b's events in order from its backlog on (an event of a and b
		// that came through a before is older than some of its backlog)
		sawB = sawB || !slices.Contains(topics, "a")
		if sawB && slices.Contains(topics, "b") {
			if n < lastB {
				t.Fatalf("event %s of b after %d", r.ID, lastB)
			}
			lastB = n
		}
	}
	if !answered {
		if r := ws.nextReply(time.Second); r.Subscribed != "b" {
			t.Fatalf("no answer, got %+v", r)
		}
	}
	if r, ok := ws.tryReply(200 * time.Millisecond); ok {
		t.Fatalf("more than wanted: %+v", r)
	}
}

// tryReply reads a frame if one comes within d.
func (c *wsClient) tryReply(d time.Duration) (wsReply, bool) {
	c.t.Helper()
	select {
	case f, ok := <-c.frames:
		if !ok {
			c.t.Fatalf("connection closed: %v", <-c.closed)
		}
		var r wsReply
		if err := json.Unmarshal(f, &r); err != nil {
			c.t.Fatal(err)
		}
		return r, true
	case <-time.After(d):
		return wsReply{}, false
	}
}

// A topic added from an id the hub cannot resume from gets a push.reset
// naming the topic; from earliest, all its history.
func TestWSSubscribeResetAndEarliest(t *testing.T) {
	c, hub := startSubscribeCaddy(t)
	one := mustPublishHub(t, hub, "1", "b")
	mustPublishHub(t, hub, "2", "b")
	ws := mustDialWS(t, c.URL+"/ws?topic=a", nil)
	r, before := ws.command(`{"subscribe":"b","lastEventId":"no-such-id"}`)
	if r.Subscribed != "b" || len(before) != 1 || before[0].Event != "push.reset" || before[0].Topic != "b" || before[0].ID == "" {
		t.Fatalf("answer %+v after %+v, want a push.reset of b", r, before)
	}
	ws.command(`{"unsubscribe":"b"}`)
	r, before = ws.command(`{"subscribe":"b","last_event_id":"earliest"}`)
	if r.Subscribed != "b" || len(before) != 2 || before[0].ID != one || before[1].Data != "2" {
		t.Fatalf("answer %+v after %+v, want b's history", r, before)
	}
}

// An event on a topic the connection follows and on the one it adds
// comes once: live through the first, and not again in the backlog; one
// from before the connect comes in the backlog.
func TestWSSubscribeEventOnTwoTopicsOnce(t *testing.T) {
	c, hub := startSubscribeCaddy(t)
	from := mustPublishHub(t, hub, "before", "x")
	old := mustPublishHub(t, hub, "old", "a", "b")
	ws := mustDialWS(t, c.URL+"/ws?topic=a", nil)
	both := mustPublishHub(t, hub, "both", "b", "a")
	if r := ws.nextReply(time.Second); r.ID != both || r.Topic != "a" {
		t.Fatalf("live: %+v", r)
	}
	r, before := ws.command(`{"subscribe":"b","lastEventId":"` + from + `"}`)
	if r.Subscribed != "b" || len(before) != 1 || before[0].ID != old {
		t.Fatalf("answer %+v after %+v, want the old event only", r, before)
	}
	if r, ok := ws.tryReply(200 * time.Millisecond); ok {
		t.Fatalf("more: %+v", r)
	}
}

// A topic the client may not add gets an error frame with the reason,
// and the connection goes on.
func TestWSSubscribeRefused(t *testing.T) {
	c, hub := startSubscribeCaddy(t)
	token := func(topics ...string) http.Header {
		tok := hs256(t, jwt.MapClaims{"sub": "ann", "mercure": map[string]any{"subscribe": topics}})
		return header("Authorization", "Bearer "+tok)
	}
	for _, tc := range []struct {
		name, url, topic string
		header           http.Header
		cmd, want        string
	}{
		{"fixed topics, no subscribe option", "/fixed", "news", nil, `{"subscribe":"other"}`, replyNoSubscribe},
		{"pattern not matching", "/chat?room=lobby", "chat/lobby", nil, `{"subscribe":"news"}`, `may not subscribe to topic "news"`},
		{"private topic, no token", "/private?topic=a", "a", nil, `{"subscribe":"secret/x"}`, `topic "secret/x" is private: send a token`},
		{"private topic, token without it", "/private?topic=a", "a", token("secret/y"), `{"subscribe":"secret/x"}`, `token may not subscribe to private topic "secret/x"`},
		{"beyond max_topics", "/few?topic=a&topic=b", "a", nil, `{"subscribe":"c"}`, "too many topics: 3 (the limit is 2)"},
		{"empty topic", "/ws?topic=a", "a", nil, `{"subscribe":""}`, "empty topic"},
		{"control characters", "/ws?topic=a", "a", nil, `{"subscribe":"a\nb"}`, "control characters"},
		{"not a string", "/ws?topic=a", "a", nil, `{"subscribe":1}`, replyCommand},
		{"both", "/ws?topic=a", "a", nil, `{"subscribe":"b","unsubscribe":"a"}`, replyCommand},
		{"last id on unsubscribe", "/ws?topic=a", "a", nil, `{"unsubscribe":"a","lastEventId":"1"}`, replyCommand},
		{"another key", "/ws?topic=a", "a", nil, `{"subscribe":"b","data":"x"}`, replyCommand},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ws := mustDialWS(t, c.URL+tc.url, tc.header)
			if r, _ := ws.command(tc.cmd); !strings.Contains(r.Error, tc.want) {
				t.Fatalf("got %+v, want an error with %q", r, tc.want)
			}
			// still open, and still on its topic
			id := mustPublishHub(t, hub, "after", tc.topic)
			if r, _ := ws.expect(func(r wsReply) bool { return r.ID != "" }); r.ID != id {
				t.Fatalf("after the refusal: %+v", r)
			}
		})
	}
	// what is allowed there is
	for _, tc := range []struct{ url, topic string }{
		{"/chat?room=lobby", "chat/kitchen"},
		{"/private?topic=a", "public"},
		{"/few?topic=a", "c"},
	} {
		ws := mustDialWS(t, c.URL+tc.url, token("secret/x"))
		if r, _ := ws.command(`{"subscribe":"` + tc.topic + `"}`); r.Subscribed != tc.topic {
			t.Fatalf("%s, subscribe %s: %+v", tc.url, tc.topic, r)
		}
	}
	ws := mustDialWS(t, c.URL+"/private?topic=a", token("secret/*"))
	if r, _ := ws.command(`{"subscribe":"secret/x"}`); r.Subscribed != "secret/x" {
		t.Fatalf("a private topic the token allows: %+v", r)
	}
	// fixed topics: a client may come back to those it connected with
	ws = mustDialWS(t, c.URL+"/fixed", nil)
	ws.command(`{"unsubscribe":"news"}`)
	if r, _ := ws.command(`{"subscribe":"news"}`); r.Subscribed != "news" {
		t.Fatalf("back to a connect topic: %+v", r)
	}
}

// With presence, a topic added gets its push.presence first, as at
// connect, and the others on it a push.join; one taken off a push.leave.
func TestWSSubscribePresence(t *testing.T) {
	c, hub := startSubscribeCaddy(t)
	kitchen := mustDialWS(t, c.URL+"/chat?room=kitchen", nil)
	kitchen.expect(func(r wsReply) bool { return r.Event == "push.join" }) // its own
	ann := mustDialWS(t, c.URL+"/chat?room=lobby", nil)
	ann.expect(func(r wsReply) bool { return r.Event == "push.join" })

	r, before := ann.command(`{"subscribe":"chat/kitchen"}`)
	if r.Subscribed != "chat/kitchen" || len(before) == 0 || before[0].Event != "push.presence" || before[0].Topic != "chat/kitchen" {
		t.Fatalf("answer %+v after %+v, want push.presence of chat/kitchen first", r, before)
	}
	var snap presenceSnapshot
	if err := json.Unmarshal([]byte(before[0].Data), &snap); err != nil || snap.Count != 2 || len(snap.Members) != 2 {
		t.Fatalf("snapshot %s, want two members", before[0].Data)
	}
	join, _ := kitchen.expect(func(r wsReply) bool { return r.Event != "" })
	if join.Event != "push.join" || join.Topic != "chat/kitchen" || join.ID != "" {
		t.Fatalf("kitchen got %+v, want ann's join", join)
	}
	if members, n, _, err := hub.Presence(context.Background(), "chat/kitchen", 10); err != nil || n != 2 {
		t.Fatalf("presence of chat/kitchen: %v %d %v", members, n, err)
	}
	if r, _ := ann.command(`{"unsubscribe":"chat/kitchen"}`); r.Unsubscribed != "chat/kitchen" {
		t.Fatalf("answer %+v", r)
	}
	leave, _ := kitchen.expect(func(r wsReply) bool { return r.Event != "" })
	if leave.Event != "push.leave" || leave.Data != join.Data {
		t.Fatalf("kitchen got %+v, want ann's leave", leave)
	}
	if _, n, _, _ := hub.Presence(context.Background(), "chat/kitchen", 10); n != 1 {
		t.Fatalf("presence of chat/kitchen: %d members, want 1", n)
	}

	// presence patterns: a connection announced nowhere is announced on
	// a room it adds, and only there
	bob := mustDialWS(t, c.URL+"/rooms?topic=news", nil)
	r, before = bob.command(`{"subscribe":"chat/kitchen"}`)
	if r.Subscribed != "chat/kitchen" || len(before) != 1 || before[0].Event != "push.presence" {
		t.Fatalf("answer %+v after %+v, want push.presence of chat/kitchen first", r, before)
	}
	if join, _ := kitchen.expect(func(r wsReply) bool { return r.Event != "" }); join.Event != "push.join" {
		t.Fatalf("kitchen got %+v, want bob's join", join)
	}
	listed := func(topic string) int {
		members, _, _, err := hub.members(context.Background(), topic, 10, true)
		if err != nil {
			t.Fatal(err)
		}
		return len(members)
	}
	if k, n := listed("chat/kitchen"), listed("news"); k != 2 || n != 0 {
		t.Fatalf("listed on chat/kitchen %d, on news %d; want 2 and 0", k, n)
	}
	if r, _ := bob.command(`{"subscribe":"weather"}`); r.Subscribed != "weather" || listed("weather") != 0 {
		t.Fatalf("a topic the patterns leave out: %+v, listed %d", r, listed("weather"))
	}
	bob.command(`{"unsubscribe":"chat/kitchen"}`)
	if leave, _ := kitchen.expect(func(r wsReply) bool { return r.Event != "" }); leave.Event != "push.leave" {
		t.Fatalf("kitchen got %+v, want bob's leave", leave)
	}
	subs := hub.matching([]string{"news"}) // bob's alone
	if m := subs[0].Member(); len(subs) != 1 || m.Presence || m.Announced != nil {
		t.Fatalf("announced nowhere, the member is %+v", m)
	}
}

// The demo chat's room switch on one connection: a client adds the new
// room and leaves the old, and its messages go to the new room, by
// name or as the only room it may publish to; the old one is closed to
// it until it subscribes to it again.
func TestWSSubscribeRoomSwitch(t *testing.T) {
	c, _ := startSubscribeCaddy(t)
	kitchen := mustDialWS(t, c.URL+"/chat?room=kitchen", nil)
	lobby := mustDialWS(t, c.URL+"/chat?room=lobby", nil)
	ann := mustDialWS(t, c.URL+"/chat?room=lobby", nil)
	ann.command(`{"subscribe":"chat/kitchen"}`)
	// two rooms: a message must name one
	if r, _ := ann.command(`{"event":"chat","data":"which?"}`); !strings.Contains(r.Error, "name its topic") {
		t.Fatalf("a message without a topic, two rooms: %+v", r)
	}
	ann.send(`{"topic":"chat/kitchen","event":"chat","data":"hi kitchen"}`)
	for _, ws := range []*wsClient{kitchen, ann} {
		if r, _ := ws.expect(func(r wsReply) bool { return r.Event == "chat" }); r.Data != "hi kitchen" {
			t.Fatalf("got %+v", r)
		}
	}
	ann.command(`{"unsubscribe":"chat/lobby"}`)
	ann.send(`{"event":"chat","data":"one room"}`)
	ann.send(`plain text`)
	for _, want := range []string{"one room", "plain text"} {
		if r, _ := kitchen.expect(func(r wsReply) bool { return r.Event == "chat" || r.Event == "" && r.ID != "" }); r.Data != want || r.Topic != "chat/kitchen" {
			t.Fatalf("kitchen got %+v, want %q", r, want)
		}
		if r, _ := ann.expect(func(r wsReply) bool { return r.ID != "" }); r.Data != want {
			t.Fatalf("ann got %+v, want her own %q", r, want)
		}
	}
	if r, _ := ann.command(`{"topic":"chat/lobby","data":"back?"}`); !strings.Contains(r.Error, `may not publish to topic "chat/lobby"`) {
		t.Fatalf("publish to the room left: %+v", r)
	}
	// a room it never held: no
	if r, _ := ann.command(`{"topic":"chat/attic","data":"x"}`); !strings.Contains(r.Error, `may not publish to topic "chat/attic"`) {
		t.Fatalf("publish to another room: %+v", r)
	}
	ann.command(`{"subscribe":"chat/lobby"}`)
	ann.send(`{"topic":"chat/lobby","data":"back"}`)
	if r, _ := lobby.expect(func(r wsReply) bool { return r.Data == "back" || r.Error != "" }); r.Topic != "chat/lobby" {
		t.Fatalf("lobby got %+v", r)
	}
}

// A text endpoint takes no commands: the object is a message like any.
func TestWSSubscribeTextFormatHasNoCommands(t *testing.T) {
	c, hub := startSubscribeCaddy(t)
	ws := mustDialWS(t, c.URL+"/text?topic=a", nil)
	ws.send(`{"subscribe":"b"}`)
	if r := ws.nextReply(time.Second); r.Error != replyNoPublish {
		t.Fatalf("got %+v, want %q", r, replyNoPublish)
	}
	mustPublishHub(t, hub, "on b", "b")
	mustPublishHub(t, hub, "on a", "a")
	if got := string(ws.next(time.Second)); got != "on a" {
		t.Fatalf("got %q", got)
	}
}

func TestParseCommand(t *testing.T) {
	for _, tc := range []struct {
		frame   string
		want    wsCommand
		command bool
		err     bool
	}{
		{frame: `{"subscribe":"a"}`, want: wsCommand{subscribe: true, topic: "a"}, command: true},
		{frame: ` {"subscribe":"a","lastEventId":"x-1"}`, want: wsCommand{subscribe: true, topic: "a", lastEventID: "x-1"}, command: true},
		{frame: `{"subscribe":"a","last_event_id":"x-2"}`, want: wsCommand{subscribe: true, topic: "a", lastEventID: "x-2"}, command: true},
		{frame: `{"subscribe":"a","lastEventId":"x-1","last_event_id":"x-2"}`, want: wsCommand{subscribe: true, topic: "a", lastEventID: "x-1"}, command: true},
		{frame: `{"unsubscribe":"a"}`, want: wsCommand{topic: "a"}, command: true},
		{frame: `{"sub\u0073cribe":"a"}`, want: wsCommand{subscribe: true, topic: "a"}, command: true},
		{frame: `{"subscribe":["a"]}`, command: true, err: true},
		{frame: `{"subscribe":"a","unsubscribe":"a"}`, command: true, err: true},
		{frame: `{"unsubscribe":"a","last_event_id":"1"}`, command: true, err: true},
		{frame: `{"subscribe":"a","topic":"a"}`, command: true, err: true},
		{frame: `{"Subscribe":"a"}`},
		{frame: `{"topic":"a","data":"subscribe"}`},
		{frame: `{"data":{"subscribe":"a"}}`},
		{frame: `"subscribe"`},
		{frame: `{"subscribe":"a"`},
		{frame: `subscribe a`},
	} {
		c, ok, err := parseCommand([]byte(tc.frame))
		if ok != tc.command || (err != nil) != tc.err || err == nil && c != tc.want {
			t.Errorf("%s: %+v, %v, %v", tc.frame, c, ok, err)
		}
	}
}

func TestQueryTemplate(t *testing.T) {
	repl := caddy.NewReplacer()
	repl.Set("http.auth.user.id", "ann")
	for _, tc := range []struct {
		tmpl  string
		ok    bool
		gives []string
		not   []string
	}{
		{tmpl: "chat/{query.room}", ok: true, gives: []string{"chat/a", "chat/a/b"}, not: []string{"chat/", "chat", "room/a"}},
		{tmpl: "chat/{http.request.uri.query.room}", ok: true, gives: []string{"chat/a"}, not: []string{"chat/"}},
		{tmpl: "user/{http.auth.user.id}/{query.box}", ok: true, gives: []string{"user/ann/inbox"}, not: []string{"user/bob/inbox", "user/ann/"}},
		{tmpl: "{query.a}-{query.b}", ok: true, gives: []string{"x-y", "x-y-z", "--x"}, not: []string{"x-", "-y", "xy"}},
		{tmpl: "a{query.x}b{query.y}c", ok: true, gives: []string{"a1b2c", "abbbc", "a1bb2c"}, not: []string{"abc", "a1bc", "ab2c", "a1b2"}},
		{tmpl: "user/{http.auth.user.id}"},
		{tmpl: "chat/lobby"},
		{tmpl: "x/{unknown}/{query.a}"},
		{tmpl: `x/\{query.a}`},
	} {
		q, ok := parseQueryTemplate(tc.tmpl, repl)
		if ok != tc.ok {
			t.Errorf("%s: ok %v", tc.tmpl, ok)
			continue
		}
		for _, topic := range tc.gives {
			if !q.gives(topic) {
				t.Errorf("%s does not give %s", tc.tmpl, topic)
			}
		}
		for _, topic := range tc.not {
			if ok && q.gives(topic) {
				t.Errorf("%s gives %s", tc.tmpl, topic)
			}
		}
	}
}

func TestWSSubscribeCaddyfile(t *testing.T) {
	var h WSHandler
	if err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser("push_ws {\n\ttopics chat/{query.room}\n\tsubscribe chat/* dm/*\n}")); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(h.Subscribe, []string{"chat/*", "dm/*"}) {
		t.Fatalf("subscribe %v", h.Subscribe)
	}
	if err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser("push_ws {\n\tsubscribe\n}")); err == nil {
		t.Fatal("subscribe without patterns")
	}
	for cfg, want := range map[string]string{
		`{"subscribe":["chat/*"],"format":"json"}`:                                   "subscribe needs topics",
		`{"subscribe":["chat/*"],"topics":["a"],"format":"text"}`:                    "subscribe needs format json",
		`{"subscribe":["chat/*","a\nb"],"topics":["a"],"format":"json"}`:             "subscribe pattern",
		`{"subscribe":["chat/*"],"topics":["a"],"format":"json","publish":["chat"]}`: "",
	} {
		var h WSHandler
		if err := json.Unmarshal([]byte(cfg), &h); err != nil {
			t.Fatal(err)
		}
		err := h.Validate()
		if want == "" && err != nil || want != "" && (err == nil || !strings.Contains(err.Error(), want)) {
			t.Errorf("%s: %v, want %q", cfg, err, want)
		}
	}
}

// A topic added to an open connection is put to the authorize hook as a
// connect's topics are, with the connect's credentials, and the events
// hook hears of what the connection takes up and gives up.
func TestWSSubscribeAsksTheApp(t *testing.T) {
	app := startTestApp(t)
	app.handle("/authorize", func(w http.ResponseWriter, r *http.Request) {
		var req authorizeRequest
		_ = json.NewDecoder(r.Body).Decode(&req)
		w.Header().Set("Content-Type", "application/json")
		if slices.Contains(req.Topics, "secret") {
			w.WriteHeader(http.StatusForbidden)
			_, _ = w.Write([]byte(`{"reason":"not for you"}`))
			return
		}
		_, _ = w.Write([]byte(`{}`))
	})
	app.handle("/events", func(w http.ResponseWriter, r *http.Request) {})
	c := startCaddy(t, `{
	push {
		hub default {
			events `+app.URL+`/events {
				secret `+eventsSecret+`
				interval 20ms
			}
		}
	}
}
http://127.0.0.1:PORT {
	push_ws /ws {
		authorize `+app.URL+`/authorize {
			cache 0
		}
	}
}`)
	ws := mustDialWS(t, c.URL+"/ws?topic=a", header("Cookie", "session=ann"))
	if r, _ := ws.command(`{"subscribe":"b"}`); r.Subscribed != "b" {
		t.Fatalf("subscribe b: %+v", r)
	}
	if r, _ := ws.command(`{"subscribe":"secret"}`); r.Error == "" || !strings.Contains(r.Error, "not for you") {
		t.Fatalf("subscribe secret: %+v, want the app's refusal", r)
	}
	if r, _ := ws.command(`{"unsubscribe":"b"}`); r.Unsubscribed != "b" {
		t.Fatalf("unsubscribe b: %+v", r)
	}
	asked := app.requests("/authorize")
	if len(asked) != 3 || asked[1].Header.Get("Cookie") != "session=ann" || !strings.Contains(string(asked[1].Body), `"topics":["b"]`) {
		t.Fatalf("the app was asked %d times, second %s %v", len(asked), asked[1].Body, asked[1].Header)
	}
	evs := waitEvents(t, app, func(evs []hookEvent) bool {
		return len(ofType(evs, "subscribe")) == 1 && len(ofType(evs, "unsubscribe")) == 1
	})
	if e := ofType(evs, "subscribe")["b"]; e.Connection == "" || e.Transport != TransportWS {
		t.Errorf("subscribe event: %+v", e)
	}
}

// The demo's chat: topics from the query, presence on a pattern, a room
// switch on the open connection (subscribe the new room, unsubscribe the
// old), then events of the new room arrive.
func TestWSSubscribeSwitchWithPresencePattern(t *testing.T) {
	c := startCaddy(t, `
http://127.0.0.1:PORT {
	push_ws /chat {
		publish chat/lobby chat/kitchen chat/garden
		presence chat/*
	}
	push_publish /publish {
		anonymous
	}
}`)
	ws := mustDialWS(t, c.URL+"/chat?topic=chat/lobby", nil)
	c.publish("/publish", "topic=chat/lobby&data=in+the+lobby")
	first, _ := ws.expect(func(r wsReply) bool { return r.Data == "in the lobby" })
	// push.js sends the last id it has with a subscribe
	if r, _ := ws.command(`{"subscribe":"chat/kitchen","lastEventId":"` + first.ID + `"}`); r.Subscribed != "chat/kitchen" {
		t.Fatalf("subscribe: %+v", r)
	}
	if r, _ := ws.command(`{"unsubscribe":"chat/lobby"}`); r.Unsubscribed != "chat/lobby" {
		t.Fatalf("unsubscribe: %+v", r)
	}
	c.publish("/publish", "topic=chat/lobby&data=left+behind")
	c.publish("/publish", "topic=chat/kitchen&data=in+the+kitchen")
	r, before := ws.expect(func(r wsReply) bool { return r.Data == "in the kitchen" })
	for _, b := range before {
		if b.Data == "left behind" {
			t.Errorf("got the old room's event: %+v", before)
		}
	}
	if r.Topic != "chat/kitchen" {
		t.Errorf("got %+v", r)
	}
}
