package redis

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/caddy-push/push"
)

// startSentinel starts a redis-sentinel watching the master at port as
// "m", quick to call it down.
func startSentinel(t *testing.T, masterPort string) string {
	t.Helper()
	if _, err := exec.LookPath("redis-sentinel"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("redis-sentinel is not installed (apt-get install redis-sentinel); CI needs it")
		}
		t.Skip("redis-sentinel is not installed; skipping")
	}
	port := freePort(t)
	dir := t.TempDir()
	conf := filepath.Join(dir, "sentinel.conf")
	cfg := fmt.Sprintf(`bind 127.0.0.1
port %s
dir %s
sentinel monitor m 127.0.0.1 %s 1
sentinel down-after-milliseconds m 500
sentinel failover-timeout m 4000
sentinel parallel-syncs m 2
`, port, dir, masterPort)
	if err := os.WriteFile(conf, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("redis-sentinel", conf)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGKILL)
		_ = cmd.Wait()
	})
	waitDial(t, "127.0.0.1:"+port)
	return "127.0.0.1:" + port
}

// TestSentinelFailover kills the master under a steady publish load with
// wait_replicas 1. Every publish answered 200 reaches a subscriber on
// another node once and in order; publishes during the switch get 503;
// the nodes find the new master by themselves; and a client resuming
// from an acknowledged id before the failover loses nothing.
func TestSentinelFailover(t *testing.T) {
	snapshotOnly := []string{"--save", "", "--appendonly", "no"}
	master := startRedisWith(t, snapshotOnly...)
	for range 2 {
		startRedisWith(t, append(snapshotOnly, "--replicaof", "127.0.0.1", master.port)...)
	}
	sentinel := startSentinel(t, master.port)
	broker := fmt.Sprintf("{\n\t\t\t\tsentinel m %s\n\t\t\t\twait_replicas 1 1s\n\t\t\t}", sentinel)
	a := startNode(t, broker, "")
	b := startNode(t, broker, "")

	// replicas attached: a publish is acknowledged
	deadline := time.Now().Add(15 * time.Second)
	for {
		status, body := a.publish("warmup", "x")
		if status == 200 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no publish acknowledged before the failover: %d %s", status, body)
		}
		time.Sleep(100 * time.Millisecond)
	}

	var (
		mu      sync.Mutex
		acked   []int
		ackedID = map[int]string{}
		refused int
	)
	count := func() (int, int) {
		mu.Lock()
		defer mu.Unlock()
		return len(acked), refused
	}

	// a client on b follows the topic throughout, resuming by itself
	var got []event
	var gotMu sync.Mutex
	follower := make(chan struct{})
	followCtx, endFollow := context.WithCancel(context.Background())
	defer endFollow()
	go func() {
		defer close(follower)
		last := ""
		for followCtx.Err() == nil {
			s, err := dial(b.base, "f", last)
			if err != nil {
				time.Sleep(100 * time.Millisecond)
				continue
			}
			for ended := false; !ended; {
				select {
				case ev := <-s.events:
					gotMu.Lock()
					got = append(got, ev)
					gotMu.Unlock()
					if ev.ID != "" {
						last = ev.ID
					}
				case <-s.ended:
					ended = true
				case <-followCtx.Done():
					s.cancel()
					return
				}
			}
		}
	}()

	// the follower's first stream starts from the head: publish once it is open
	time.Sleep(300 * time.Millisecond)
	stop := make(chan struct{})
	published := make(chan struct{})
	go func() {
		defer close(published)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			status, body := a.publish("f", strconv.Itoa(i))
			mu.Lock()
			switch status {
			case 200:
				acked = append(acked, i)
				ackedID[i] = body
			case 503:
				refused++
			default:
				t.Errorf("publish %d: %d %s (want 200 or 503)", i, status, body)
			}
			mu.Unlock()
			time.Sleep(10 * time.Millisecond)
		}
	}()
	for n, _ := count(); n < 30; n, _ = count() {
		time.Sleep(20 * time.Millisecond)
	}
	before, _ := count()
	master.kill()
	// carry on until the nodes publish through the new master for a while
	deadline = time.Now().Add(30 * time.Second)
	for n, _ := count(); n < before+50; n, _ = count() {
		if time.Now().After(deadline) {
			t.Fatalf("publishing did not resume after the failover: %d acknowledged before, %d in all", before, n)
		}
		time.Sleep(50 * time.Millisecond)
	}
	close(stop)
	<-published
	_, refused = count()
	t.Logf("%d publishes acknowledged, %d answered 503 during the switch", len(acked), refused)

	// every acknowledged event arrives, once, in order
	deadline = time.Now().Add(10 * time.Second)
	for {
		gotMu.Lock()
		data := map[string]int{}
		var order []int
		for _, ev := range got {
			if ev.Type != "" {
				continue
			}
			data[ev.Data]++
			n, _ := strconv.Atoi(ev.Data)
			order = append(order, n)
		}
		gotMu.Unlock()
		missing := -1
		for _, i := range acked {
			if data[strconv.Itoa(i)] == 0 {
				missing = i
				break
			}
		}
		if missing < 0 {
			for d, n := range data {
				if n > 1 {
					t.Fatalf("event %s delivered %d times", d, n)
				}
			}
			for i := 1; i < len(order); i++ {
				if order[i] <= order[i-1] {
					t.Fatalf("event %d delivered after %d", order[i], order[i-1])
				}
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("acknowledged event %d never delivered", missing)
		}
		time.Sleep(100 * time.Millisecond)
	}
	endFollow()
	<-follower

	// a client resuming from an acknowledged id before the failover gets
	// every acknowledged event after it, with no push.reset
	from := acked[before/2]
	s := subscribe(t, a.base, "f", ackedID[from])
	for _, i := range acked {
		if i > from {
			ev := s.next(t, 5*time.Second)
			for ev.Data != strconv.Itoa(i) {
				n, err := strconv.Atoi(ev.Data)
				if ev.Type != "" || err != nil || n > i {
					t.Fatalf("resumed from %d: got %+v, want %d", from, ev, i)
				}
				ev = s.next(t, 5*time.Second) // an event refused with 503 that was kept after all
			}
		}
	}
}

// TestWaitReplicasTimeout: with no replica to confirm it, a publish is
// answered 503 "not acknowledged"; retried with the same Idempotency-Key
// once a replica is there, it is answered 200 with the first attempt's
// id, and the event exists once.
func TestWaitReplicasTimeout(t *testing.T) {
	master := startRedisWith(t, "--save", "", "--appendonly", "no")
	a := startNode(t, master.url()+" {\n\t\t\t\twait_replicas 1 200ms\n\t\t\t}", "")
	publish := func() (int, string) {
		req, _ := http.NewRequest("POST", a.base+"/publish", strings.NewReader("topic=w&data=once"))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.Header.Set("Idempotency-Key", "k1")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, strings.TrimSpace(string(body))
	}
	status, body := publish()
	if status != 503 || !strings.Contains(body, "0 of 1 replicas") || !strings.Contains(body, "Idempotency-Key") {
		t.Fatalf("publish with no replica: %d %q, want 503 naming the replicas and the retry", status, body)
	}
	startRedisWith(t, "--save", "", "--appendonly", "no", "--replicaof", "127.0.0.1", master.port)
	var id string
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		if status, id = publish(); status == 200 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the retry was never acknowledged: %d %s", status, id)
		}
	}
	n, err := master.client(t).XLen(context.Background(), "push:default:t:w").Result()
	if err != nil || n != 1 {
		t.Fatalf("the topic holds %d events (%v), want the one", n, err)
	}
	if _, seq, ok := push.ParseID(id); !ok || seq != 1 {
		t.Fatalf("the retry's id %q is not the first attempt's (seq 1)", id)
	}
}
