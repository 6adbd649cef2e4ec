package push_test

import (
	"bufio"
	"context"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"

	"github.com/caddy-push/push"
	"github.com/caddy-push/push/internal/testport"
	_ "github.com/caddy-push/push/redis"
)

// startRedis runs a redis-server on loopback until the test ends.
func startRedis(t *testing.T) string {
	t.Helper()
	if _, err := exec.LookPath("redis-server"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("redis-server is not installed; CI needs it")
		}
		t.Skip("redis-server is not installed; skipping")
	}
	port := testport.Free(t, false)
	cmd := exec.Command("redis-server", "--bind", "127.0.0.1", "--port", port, "--save", "", "--appendonly", "no")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGKILL)
		_ = cmd.Wait()
	})
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if c, err := net.Dial("tcp", "127.0.0.1:"+port); err == nil {
			c.Close()
			return "redis://127.0.0.1:" + port + "/0"
		}
		if time.Now().After(deadline) {
			t.Fatal("redis-server did not start")
		}
	}
}

// sseBlock is one event block of a stream, as written.
type sseBlock struct{ id, event, data string }

// openStream reads an SSE stream's event blocks (those with data) into a
// channel until the test ends.
func openStream(t *testing.T, url string) (<-chan sseBlock, context.CancelFunc) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	req, _ := http.NewRequestWithContext(ctx, "GET", url, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("GET %s: %v %v", url, err, resp)
	}
	out := make(chan sseBlock, 100)
	go func() {
		defer resp.Body.Close()
		var b sseBlock
		for lines := bufio.NewScanner(resp.Body); lines.Scan(); {
			line := lines.Text()
			switch {
			case strings.HasPrefix(line, "id: "):
				b.id = line[4:]
			case strings.HasPrefix(line, "event: "):
				b.event = line[7:]
			case strings.HasPrefix(line, "data: "):
				b.data = line[6:]
			case line == "":
				if b.data != "" {
					out <- b
				}
				b = sseBlock{}
			}
		}
	}()
	return out, cancel
}

func nextBlock(t *testing.T, c <-chan sseBlock) sseBlock {
	t.Helper()
	select {
	case b := <-c:
		return b
	case <-time.After(5 * time.Second):
		t.Fatal("no event within 5s")
		return sseBlock{}
	}
}

// On Redis, push.join and push.leave reach the other nodes' subscribers
// too, still live only: no id, nothing in the hub's history. Two hubs of
// this process sharing one key prefix are two nodes of one hub.
func TestPresenceLiveAcrossRedisNodes(t *testing.T) {
	url := startRedis(t)
	port := testport.Free(t, true)
	cf := `{
	admin off
	persist_config off
	push {
		hub a {
			broker redis ` + url + ` {
				key_prefix push:shared:
			}
			max_publish_topics 1
		}
		hub b {
			broker redis ` + url + ` {
				key_prefix push:shared:
			}
			max_publish_topics 1
		}
	}
}
http://127.0.0.1:` + port + ` {
	push_sse /a {
		hub a
		topics room
		presence
	}
	push_sse /b {
		hub b
		topics room
		presence
	}
	push_sse /b-quiet-lobby {
		hub b
		topics room lobby
		presence room
	}
	push_sse /b-both {
		hub b
		topics room lobby
		presence
	}
	push_sse /a-lobby {
		hub a
		topics lobby
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
	base := "http://127.0.0.1:" + port

	watch, _ := openStream(t, base+"/a")
	for _, want := range []string{"push.presence", "push.join"} {
		if b := nextBlock(t, watch); b.event != want {
			t.Fatalf("got %+v, want %s", b, want)
		}
	}
	other, leave := openStream(t, base+"/b")
	nextBlock(t, other) // its snapshot
	join := nextBlock(t, watch)
	if join.event != "push.join" || join.id != "" {
		t.Fatalf("a's stream got %+v, want b's join without an id", join)
	}
	leave()
	if b := nextBlock(t, watch); b.event != "push.leave" || b.id != "" || b.data != join.data {
		t.Fatalf("a's stream got %+v, want the leave of %s without an id", b, join.data)
	}

	// presence room: announced on room across nodes, and not listed on
	// lobby by the other node's snapshot
	openStream(t, base+"/b-quiet-lobby")
	if b := nextBlock(t, watch); b.event != "push.join" || b.id != "" {
		t.Fatalf("a's stream got %+v, want a join on room", b)
	}
	lobby, _ := openStream(t, base+"/a-lobby")
	if b := nextBlock(t, lobby); b.event != "push.presence" || strings.Count(b.data, `"connection"`) != 1 {
		t.Fatalf("lobby snapshot %+v, want its own connection only", b)
	}
	// a member's notice names all its announced topics, however few a
	// publish may name: max_publish_topics bounds publishers, not the hub
	openStream(t, base+"/b-both")
	if b := nextBlock(t, watch); b.event != "push.join" || b.id != "" {
		t.Fatalf("a's stream got %+v, want the join of a member announced on two topics", b)
	}

	hub, _ := push.LookupHub("a")
	info, err := hub.Info(context.Background())
	if err != nil || info.Events != 0 {
		t.Fatalf("the hub's history holds %d events (%v), want none", info.Events, err)
	}
}
