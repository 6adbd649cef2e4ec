package push_test

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/gorilla/websocket"

	"github.com/caddy-push/push"
	"github.com/caddy-push/push/internal/testport"
)

// On Redis, a topic a WebSocket client adds is the cluster's: its
// backlog comes from Redis, its events from another node arrive, the
// other node's subscribers see the member join and leave, and the
// roster lists it there (and no more on a topic it left). Two hubs of
// this process sharing one key prefix are two nodes of one hub.
func TestWSSubscribeAcrossRedisNodes(t *testing.T) {
	url := startRedis(t)
	port := testport.Free(t, true)
	cf := `{
	admin off
	persist_config off
	push {
		hub a {
			broker redis ` + url + ` {
				key_prefix push:topics:
			}
		}
		hub b {
			broker redis ` + url + ` {
				key_prefix push:topics:
			}
		}
	}
}
http://127.0.0.1:` + port + ` {
	push_ws /a {
		hub a
		presence
	}
	push_sse /b {
		hub b
		presence
	}
}`
	cfg, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(cf), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := caddy.Load(cfg, true); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = caddy.Stop() })
	base := "127.0.0.1:" + port
	hubB, _ := push.LookupHub("b")
	ctx := context.Background()

	watch, _ := openStream(t, "http://"+base+"/b?topic=chat/kitchen")
	for _, want := range []string{"push.presence", "push.join"} {
		if b := nextBlock(t, watch); b.event != want {
			t.Fatalf("watcher got %+v, want %s", b, want)
		}
	}
	// a node delivers from when it follows Redis: publish until b does
	var first string
	for deadline := time.Now().Add(5 * time.Second); first == ""; {
		id, err := hubB.Publish(ctx, push.Message{Topics: []string{"chat/kitchen"}, Data: "first"})
		if err != nil || time.Now().After(deadline) {
			t.Fatalf("node b does not deliver: %v", err)
		}
		select {
		case b := <-watch:
			for b.id != id {
				b = nextBlock(t, watch)
			}
			first = id
		case <-time.After(100 * time.Millisecond):
		}
	}
	missed, _ := hubB.Publish(ctx, push.Message{Topics: []string{"chat/kitchen"}, Data: "missed"})
	nextBlock(t, watch)

	conn, _, err := websocket.DefaultDialer.Dial("ws://"+base+"/a?topic=chat/lobby", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	type frame struct{ ID, Topic, Event, Data, Error, Subscribed, Unsubscribed string }
	frames := make(chan frame, 100)
	go func() {
		defer close(frames)
		for {
			var f frame
			if conn.ReadJSON(&f) != nil {
				return
			}
			frames <- f
		}
	}()
	read := func() frame {
		t.Helper()
		select {
		case f, ok := <-frames:
			if !ok {
				t.Fatal("the connection closed")
			}
			return f
		case <-time.After(5 * time.Second):
			t.Fatal("no frame within 5s")
			return frame{}
		}
	}
	command := func(cmd string) []frame {
		t.Helper()
		if err := conn.WriteMessage(websocket.TextMessage, []byte(cmd)); err != nil {
			t.Fatal(err)
		}
		var got []frame
		for {
			f := read()
			got = append(got, f)
			if f.Subscribed != "" || f.Unsubscribed != "" || f.Error != "" {
				return got
			}
		}
	}
	for f := read(); f.Event != "push.join"; f = read() {
	} // its opening on chat/lobby
	// and until a does
	for deadline := time.Now().Add(5 * time.Second); ; {
		if time.Now().After(deadline) {
			t.Fatal("node a does not deliver")
		}
		id, _ := hubB.Publish(ctx, push.Message{Topics: []string{"chat/lobby"}, Data: "probe"})
		select {
		case f := <-frames:
			for f.ID != id {
				f = read()
			}
		case <-time.After(100 * time.Millisecond):
			continue
		}
		break
	}

	got := command(`{"subscribe":"chat/kitchen","lastEventId":"` + first + `"}`)
	if len(got) != 3 || got[0].Event != "push.presence" || got[1].ID != missed || got[1].Data != "missed" || got[2].Subscribed != "chat/kitchen" {
		t.Fatalf("subscribe answered %+v, want the presence, the missed event, the answer", got)
	}
	var snap struct{ Count int }
	if err := json.Unmarshal([]byte(got[0].Data), &snap); err != nil || snap.Count != 2 {
		t.Fatalf("presence of chat/kitchen %s: want the watcher of the other node and itself", got[0].Data)
	}
	join := nextBlock(t, watch)
	if join.event != "push.join" {
		t.Fatalf("watcher got %+v, want the join of the client on the other node", join)
	}
	if f := read(); f.Event != "push.join" || f.Data != join.data {
		t.Fatalf("got %+v, want its own join, live, as at connect", f)
	}
	live, _ := hubB.Publish(ctx, push.Message{Topics: []string{"chat/kitchen"}, Data: "live"})
	if f := read(); f.ID != live || f.Topic != "chat/kitchen" {
		t.Fatalf("got %+v, want the event from the other node", f)
	}
	nextBlock(t, watch)

	members := func(topic string) int {
		t.Helper()
		_, n, scope, err := hubB.Presence(ctx, topic, 10)
		if err != nil || scope != push.ScopeCluster {
			t.Fatalf("presence of %s: %v %s", topic, err, scope)
		}
		return n
	}
	if k, l := members("chat/kitchen"), members("chat/lobby"); k != 2 || l != 1 {
		t.Fatalf("the roster lists %d on chat/kitchen and %d on chat/lobby, want 2 and 1", k, l)
	}
	if got := command(`{"unsubscribe":"chat/lobby"}`); got[len(got)-1].Unsubscribed != "chat/lobby" {
		t.Fatalf("unsubscribe answered %+v", got)
	}
	if n := members("chat/lobby"); n != 0 {
		t.Fatalf("the roster lists %d on chat/lobby once left", n)
	}
	command(`{"unsubscribe":"chat/kitchen"}`)
	if b := nextBlock(t, watch); b.event != "push.leave" || b.data != join.data {
		t.Fatalf("watcher got %+v, want the leave of %s", b, join.data)
	}
	if n := members("chat/kitchen"); n != 1 {
		t.Fatalf("the roster lists %d on chat/kitchen once left", n)
	}
}
