package push

import (
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

const privateSite = `
http://127.0.0.1:PORT {
	push_sse /events {
		jwt_key {env.PUSH_TEST_JWT}
	}
	push_ws /ws {
		jwt_key {env.PUSH_TEST_JWT}
	}
	push_sse /open
	push_publish /publish {
		anonymous
	}
}`

// privateReaders are the subscribers of user/alice the private events
// tests open: SSE and WebSocket each with Alice's token, Bob's (which
// allows user/bob only), Carol's (neither) and none, and an SSE stream of
// an endpoint without JWT.
type privateReaders struct {
	aliceSSE, bobSSE, carolSSE, anonSSE, openSSE *sseClient
	aliceWS, bobWS, carolWS, anonWS              *wsClient
}

func openPrivateReaders(t *testing.T, c *testCaddy, lastID string) privateReaders {
	t.Helper()
	token := func(sub string, topics ...string) string {
		return hs256(t, jwt.MapClaims{"sub": sub, "mercure": map[string]any{"subscribe": topics}})
	}
	alice, bob, carol := token("alice", "user/alice"), token("bob", "user/bob"), token("carol", "news", "user/*/public")
	sse := func(path, tok string) *sseClient {
		h := http.Header{}
		if tok != "" {
			h.Set("Authorization", "Bearer "+tok)
		}
		if lastID != "" {
			h.Set("Last-Event-ID", lastID)
		}
		s := subscribe(t, c.URL+path+"?topic=user/alice", h)
		if s.Resp.StatusCode != 200 {
			t.Fatalf("subscribe %s: %d", path, s.Resp.StatusCode)
		}
		return s
	}
	ws := func(tok string) *wsClient {
		h := http.Header{}
		if tok != "" {
			h.Set("Authorization", "Bearer "+tok)
		}
		url := c.URL + "/ws?topic=user/alice"
		if lastID != "" {
			url += "&lastEventId=" + lastID
		}
		return mustDialWS(t, url, h)
	}
	return privateReaders{
		aliceSSE: sse("/events", alice), bobSSE: sse("/events", bob), carolSSE: sse("/events", carol),
		anonSSE: sse("/events", ""), openSSE: sse("/open", ""),
		aliceWS: ws(alice), bobWS: ws(bob), carolWS: ws(carol), anonWS: ws(""),
	}
}

// expect checks that each reader's next events have these data, in
// order, and nothing else before them.
func (r privateReaders) expect(t *testing.T, alice, bob, others []string) {
	t.Helper()
	for name, c := range map[string]struct {
		sse  []*sseClient
		ws   []*wsClient
		want []string
	}{
		"alice":  {[]*sseClient{r.aliceSSE}, []*wsClient{r.aliceWS}, alice},
		"bob":    {[]*sseClient{r.bobSSE}, []*wsClient{r.bobWS}, bob},
		"others": {[]*sseClient{r.carolSSE, r.anonSSE, r.openSSE}, []*wsClient{r.carolWS, r.anonWS}, others},
	} {
		for i, s := range c.sse {
			for _, want := range c.want {
				if ev := s.nextEvent(2 * time.Second); ev.Data != want {
					t.Fatalf("%s's SSE stream %d got %q, want %q", name, i, ev.Data, want)
				}
			}
		}
		for i, w := range c.ws {
			for _, want := range c.want {
				if f := w.nextFrame(2 * time.Second); f.Data != want {
					t.Fatalf("%s's WebSocket %d got %+v, want %q", name, i, f, want)
				}
			}
		}
	}
}

// A private event reaches only the subscribers whose token may subscribe
// to one of its topics, over SSE and WebSocket, live and on resume;
// public events reach everyone as before. It may be published with the
// form field private (any value, even none), JSON "private": true, or
// the Go API.
func TestPrivateEvents(t *testing.T) {
	t.Setenv("PUSH_TEST_JWT", testSecret)
	c := startCaddy(t, privateSite)
	_, before := c.publish("/publish", "topic=user/alice&data=before")

	r := openPrivateReaders(t, c, "")
	if status, _ := c.publish("/publish", "topic=user/alice&data=form&private=on"); status != 200 {
		t.Fatalf("form publish: %d", status)
	}
	if status, body := c.post("/publish", "application/json", `{"topic":"user/alice","data":"json","private":true}`); status != 200 {
		t.Fatalf("JSON publish: %d %s", status, body)
	}
	hub, _ := LookupHub("default")
	if _, err := hub.Publish(context.Background(), Message{Topics: []string{"user/alice"}, Data: "go", Private: true}); err != nil {
		t.Fatal(err)
	}
	// the union rule: Bob may read user/bob, one of its topics
	c.publish("/publish", "topic=user/alice&topic=user/bob&data=union&private")
	// any value makes it private, as in Mercure: "off" too
	c.publish("/publish", "topic=user/alice&data=off&private=off&private=")
	c.publish("/publish", "topic=user/alice&data=public")
	alice := []string{"form", "json", "go", "union", "off", "public"}
	bob := []string{"union", "public"}
	others := []string{"public"}
	r.expect(t, alice, bob, others)

	// a resume from before them filters the backlog the same way
	resumed := openPrivateReaders(t, c, before)
	resumed.expect(t, alice, bob, others)
}

// recordingSink is a Sink that keeps what it is given.
type recordingSink struct{ events []*Event }

func (r *recordingSink) Deliver(ev *Event) bool { r.events = append(r.events, ev); return true }
func (r *recordingSink) Ended()                 {}

// A private event a subscription may not read is neither queued, written
// nor counted, and leaves its bookkeeping as a delivered one would: the
// backlog still covers it (no live duplicate), and an event of several
// subscribed topics still comes once.
func TestPrivateEventsBookkeeping(t *testing.T) {
	h := openHub(t, HistoryLimits{Events: 10})
	ctx := context.Background()
	private := func(data string, topics ...string) {
		t.Helper()
		if _, err := h.Publish(ctx, Message{Topics: topics, Data: data, Private: true}); err != nil {
			t.Fatal(err)
		}
	}
	who := func() Member { return Member{Connection: connectionID(), Transport: TransportSSE, Since: time.Now()} }
	anon := mustSubscribe(t, h, "", "a", "b")
	reader, err := h.subscribe(ctx, []string{"a", "b"}, nil, "", who(), &Grant{Subscribe: []string{"b"}}, false)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(reader.Close)
	sink := new(recordingSink)
	anon.Attach(sink)

	private("p1", "a", "b")
	mustPublish(t, h, "1", "a", "b")
	private("p2", "a")
	private("p3", "b", "a")
	mustPublish(t, h, "2", "b")
	if got := datas(sink.events); len(got) != 2 || got[0] != "1" || got[1] != "2" {
		t.Fatalf("anonymous subscription got %v", got)
	}
	if n := h.stats.of(TransportSSE).delivered.Load(); n != 2 {
		t.Fatalf("%d deliveries counted, want 2", n)
	}
	// the union rule: b allows p1 and p3, though delivered on a; p2 is a's only
	if got := datas(reader.Take(nil)); len(got) != 4 || got[0] != "p1" || got[1] != "1" || got[2] != "p3" || got[3] != "2" {
		t.Fatalf("reader got %v", got)
	}

	// the backlog drops the same events but covers them all
	from := FormatID(h.broker.(*memoryStore).epoch, 0)
	late := mustSubscribe(t, h, from, "a", "b")
	if got := datas(late.Backlog.Events); len(got) != 2 || got[0] != "1" || got[1] != "2" {
		t.Fatalf("anonymous backlog %v", got)
	}
	if late.skipThrough != 5 {
		t.Fatalf("backlog covers up to %d, want 5", late.skipThrough)
	}
	lateReader, err := h.subscribe(ctx, []string{"a"}, nil, from, who(), &Grant{Subscribe: []string{"a"}}, false)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(lateReader.Close)
	if got := datas(lateReader.Backlog.Events); len(got) != 4 || got[0] != "p1" || got[1] != "1" || got[2] != "p2" || got[3] != "p3" {
		t.Fatalf("reader's backlog %v", got)
	}
}
