package redis

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	goredis "github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"github.com/caddy-push/push"
)

// datas are the data of evs, with the id a client sees of each.
func datas(evs []*push.Event) []string {
	out := make([]string, len(evs))
	for i, ev := range evs {
		out[i] = ev.Data + "@" + ev.PublicID()
	}
	return out
}

// A publisher's id travels with its event through Redis, live and
// replayed, and resumes a client as on the memory broker: after the
// earliest event that has it, the later ones replayed. "earliest",
// "#<hub id>" and an unknown id resume as they do there too.
func TestCustomIDResume(t *testing.T) {
	r := startRedis(t)
	cfg := fmt.Sprintf(`{"admin":{"disabled":true,"config":{"persist":false}},
		"apps":{"push":{"hubs":{
			"default":{"history":1000,"broker":{"broker":"redis","url":%q}},
			"short":{"history":3,"broker":{"broker":"redis","url":%[1]q}}}}}}`, r.url())
	if err := caddy.Load([]byte(cfg), true); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = caddy.Stop() })
	hub, _ := push.LookupHub("default")
	short, _ := push.LookupHub("short")
	ctx := context.Background()
	publish := func(h *push.Hub, topic, data, id string) string {
		t.Helper()
		got, err := h.Publish(ctx, push.Message{Topics: []string{topic}, Data: data, CustomID: id})
		if err != nil {
			t.Fatal(err)
		}
		return got
	}
	subscribe := func(h *push.Hub, from string, topics ...string) *push.Subscription {
		t.Helper()
		s, err := h.Subscribe(ctx, topics, from, push.TransportSSE)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(s.Close)
		return s
	}

	live := subscribe(hub, "", "d")
	if id := publish(hub, "d", "A", "x"); id != "x" {
		t.Fatalf("publish answered %q, not the publisher's id", id)
	}
	b := publish(hub, "d", "B", "")
	publish(hub, "d", "C", "x")
	d := publish(hub, "d", "D", "")
	want := []string{"B@" + b, "C@x", "D@" + d}
	s := subscribe(hub, "x", "d")
	if got := datas(s.Backlog.Events); s.Backlog.Reset != "" || !slices.Equal(got, want) {
		t.Fatalf("from x: %q (reset %q), want %q", got, s.Backlog.Reset, want)
	}
	var got []*push.Event
	for deadline := time.After(5 * time.Second); len(got) < 4; {
		select {
		case <-live.Ready():
			got = live.Take(got)
		case <-deadline:
			t.Fatalf("live subscriber got %q", datas(got))
		}
	}
	if ids := datas(got); !slices.Equal(ids, append([]string{"A@x"}, want...)) {
		t.Fatalf("live: %q", ids)
	}
	s = subscribe(hub, "#"+b, "d")
	if got := datas(s.Backlog.Events); !slices.Equal(got, want[1:]) {
		t.Fatalf("from #%s: %q, want %q", b, got, want[1:])
	}
	s = subscribe(hub, "urn:never-published", "d")
	if s.Backlog.Reset != "unknown event id" || s.Backlog.Head != d || len(s.Backlog.Events) != 0 {
		t.Fatalf("from an unknown id: %+v", s.Backlog)
	}

	// the earliest is what history holds, with no reset for what it dropped
	var ids []string
	for i := range 5 {
		ids = append(ids, publish(short, "e", fmt.Sprint(i), ""))
	}
	if s := subscribe(short, ids[0], "e"); s.Backlog.Reset == "" {
		t.Fatal("no reset from a trimmed id")
	}
	s = subscribe(short, push.EarliestID, "e", "nothing-here")
	if got, want := datas(s.Backlog.Events), []string{"2@" + ids[2], "3@" + ids[3], "4@" + ids[4]}; s.Backlog.Reset != "" || !slices.Equal(got, want) {
		t.Fatalf("from the earliest: %q (reset %q), want %q", got, s.Backlog.Reset, want)
	}

	// the index keeps the earliest, for history_ttl (1 h by default)
	rc := goredis.NewClient(&goredis.Options{Addr: "127.0.0.1:" + r.port})
	defer rc.Close()
	if ttl := rc.PTTL(ctx, "push:default:id:x").Val(); ttl <= 59*time.Minute || ttl > time.Hour {
		t.Fatalf("id:x expires in %v, want history_ttl", ttl)
	}
}

// With no history_ttl (Go's HistoryLimits), the index keeps an id a day.
func TestCustomIDIndexWithoutTTL(t *testing.T) {
	r := startRedis(t)
	br, err := Broker{URL: r.url()}.OpenBroker(push.BrokerOptions{Hub: "nottl", History: push.HistoryLimits{Events: 10},
		Deliver: func(*push.Event) {}, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = br.Close() })
	ctx := context.Background()
	ev := &push.Event{Message: push.Message{Topics: []string{"a"}, CustomID: "urn:z"}}
	if err := br.Publish(ctx, ev); err != nil {
		t.Fatal(err)
	}
	got, ok, err := br.(push.IDResolver).ResolveID(ctx, "urn:z")
	if err != nil || !ok || got != ev.ID {
		t.Fatalf("ResolveID: %q, %v, %v; want %q", got, ok, err, ev.ID)
	}
	rc := goredis.NewClient(&goredis.Options{Addr: "127.0.0.1:" + r.port})
	defer rc.Close()
	if ttl := rc.PTTL(ctx, "push:nottl:id:urn:z").Val(); ttl <= idIndexTTL-time.Minute || ttl > idIndexTTL {
		t.Fatalf("id:urn:z expires in %v, want %v", ttl, idIndexTTL)
	}
}

// Events stored before ids read as they did; one with an id has it, as
// the publish script's cjson writes it.
func TestWireEventCustomID(t *testing.T) {
	for _, tc := range []struct{ wire, public string }{
		{`{"p":"e","s":1,"t":0,"k":["a"],"e":"","d":"x","r":0}`, "e-1"},
		{`{"p":"e","s":1,"t":0,"k":["a"],"e":"","d":"x","r":0,"i":"urn:\/x"}`, "urn:/x"}, // cjson escapes /
	} {
		ev, err := decode(tc.wire)
		if err != nil || ev.ID != "e-1" || ev.PublicID() != tc.public {
			t.Fatalf("%s: %+v, %v", tc.wire, ev, err)
		}
	}
}
