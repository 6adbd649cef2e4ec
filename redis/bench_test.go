package redis

import (
	"context"
	"reflect"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"go.uber.org/zap"

	"github.com/caddy-push/push"
)

func TestCaddyfile(t *testing.T) {
	for _, tc := range []struct {
		input string
		want  Broker
		err   string
	}{
		{"redis", Broker{}, ""},
		{"redis {env.REDIS_URL}", Broker{URL: "{env.REDIS_URL}"}, ""},
		{"redis rediss://u:p@h:6380/2 {\n\tkey_prefix app:\n}", Broker{URL: "rediss://u:p@h:6380/2", KeyPrefix: "app:"}, ""},
		{"redis a b", Broker{}, "wrong argument count"},
		{"redis x {\n\tcolour red\n}", Broker{}, "unrecognized broker redis option 'colour'"},
		{"redis {\n\tsentinel mymaster 10.0.0.1:26379 10.0.0.2:26379\n\tpassword {env.P}\n\twait_replicas 1 500ms\n}",
			Broker{Sentinel: &Sentinel{Master: "mymaster", Addrs: []string{"10.0.0.1:26379", "10.0.0.2:26379"}}, Password: "{env.P}", WaitReplicas: 1, WaitTimeout: caddy.Duration(500 * time.Millisecond)}, ""},
		{"redis {\n\tcluster a:7000 b:7000\n\twait_replicas 2\n}", Broker{Cluster: []string{"a:7000", "b:7000"}, WaitReplicas: 2}, ""},
		{"redis {\n\tsentinel mymaster\n}", Broker{}, "sentinel wants the master's name and at least one sentinel address"},
		{"redis {\n\tcluster\n}", Broker{}, "cluster wants at least one node address"},
		{"redis redis://h {\n\tcluster a:1\n}", Broker{}, "one of a url, sentinel and cluster"},
		{"redis {\n\tsentinel m a:1\n\tcluster a:1\n}", Broker{}, "one of a url, sentinel and cluster"},
		{"redis {\n\twait_replicas 0\n}", Broker{}, "invalid wait_replicas '0'"},
		{"redis {\n\twait_replicas 1 soon\n}", Broker{}, "invalid wait_replicas timeout 'soon'"},
		{"redis {\n\tkey_prefix a:\n\tkey_prefix b:\n}", Broker{}, "given more than once"},
	} {
		var b Broker
		err := b.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tc.input))
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%q: %v, want %q", tc.input, err, tc.err)
			}
			continue
		}
		if err != nil || !reflect.DeepEqual(b, tc.want) {
			t.Errorf("%q: %+v %v", tc.input, b, err)
		}
	}
	if _, err := (Broker{URL: "http://nope"}).OpenBroker(push.BrokerOptions{Hub: "x", Logger: zap.NewNop()}); err == nil {
		t.Error("a non-redis URL was accepted")
	}
	for _, b := range []Broker{{URL: "redis://h", Cluster: []string{"a:1"}}, {Sentinel: &Sentinel{Master: "m"}}} {
		if _, err := b.OpenBroker(push.BrokerOptions{Hub: "x", Logger: zap.NewNop()}); err == nil {
			t.Errorf("%+v was accepted", b)
		}
	}
	for _, tc := range []struct {
		b    Broker
		want string
	}{
		{Broker{}, "push:h:"},
		{Broker{KeyPrefix: "app:"}, "app:"},
		{Broker{Cluster: []string{"a:1"}}, "push:{h}:"},
		{Broker{Cluster: []string{"a:1"}, KeyPrefix: "app:{x}:"}, "app:{x}:"},
		{Broker{Cluster: []string{"a:1"}, KeyPrefix: "app:{}:"}, "{app:{}:}"},
		{Broker{Cluster: []string{"a:1"}, KeyPrefix: "app:"}, "{app:}"},
	} {
		if got := tc.b.keyPrefix("h"); got != tc.want {
			t.Errorf("key prefix of %+v: %q, want %q", tc.b, got, tc.want)
		}
	}
}

// BenchmarkBroker compares the Redis broker with the in-memory one in the
// same run: publishes per second from parallel publishers (each returns
// once stored), and the time until every published event has been handed
// to the local hub (fan-out to this node). The ratio is the claim.
func BenchmarkBroker(b *testing.B) {
	r := startRedis(b)
	for _, name := range []string{"memory", "redis"} {
		b.Run(name, func(b *testing.B) {
			var delivered atomic.Int64
			opts := push.BrokerOptions{
				Hub:     "bench" + strconv.FormatInt(time.Now().UnixNano(), 36),
				History: push.HistoryLimits{Events: 1000, TTL: time.Hour},
				Deliver: func(*push.Event) { delivered.Add(1) },
				Logger:  zap.NewNop(),
			}
			var f push.BrokerFactory = push.MemoryBroker{}
			if name == "redis" {
				f = Broker{URL: r.url()}
			}
			br, err := f.OpenBroker(opts)
			if err != nil {
				b.Fatal(err)
			}
			defer br.Close()
			time.Sleep(200 * time.Millisecond) // the listener follows Redis
			ctx := context.Background()
			b.SetParallelism(16) // 32 publishers, as many requests in flight
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				i := 0
				for pb.Next() {
					i++
					ev := &push.Event{Message: push.Message{Topics: []string{"t" + strconv.Itoa(i%100)}, Data: "payload"}}
					if err := br.Publish(ctx, ev); err != nil {
						b.Error(err)
						return
					}
				}
			})
			for delivered.Load() < int64(b.N) {
				time.Sleep(time.Millisecond)
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
		})
	}
}
