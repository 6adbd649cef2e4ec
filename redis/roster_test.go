package redis

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/gorilla/websocket"
)

const rosterSecret = "a-roster-test-secret-32-bytes-ok"

// adminNode is a Caddy process on the shared Redis with its admin
// endpoint on, presence on /events and /ws (topic room), users from JWTs,
// and a short heartbeat.
type adminNode struct {
	*node
	admin string
}

func startAdminNode(t *testing.T, redisURL string) *adminNode {
	t.Helper()
	port, adminPort := freePort(t), freePort(t)
	cfg := fmt.Sprintf(`{
	admin 127.0.0.1:%s
	persist_config off
	push {
		hub default {
			broker redis %s {
				heartbeat 300ms
			}
		}
	}
}
http://127.0.0.1:%s {
	push_sse /events {
		topics room
		presence
		jwt_key %s
	}
	push_ws /ws {
		topics room
		presence
		jwt_key %s
	}
	push_publish /publish {
		anonymous
	}
}
`, adminPort, redisURL, port, rosterSecret, rosterSecret)
	file := filepath.Join(t.TempDir(), "Caddyfile")
	if err := os.WriteFile(file, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	n := &adminNode{node: &node{t: t, base: "http://127.0.0.1:" + port}, admin: "http://127.0.0.1:" + adminPort}
	n.cmd = exec.Command(buildCaddy(t), "run", "--config", file, "--adapter", "caddyfile")
	n.cmd.Stdout, n.cmd.Stderr = io.Discard, io.Discard
	if os.Getenv("PUSH_NODE_LOGS") != "" {
		n.cmd.Stderr = os.Stderr
	}
	if err := n.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(n.kill)
	waitDial(t, "127.0.0.1:"+port)
	waitDial(t, "127.0.0.1:"+adminPort)
	return n
}

func token(t *testing.T, user string) string {
	t.Helper()
	s, err := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{"sub": user}).SignedString([]byte(rosterSecret))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// adminCall calls the node's admin API and decodes a 200 answer into out.
func (n *adminNode) adminCall(method, path, body string, out any) {
	n.t.Helper()
	req, _ := http.NewRequest(method, n.admin+path, strings.NewReader(body))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		n.t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		n.t.Fatalf("%s %s: %d %s", method, path, resp.StatusCode, raw)
	}
	if err := json.Unmarshal(raw, out); err != nil {
		n.t.Fatalf("%s %s: %v in %s", method, path, err, raw)
	}
}

type presenceAnswer struct {
	Scope   string
	Count   int
	Members []struct{ Connection, User, Transport, Node string }
}

// users are the users on topic room, as n's admin API says, sorted.
func (n *adminNode) users() ([]string, presenceAnswer) {
	n.t.Helper()
	var a presenceAnswer
	n.adminCall("GET", "/push/hubs/default/presence?topic=room", "", &a)
	var users []string
	for _, m := range a.Members {
		users = append(users, m.User)
	}
	slices.Sort(users)
	return users, a
}

// waitUsers polls n's admin API until the users on room are want.
func (n *adminNode) waitUsers(want ...string) presenceAnswer {
	n.t.Helper()
	slices.Sort(want)
	deadline := time.Now().Add(5 * time.Second)
	for {
		got, a := n.users()
		if slices.Equal(got, want) {
			return a
		}
		if time.Now().After(deadline) {
			n.t.Fatalf("users on room: %v, want %v", got, want)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// sseAs opens the node's event stream as user; its events (push.presence
// and push.join first) arrive on the stream.
func (n *adminNode) sseAs(user string) *stream {
	n.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "GET", n.base+"/events?access_token="+token(n.t, user), nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil || resp.StatusCode != 200 {
		cancel()
		n.t.Fatalf("subscribe as %s: %v %v", user, err, resp)
	}
	s := &stream{events: make(chan event, 1000), ended: make(chan struct{}), cancel: cancel}
	n.t.Cleanup(cancel)
	go func() {
		defer close(s.ended)
		defer resp.Body.Close()
		var ev event
		lines := bufio.NewScanner(resp.Body)
		for lines.Scan() {
			line := lines.Text()
			switch {
			case strings.HasPrefix(line, "event: "):
				ev.Type = line[7:]
			case strings.HasPrefix(line, "data: "):
				ev.Data = line[6:]
			case strings.HasPrefix(line, "id: "):
				ev.ID = line[4:]
			case line == "":
				if ev.Data != "" {
					s.events <- ev
				}
				ev = event{}
			}
		}
	}()
	return s
}

func (n *adminNode) wsAs(user string) *websocket.Conn {
	n.t.Helper()
	c, _, err := websocket.DefaultDialer.Dial(strings.Replace(n.base, "http://", "ws://", 1)+"/ws?access_token="+token(n.t, user), nil)
	if err != nil {
		n.t.Fatalf("websocket as %s: %v", user, err)
	}
	n.t.Cleanup(func() { c.Close() })
	return c
}

// snapshotUsers decodes a push.presence event's members into users, sorted.
func snapshotUsers(t *testing.T, ev event) []string {
	t.Helper()
	var s struct {
		Members []struct{ User string }
	}
	if ev.Type != "push.presence" || json.Unmarshal([]byte(ev.Data), &s) != nil {
		t.Fatalf("got %+v, want push.presence", ev)
	}
	var users []string
	for _, m := range s.Members {
		users = append(users, m.User)
	}
	slices.Sort(users)
	return users
}

// Presence, counts, disconnect and pause cover every node on the Redis:
// a member joined on A is in B's snapshot and B's admin answers;
// disconnecting a user closes that user's connections on both nodes and
// only those; a node killed with SIGKILL leaves the answers within the
// heartbeat window.
func TestClusterPresence(t *testing.T) {
	r := startRedis(t)
	a := startAdminNode(t, r.url())
	b := startAdminNode(t, r.url())
	aliceA := a.sseAs("alice")
	if got := snapshotUsers(t, aliceA.next(t, 3*time.Second)); !slices.Equal(got, []string{"alice"}) {
		t.Fatalf("alice's snapshot: %v", got)
	}
	bobB := b.wsAs("bob")
	aliceB := b.wsAs("alice")
	carolB := b.sseAs("carol")
	if got := snapshotUsers(t, carolB.next(t, 3*time.Second)); !slices.Equal(got, []string{"alice", "alice", "bob", "carol"}) {
		t.Fatalf("carol's snapshot on b: %v, want a's alice in it", got)
	}
	for _, n := range []*adminNode{a, b} {
		if p := n.waitUsers("alice", "alice", "bob", "carol"); p.Scope != "cluster" || p.Count != 4 {
			t.Fatalf("presence: %+v", p)
		}
	}
	// counts: the other node's come with its heartbeat
	deadline := time.Now().Add(3 * time.Second)
	for {
		var hubs struct {
			Scope string
			Hubs  []struct {
				Scope, Broker string
				Topics        int
				Connections   map[string]int
			}
		}
		a.adminCall("GET", "/push/hubs", "", &hubs)
		h := hubs.Hubs[0]
		if hubs.Scope == "cluster" && h.Scope == "cluster" && h.Broker == "redis" && h.Topics == 1 &&
			h.Connections["sse"] == 2 && h.Connections["ws"] == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("GET /push/hubs: %+v", hubs)
		}
		time.Sleep(50 * time.Millisecond)
	}
	var topics struct {
		Scope  string
		Topics []struct {
			Topic       string
			Subscribers int
		}
	}
	b.adminCall("GET", "/push/hubs/default/topics", "", &topics)
	if topics.Scope != "cluster" || len(topics.Topics) != 1 || topics.Topics[0].Subscribers != 4 {
		t.Fatalf("topics: %+v", topics)
	}

	// disconnect alice, from a's admin API: her stream on a, her socket on b
	var d struct {
		Scope        string
		Disconnected int
	}
	a.adminCall("POST", "/push/hubs/default/disconnect", `{"user":"alice"}`, &d)
	if d.Scope != "cluster" || d.Disconnected != 2 {
		t.Fatalf("disconnect alice: %+v", d)
	}
	select {
	case <-aliceA.ended:
	case <-time.After(3 * time.Second):
		t.Fatal("alice's stream on a did not end")
	}
	_ = aliceB.SetReadDeadline(time.Now().Add(3 * time.Second))
	for {
		_, _, err := aliceB.ReadMessage()
		if err != nil {
			var ce *websocket.CloseError
			if !asCloseError(err, &ce) || ce.Code != websocket.ClosePolicyViolation {
				t.Fatalf("alice's socket on b ended with %v, want 1008", err)
			}
			break
		}
	}
	b.waitUsers("bob", "carol")
	_, id := a.publish("room", "still here")
	_ = bobB.SetReadDeadline(time.Now().Add(3 * time.Second))
	for {
		var f struct{ ID, Event string }
		if err := bobB.ReadJSON(&f); err != nil {
			t.Fatalf("bob's socket: %v", err)
		}
		if f.ID == id {
			break
		}
	}

	// a third node dies: its member leaves everyone's answers
	c := startAdminNode(t, r.url())
	c.sseAs("dave")
	a.waitUsers("bob", "carol", "dave")
	c.kill()
	start := time.Now()
	a.waitUsers("bob", "carol")
	if took := time.Since(start); took > 2*time.Second {
		t.Fatalf("a dead node's members went after %v; the heartbeat window is 0.9s", took)
	}

	// pause from b: a's streams and b's, counted across the cluster
	a.sseAs("alice") // a stream on a again, which the pause counts
	var p struct {
		Scope  string
		Paused int
	}
	b.adminCall("POST", "/push/hubs/default/pause", `{"for":"1m"}`, &p)
	if p.Scope != "cluster" || p.Paused != 3 {
		t.Fatalf("pause: %+v, want 3 (alice on a, bob and carol on b)", p)
	}
}

func asCloseError(err error, ce **websocket.CloseError) bool {
	e, ok := err.(*websocket.CloseError)
	*ce = e
	return ok
}
