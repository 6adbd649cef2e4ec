package redis

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/caddy-push/push/internal/testport"
)

// caddyBin is cmd/caddy, built once for every test of the package.
var (
	caddyBin  string
	buildOnce sync.Once
	buildErr  error
)

func buildCaddy(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "push-caddy-")
		if err != nil {
			buildErr = err
			return
		}
		caddyBin = filepath.Join(dir, "caddy")
		out, err := exec.Command("go", "build", "-o", caddyBin, "../cmd/caddy").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("%v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatalf("building caddy: %v", buildErr)
	}
	return caddyBin
}

func freePort(t testing.TB) string { return testport.Free(t, false) }

// redisServer is a redis-server of the test's own, on a free loopback
// port, persisting every write (so a restart loses nothing acknowledged).
type redisServer struct {
	t    testing.TB
	port string
	dir  string
	args []string
	cmd  *exec.Cmd
}

// persistEveryWrite is startRedis's persistence: an append-only file
// synced at every write.
var persistEveryWrite = []string{"--save", "", "--appendonly", "yes", "--appendfsync", "always"}

func startRedis(t testing.TB) *redisServer {
	t.Helper()
	return startRedisWith(t, persistEveryWrite...)
}

// startRedisWith starts a redis-server with these settings on top of the
// test's port and directory.
func startRedisWith(t testing.TB, args ...string) *redisServer {
	t.Helper()
	if _, err := exec.LookPath("redis-server"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("redis-server is not installed (apt-get install redis-server); CI needs it")
		}
		t.Skip("redis-server is not installed; skipping")
	}
	r := &redisServer{t: t, port: freePort(t), dir: t.TempDir(), args: args}
	r.start()
	t.Cleanup(r.kill)
	return r
}

func (r *redisServer) url() string { return "redis://127.0.0.1:" + r.port + "/0" }

func (r *redisServer) start() {
	r.t.Helper()
	args := append([]string{"--bind", "127.0.0.1", "--port", r.port, "--dir", r.dir, "--maxmemory-policy", "noeviction"}, r.args...)
	r.cmd = exec.Command("redis-server", args...)
	if err := r.cmd.Start(); err != nil {
		r.t.Fatal(err)
	}
	waitDial(r.t, "127.0.0.1:"+r.port)
}

// kill stops Redis at once, as a crash would.
func (r *redisServer) kill() {
	if r.cmd != nil && r.cmd.Process != nil {
		_ = r.cmd.Process.Signal(syscall.SIGKILL)
		_ = r.cmd.Wait()
		r.cmd = nil
	}
}

func waitDial(t testing.TB, addr string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not come up", addr)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// node is a Caddy process on the shared Redis.
type node struct {
	t    *testing.T
	base string
	cmd  *exec.Cmd
}

// nodeRoutes are the routes of startNode's site.
const nodeRoutes = `push_sse /events
	push_ws /ws
	push_publish /publish {
		anonymous
	}`

func startNode(t *testing.T, redisURL, hubOptions string) *node {
	t.Helper()
	return startNodeWith(t, redisURL, hubOptions, nodeRoutes)
}

// startNodeWith starts a node whose site has these routes.
func startNodeWith(t *testing.T, redisURL, hubOptions, routes string) *node {
	t.Helper()
	port := freePort(t)
	cfg := fmt.Sprintf(`{
	admin off
	persist_config off
	push {
		hub default {
			broker redis %s
			%s
		}
	}
}
http://127.0.0.1:%s {
	%s
}
`, redisURL, hubOptions, port, routes)
	file := filepath.Join(t.TempDir(), "Caddyfile")
	if err := os.WriteFile(file, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	n := &node{t: t, base: "http://127.0.0.1:" + port}
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
	return n
}

// kill ends the node with SIGKILL, as a crash would.
func (n *node) kill() {
	if n.cmd != nil && n.cmd.Process != nil {
		_ = n.cmd.Process.Signal(syscall.SIGKILL)
		_ = n.cmd.Wait()
		n.cmd = nil
	}
}

// publish returns the status and the id (or the reason).
func (n *node) publish(topic, data string) (int, string) {
	resp, err := http.PostForm(n.base+"/publish", url.Values{"topic": {topic}, "data": {data}})
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, strings.TrimSpace(string(b))
}

// event is what a subscriber got.
type event struct{ ID, Type, Data string }

// stream is an SSE subscription read in the background.
type stream struct {
	events chan event
	ended  chan struct{}
	cancel context.CancelFunc
}

func subscribe(t *testing.T, base, topic, lastID string) *stream {
	t.Helper()
	s, err := dial(base, topic, lastID)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.cancel)
	return s
}

// dial opens an SSE subscription; the caller cancels it.
func dial(base, topic, lastID string) (*stream, error) {
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "GET", base+"/events?topic="+url.QueryEscape(topic), nil)
	if lastID != "" {
		req.Header.Set("Last-Event-ID", lastID)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		cancel()
		return nil, err
	}
	if resp.StatusCode != 200 {
		resp.Body.Close()
		cancel()
		return nil, fmt.Errorf("subscribe: %d", resp.StatusCode)
	}
	s := &stream{events: make(chan event, 10000), ended: make(chan struct{}), cancel: cancel}
	go func() {
		defer close(s.ended)
		defer resp.Body.Close()
		var ev event
		lines := bufio.NewScanner(resp.Body)
		for lines.Scan() {
			line := lines.Text()
			switch {
			case strings.HasPrefix(line, "id: "):
				ev.ID = line[4:]
			case strings.HasPrefix(line, "event: "):
				ev.Type = line[7:]
			case strings.HasPrefix(line, "data: "):
				ev.Data = line[6:]
			case line == "" && ev.Data != "":
				s.events <- ev
				ev = event{}
			case line == "":
				ev = event{}
			}
		}
	}()
	return s, nil
}

func (s *stream) next(t *testing.T, timeout time.Duration) event {
	t.Helper()
	select {
	case ev := <-s.events:
		return ev
	case <-time.After(timeout):
		t.Fatalf("no event within %v", timeout)
		return event{}
	}
}

// TestCrossNode: a client on node A gets, once, what is published on B.
func TestCrossNode(t *testing.T) {
	r := startRedis(t)
	a := startNode(t, r.url(), "")
	b := startNode(t, r.url(), "")
	onA := subscribe(t, a.base, "news", "")
	wsA, _, err := websocket.DefaultDialer.Dial(strings.Replace(a.base, "http://", "ws://", 1)+"/ws?topic=news", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer wsA.Close()
	time.Sleep(200 * time.Millisecond) // both nodes follow Redis
	status, id := b.publish("news", "from b")
	if status != 200 {
		t.Fatalf("publish on b: %d %s", status, id)
	}
	if ev := onA.next(t, 3*time.Second); ev.ID != id || ev.Data != "from b" {
		t.Fatalf("a got %+v, want %s", ev, id)
	}
	_ = wsA.SetReadDeadline(time.Now().Add(3 * time.Second))
	var frame struct{ ID, Topic, Data string }
	if err := wsA.ReadJSON(&frame); err != nil || frame.ID != id || frame.Data != "from b" {
		t.Fatalf("websocket on a got %+v, %v", frame, err)
	}
	select {
	case ev := <-onA.events:
		t.Fatalf("a got a second event %+v", ev)
	case <-time.After(300 * time.Millisecond):
	}
	// ids are comparable across nodes: resume on b from a's id
	_, id2 := a.publish("news", "from a")
	onB := subscribe(t, b.base, "news", id)
	if ev := onB.next(t, 3*time.Second); ev.ID != id2 {
		t.Fatalf("resumed on b with %+v, want %s", ev, id2)
	}
}

// TestNodeDies: node A is killed while B keeps publishing; the client
// moves to B with its last id and has every event exactly once.
func TestNodeDies(t *testing.T) {
	r := startRedis(t)
	a := startNode(t, r.url(), "")
	b := startNode(t, r.url(), "")
	s := subscribe(t, a.base, "feed", "")
	time.Sleep(200 * time.Millisecond)
	const n = 60
	publisherDone := make(chan struct{})
	defer func() { <-publisherDone }() // before the nodes are killed
	go func() {
		defer close(publisherDone)
		for i := range n {
			if status, id := b.publish("feed", strconv.Itoa(i)); status != 200 {
				t.Errorf("publish %d: %d %s", i, status, id)
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
	}()
	var got []event
	for len(got) < 20 {
		got = append(got, s.next(t, 3*time.Second))
	}
	a.kill()
	// drain what arrived before the stream broke
	<-s.ended
	for len(s.events) > 0 {
		got = append(got, <-s.events)
	}
	s = subscribe(t, b.base, "feed", got[len(got)-1].ID)
	for len(got) < n {
		got = append(got, s.next(t, 5*time.Second))
	}
	for i, ev := range got {
		if ev.Data != strconv.Itoa(i) {
			t.Fatalf("event %d is %+v: lost, duplicated or out of order", i, ev)
		}
	}
}

// TestRedisOutage: Redis dies for a while. Publishes meanwhile get 503,
// subscribers stay connected, and after Redis returns both nodes deliver
// every acknowledged event exactly once.
func TestRedisOutage(t *testing.T) {
	r := startRedis(t)
	a := startNode(t, r.url(), "")
	b := startNode(t, r.url(), "")
	onA := subscribe(t, a.base, "o", "")
	onB := subscribe(t, b.base, "o", "")
	time.Sleep(200 * time.Millisecond)
	var acked []string
	publish := func(i int) {
		node := a
		if i%2 == 1 {
			node = b
		}
		status, body := node.publish("o", strconv.Itoa(i))
		switch status {
		case 200:
			acked = append(acked, strconv.Itoa(i))
		case 503:
			if !strings.Contains(body, "unavailable") {
				t.Fatalf("publish %d: 503 without a clear reason: %s", i, body)
			}
		default:
			t.Fatalf("publish %d: %d %s", i, status, body)
		}
	}
	for i := range 10 {
		publish(i)
	}
	r.kill()
	refused := 0
	for i := 10; i < 16; i++ {
		before := len(acked)
		publish(i)
		if len(acked) == before {
			refused++
		}
	}
	if refused != 6 {
		t.Fatalf("%d of 6 publishes were refused while Redis was down, want all", refused)
	}
	r.start()
	// publishing succeeds again once the nodes reconnect
	deadline := time.Now().Add(10 * time.Second)
	for i := 16; time.Now().Before(deadline); i++ {
		publish(i)
		if len(acked) > 0 && acked[len(acked)-1] == strconv.Itoa(i) && i > 20 {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	for name, s := range map[string]*stream{"a": onA, "b": onB} {
		for i, want := range acked {
			if ev := s.next(t, 10*time.Second); ev.Data != want {
				t.Fatalf("node %s event %d: %+v, want %s", name, i, ev, want)
			}
		}
		select {
		case <-s.ended:
			t.Fatalf("node %s: the stream ended during the outage", name)
		case ev := <-s.events:
			t.Fatalf("node %s: extra event %+v", name, ev)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// TestHistoryTrimming: Redis keeps history by count and age; a client
// resuming from a trimmed id gets push.reset, one within history does not.
func TestHistoryTrimming(t *testing.T) {
	r := startRedis(t)
	a := startNode(t, r.url(), "history 3\n\t\t\thistory_ttl 1s")
	var ids []string
	for i := range 6 {
		status, id := a.publish("h", strconv.Itoa(i))
		if status != 200 {
			t.Fatalf("publish: %d %s", status, id)
		}
		ids = append(ids, id)
	}
	if ev := subscribe(t, a.base, "h", ids[1]).next(t, 3*time.Second); ev.Type != "push.reset" {
		t.Fatalf("trimmed by count: %+v, want push.reset", ev)
	}
	if ev := subscribe(t, a.base, "h", ids[2]).next(t, 3*time.Second); ev.Data != "3" {
		t.Fatalf("within history: %+v, want event 3", ev)
	}
	time.Sleep(1500 * time.Millisecond)
	if ev := subscribe(t, a.base, "h", ids[3]).next(t, 3*time.Second); ev.Type != "push.reset" {
		t.Fatalf("trimmed by age: %+v, want push.reset", ev)
	}
}

// TestRedisLosesData: Redis comes back empty (a restart without
// persistence). The node notices the hub's new epoch and ends its streams;
// a client resuming with its old id gets push.reset, then new events.
func TestRedisLosesData(t *testing.T) {
	r := startRedis(t)
	a := startNode(t, r.url(), "")
	s := subscribe(t, a.base, "x", "")
	time.Sleep(200 * time.Millisecond)
	var last string
	for i := range 3 {
		status, id := a.publish("x", strconv.Itoa(i))
		if status != 200 {
			t.Fatalf("publish: %d %s", status, id)
		}
		last = s.next(t, 3*time.Second).ID
	}
	r.kill()
	if err := os.RemoveAll(r.dir); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(r.dir, 0o755); err != nil {
		t.Fatal(err)
	}
	r.start()
	select {
	case <-s.ended:
	case <-time.After(15 * time.Second):
		t.Fatal("the stream did not end after Redis lost the hub's events")
	}
	s = subscribe(t, a.base, "x", last)
	if ev := s.next(t, 3*time.Second); ev.Type != "push.reset" {
		t.Fatalf("resumed with %+v, want push.reset", ev)
	}
	status, id := a.publish("x", "after")
	if status != 200 || strings.SplitN(id, "-", 2)[0] == strings.SplitN(last, "-", 2)[0] {
		t.Fatalf("publish after the loss: %d %q (before: %q), want a new epoch", status, id, last)
	}
	if ev := s.next(t, 3*time.Second); ev.ID != id || ev.Data != "after" {
		t.Fatalf("got %+v, want %s", ev, id)
	}
}
