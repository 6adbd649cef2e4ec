package redis

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"
)

// startCluster starts a one-node Redis Cluster holding every slot.
func startCluster(t *testing.T) *redisServer {
	t.Helper()
	r := startRedisWith(t, "--save", "", "--appendonly", "no", "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf")
	c := goredis.NewClient(&goredis.Options{Addr: "127.0.0.1:" + r.port})
	defer c.Close()
	ctx := context.Background()
	if err := c.Do(ctx, "cluster", "addslotsrange", 0, 16383).Err(); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		info, _ := c.ClusterInfo(ctx).Result()
		if strings.Contains(info, "cluster_state:ok") {
			return r
		}
		if time.Now().After(deadline) {
			t.Fatalf("the cluster did not come up: %s", info)
		}
	}
}

// TestCluster: a hub on Redis Cluster publishes, delivers across nodes
// and resumes, with every key of the hub under one hash tag (the publish
// script touches several keys, which Cluster allows in one slot only).
func TestCluster(t *testing.T) {
	r := startCluster(t)
	broker := fmt.Sprintf("{\n\t\t\t\tcluster 127.0.0.1:%s\n\t\t\t}", r.port)
	a := startNode(t, broker, "")
	b := startNode(t, broker, "")
	onB := subscribe(t, b.base, "c", "")
	time.Sleep(300 * time.Millisecond)
	var ids []string
	for i := range 3 {
		status, id := a.publish("c", fmt.Sprint(i))
		if status != 200 {
			t.Fatalf("publish: %d %s", status, id)
		}
		ids = append(ids, id)
		if ev := onB.next(t, 3*time.Second); ev.ID != id {
			t.Fatalf("b got %+v, want %s", ev, id)
		}
	}
	if ev := subscribe(t, b.base, "c", ids[0]).next(t, 3*time.Second); ev.ID != ids[1] {
		t.Fatalf("resumed with %+v, want %s", ev, ids[1])
	}
	// a publisher's id is indexed under the hash tag too, for every node
	resp, err := http.PostForm(a.base+"/publish", url.Values{"topic": {"c"}, "data": {"3"}, "id": {"urn:c:3"}})
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("publish with an id: %v %v", resp, err)
	}
	resp.Body.Close()
	_, last := a.publish("c", "4")
	if ev := subscribe(t, b.base, "c", "urn:c:3").next(t, 3*time.Second); ev.ID != last {
		t.Fatalf("resumed from urn:c:3 with %+v, want %s", ev, last)
	}
	keys, err := r.client(t).Keys(context.Background(), "*").Result()
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) == 0 {
		t.Fatal("no keys written")
	}
	for _, k := range keys {
		if !strings.HasPrefix(k, "push:{default}:") {
			t.Errorf("key %q is not under the hub's hash tag", k)
		}
	}
}
