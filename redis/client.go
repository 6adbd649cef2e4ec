package redis

import (
	"cmp"
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	goredis "github.com/redis/go-redis/v9"
)

// Sentinel names a master watched by Redis Sentinel.
type Sentinel struct {
	// The name the sentinels know the master by (their "sentinel monitor
	// <name> ..." line).
	Master string `json:"master,omitempty"`

	// The sentinels' addresses, host:port. At least one.
	Addrs []string `json:"addrs,omitempty"`
}

// Redis commands get this long to answer; a publish that takes longer is
// answered 503 (not acknowledged) and never sent again.
const commandTimeout = 2 * time.Second

// newClient connects to Redis the way the config says: one server by its
// URL, a master found through Sentinel, or a Cluster. The client never
// retries a command by itself: a publish script whose answer was late may
// have run, and running it again would store the event twice.
func (b Broker) newClient() (goredis.UniversalClient, error) {
	repl := caddy.NewReplacer()
	username := repl.ReplaceKnown(b.Username, "")
	password := repl.ReplaceKnown(b.Password, "")
	ways := 0
	for _, set := range []bool{b.URL != "", b.Sentinel != nil, len(b.Cluster) > 0} {
		if set {
			ways++
		}
	}
	if ways > 1 {
		return nil, fmt.Errorf("give one of url, sentinel and cluster, not %d of them", ways)
	}
	if b.Sentinel != nil || len(b.Cluster) > 0 {
		opts := &goredis.UniversalOptions{
			Username:     username,
			Password:     password,
			DialTimeout:  commandTimeout,
			ReadTimeout:  commandTimeout,
			WriteTimeout: commandTimeout,
			MaxRetries:   -1,
		}
		if b.Sentinel != nil {
			if b.Sentinel.Master == "" || len(b.Sentinel.Addrs) == 0 {
				return nil, fmt.Errorf("sentinel needs the master's name and at least one sentinel address")
			}
			opts.MasterName, opts.Addrs = b.Sentinel.Master, expandAll(repl, b.Sentinel.Addrs)
		} else {
			opts.Addrs, opts.IsClusterMode = expandAll(repl, b.Cluster), true
		}
		return goredis.NewUniversalClient(opts), nil
	}
	url := repl.ReplaceKnown(cmp.Or(b.URL, "redis://127.0.0.1:6379/0"), "")
	opts, err := goredis.ParseURL(url)
	if err != nil {
		return nil, fmt.Errorf("redis url: %v", err)
	}
	if username != "" {
		opts.Username = username
	}
	if password != "" {
		opts.Password = password
	}
	opts.ReadTimeout, opts.WriteTimeout, opts.DialTimeout = commandTimeout, commandTimeout, commandTimeout
	opts.MaxRetries = -1
	return goredis.NewClient(opts), nil
}

func expandAll(repl *caddy.Replacer, addrs []string) []string {
	out := make([]string, len(addrs))
	for i, a := range addrs {
		out[i] = repl.ReplaceKnown(a, "")
	}
	return out
}

// keyPrefix starts every key of the hub. Under Cluster the keys must all
// hash to one slot (the publish script touches several), so the hub's part
// of the prefix is a hash tag; a single server or Sentinel keeps today's
// key names.
func (b Broker) keyPrefix(hub string) string {
	if len(b.Cluster) == 0 {
		return cmp.Or(b.KeyPrefix, "push:"+hub+":")
	}
	if b.KeyPrefix == "" {
		return "push:{" + hub + "}:"
	}
	if open := strings.IndexByte(b.KeyPrefix, '{'); open >= 0 && strings.IndexByte(b.KeyPrefix[open:], '}') > 1 {
		return b.KeyPrefix
	}
	return "{" + b.KeyPrefix + "}"
}

// scripter is where a hub's scripts run: the client itself, or under
// Cluster the master of the hub's slot, so that a publish and the WAIT
// after it share one connection and nothing re-sends the script.
func (s *store) scripter(ctx context.Context) (goredis.Cmdable, error) {
	if c, ok := s.client.(*goredis.ClusterClient); ok {
		return c.MasterForKey(ctx, s.keys[0])
	}
	return s.client, nil
}
