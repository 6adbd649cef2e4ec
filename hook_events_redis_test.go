package push_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/gorilla/websocket"

	"github.com/caddy-push/push"
	"github.com/caddy-push/push/internal/testport"
)

// A node killed with SIGKILL tells the app nothing more; the surviving
// node that removes its roster entry tells of each of its connections'
// end, reason node_lost, once: this process has two nodes of the hub
// (two hubs sharing a key prefix), and the app hears of each connection
// once, not once per survivor.
func TestEventsNodeLostOnRedis(t *testing.T) {
	url := startRedis(t)
	app := push.StartEventsTestApp(t)
	hub := func(name string) string {
		return `hub ` + name + ` {
			broker redis ` + url + ` {
				key_prefix push:lost:
				heartbeat 200ms
			}
			events ` + app.URL() + ` {
				secret ` + push.EventsTestSecret + `
				interval 20ms
			}
		}`
	}
	cfg, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(`{
	admin off
	persist_config off
	push {
		`+hub("a")+`
		`+hub("b")+`
	}
}`), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := caddy.Load(cfg, true); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = caddy.Stop() })

	// the node that dies: a Caddy of its own, with hub a on the same keys
	port := testport.Free(t, false)
	file := filepath.Join(t.TempDir(), "Caddyfile")
	site := fmt.Sprintf(`{
	admin off
	persist_config off
	push {
		%s
	}
}
http://127.0.0.1:%s {
	push_sse /events {
		hub a
	}
	push_ws /ws {
		hub a
	}
}
`, hub("a"), port)
	if err := os.WriteFile(file, []byte(site), 0o644); err != nil {
		t.Fatal(err)
	}
	node := exec.Command(buildCaddyCmd(t), "run", "--config", file, "--adapter", "caddyfile")
	node.Stdout, node.Stderr = io.Discard, io.Discard
	if err := node.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = node.Process.Signal(syscall.SIGKILL)
		_ = node.Wait()
	})
	base := "http://127.0.0.1:" + port
	waitUp(t, base)
	for _, topic := range []string{"one", "two"} {
		ctx, cancel := context.WithCancel(context.Background())
		t.Cleanup(cancel)
		req, _ := http.NewRequestWithContext(ctx, "GET", base+"/events?topic="+topic, nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("subscribe: %v %v", err, resp)
		}
		t.Cleanup(func() { resp.Body.Close() })
	}
	ws, _, err := websocket.DefaultDialer.Dial("ws://127.0.0.1:"+port+"/ws?topic=three", nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ws.Close() })
	connects := waitForEvents(t, app, func(typ, reason string) bool { return typ == "connect" }, 3)

	_ = node.Process.Signal(syscall.SIGKILL)
	start := time.Now()
	lost := waitForEvents(t, app, func(typ, reason string) bool { return typ == "disconnect" && reason == "node_lost" }, 3)
	t.Logf("the app heard of the lost node %v after the kill", time.Since(start))
	time.Sleep(time.Second) // many more heartbeats of both survivors
	evs := app.Events(t)
	if len(evs) != 6 {
		t.Fatalf("the app got %d events, want 6 (3 connects, 3 node_lost once each): %+v", len(evs), evs)
	}
	for i, c := range connects {
		l := lost[slices.IndexFunc(lost, func(l event) bool { return l.connection == c.connection })]
		if l.node == "" || l.node != lost[0].node || l.hub == "" || l.transport != c.transport || !slices.Equal(l.topics, c.topics) {
			t.Errorf("connection %d: connect %+v, lost %+v", i, c, l)
		}
	}
}

// event is what TestEventsNodeLostOnRedis checks of an event.
type event struct {
	connection, transport, node, hub string
	topics                           []string
}

// waitForEvents waits for n events that match, and returns them.
func waitForEvents(t *testing.T, app push.EventsTestApp, match func(typ, reason string) bool, n int) []event {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		var out []event
		for _, e := range app.Events(t) {
			if match(e.Type, e.Reason) {
				out = append(out, event{e.Connection, e.Transport, e.Node, e.Hub, e.Topics})
			}
		}
		if len(out) >= n {
			return out
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d events of %d within 10s: %+v", len(out), n, app.Events(t))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitUp waits until base answers.
func waitUp(t *testing.T, base string) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if resp, err := http.Get(base + "/"); err == nil {
			resp.Body.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("the node did not start")
		}
	}
}

// buildCaddyCmd builds cmd/caddy for the test.
func buildCaddyCmd(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "caddy")
	if out, err := exec.Command("go", "build", "-o", bin, "./cmd/caddy").CombinedOutput(); err != nil {
		t.Fatalf("building caddy: %v\n%s", err, strings.TrimSpace(string(out)))
	}
	return bin
}
