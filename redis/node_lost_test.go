package redis

import (
	"context"
	"encoding/json"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/caddy-push/push"
)

// A node that stops renewing its entry is removed by one surviving node,
// in the script that renews that survivor's own: of several racing
// survivors, only that one is told of the dead node's connections, each
// with what it joined with. A node the roster forgot while it lived is
// told so when it writes its connections anew.
func TestNodeLostToldOnce(t *testing.T) {
	r := startRedis(t)
	ctx := context.Background()
	type report struct {
		by, node string
		lost     []push.Joined
	}
	var mu sync.Mutex
	var reports []report
	var rejoined [][]push.Joined
	// the survivors' own connections, once they have some
	var open atomic.Bool
	alive := []push.Joined{{Member: push.Member{Connection: "live1", User: "erin", Transport: push.TransportWS}, Topics: []string{"room"}}}
	var stores []*store
	for range 4 {
		var s *store
		br, err := Broker{URL: r.url(), Heartbeat: caddy.Duration(50 * time.Millisecond)}.OpenBroker(push.BrokerOptions{Hub: "lost",
			Deliver: func(*push.Event) {},
			Joined: func() []push.Joined {
				if open.Load() {
					return alive
				}
				return nil
			},
			Logger: zap.NewNop(),
			NodeLost: func(node string, lost []push.Joined) {
				mu.Lock()
				reports = append(reports, report{s.node, node, lost})
				mu.Unlock()
			},
			Rejoined: func(list []push.Joined) { mu.Lock(); rejoined = append(rejoined, list); mu.Unlock() },
		})
		if err != nil {
			t.Fatal(err)
		}
		s = br.(*store)
		t.Cleanup(func() { _ = s.Close() })
		stores = append(stores, s)
	}
	// the dead node, as its last heartbeat and joins left it
	s := stores[0]
	if err := heartbeatScript.Run(ctx, s.client, s.keys, s.prefix, "ghost", 200, "{}").Err(); err != nil {
		t.Fatal(err)
	}
	since := time.Now().UTC().Truncate(time.Millisecond)
	ghosts := []push.Joined{
		{Member: push.Member{Connection: "c1", User: "ann", Transport: push.TransportSSE, RemoteAddr: "10.0.0.1", Since: since}, Topics: []string{"room", "news"}},
		{Member: push.Member{Connection: "c2", Transport: push.TransportWS, RemoteAddr: "10.0.0.2", Since: since}, Topics: []string{"room"}},
		{Member: push.Member{Connection: "c3"}}, // a pattern subscriber's: no topics
	}
	for _, j := range ghosts {
		m := j.Member
		m.Node = "ghost"
		data, _ := json.Marshal(m)
		args := []any{s.prefix, "ghost", m.Connection, string(data)}
		for _, topic := range j.Topics {
			args = append(args, topic)
		}
		if err := joinScript.Run(ctx, s.client, s.keys, args...).Err(); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 5*time.Second, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(reports) > 0
	})
	time.Sleep(300 * time.Millisecond) // several more heartbeats of every survivor
	mu.Lock()
	if len(reports) != 1 || reports[0].node != "ghost" {
		t.Fatalf("reports: %+v, want one, of ghost", reports)
	}
	lost := reports[0].lost
	mu.Unlock()
	slices.SortFunc(lost, func(a, b push.Joined) int { return strings.Compare(a.Member.Connection, b.Member.Connection) })
	for i, want := range ghosts {
		want.Member.Node = "ghost"
		if got := lost[i]; !sameJoined(got, want) {
			t.Errorf("lost %d: %+v, want %+v", i, got, want)
		}
	}
	if n, _ := s.client.Exists(ctx, s.prefix+"nm:ghost", s.prefix+"m:news").Result(); n != 0 {
		t.Errorf("%d of ghost's keys left", n)
	}

	// a survivor taken for dead meanwhile writes its connections anew,
	// and is told to tell of them again
	open.Store(true)
	if err := forgetScript.Run(ctx, s.client, s.keys, s.prefix, stores[1].node).Err(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(rejoined) == 1
	})
	mu.Lock()
	defer mu.Unlock()
	if len(rejoined[0]) != 1 || rejoined[0][0].Member.Connection != "live1" || len(reports) != 1 {
		t.Fatalf("rejoined %+v, reports %+v", rejoined, reports)
	}
}

func sameJoined(a, b push.Joined) bool {
	am, bm := a.Member, b.Member
	return am.Connection == bm.Connection && am.User == bm.User && am.Transport == bm.Transport && am.RemoteAddr == bm.RemoteAddr &&
		am.Since.Equal(bm.Since) && am.Node == bm.Node && slices.Equal(a.Topics, b.Topics)
}
