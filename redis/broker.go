// Package redis is caddy-push's Redis backend (push.brokers.redis): a hub
// shared by every Caddy node that points at the same Redis. Events are
// stored in a Redis Stream per topic by one Lua script, which also fans
// them out over Pub/Sub; each node holds one subscription and catches up
// from a hub-wide stream after losing Redis.
package redis

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math/big"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	goredis "github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"github.com/caddy-push/push"
)

func init() {
	caddy.RegisterModule(Broker{})
}

// Broker is the push.brokers.redis module.
type Broker struct {
	// The Redis server: redis://[user:password@]host:port/db, or rediss://
	// for TLS. Placeholders are expanded, so {env.REDIS_URL} works. Give
	// this, sentinel or cluster. Default: redis://127.0.0.1:6379/0.
	URL string `json:"url,omitempty"`

	// A master found through Redis Sentinel, instead of url: after a
	// failover the hub follows the new master by itself. Default: none.
	Sentinel *Sentinel `json:"sentinel,omitempty"`

	// The addresses (host:port) of some Redis Cluster nodes, instead of
	// url. The hub's keys share one hash slot. Default: none.
	Cluster []string `json:"cluster,omitempty"`

	// The user and password for sentinel or cluster nodes (a url carries
	// its own). Placeholders are expanded. Default: none.
	Username string `json:"username,omitempty"`
	Password string `json:"password,omitempty"`

	// The number of replicas that must hold an event before its publish is
	// answered 200 (Redis WAIT), so that a failover cannot lose an
	// acknowledged event. Default: 0 (the master's answer is enough).
	WaitReplicas int `json:"wait_replicas,omitempty"`

	// How long a publish waits for wait_replicas; past it the publish is
	// answered 503 (not acknowledged: it may or may not be kept; retry
	// with the same Idempotency-Key). Default: 1s.
	WaitTimeout caddy.Duration `json:"wait_timeout,omitempty"`

	// The start of every key the hub uses, so several hubs and apps can
	// share one Redis. Under cluster it must hold a hash tag ({...}), or
	// it is wrapped in one. Default: push:<hub name>: (push:{<hub name>}:
	// under cluster).
	KeyPrefix string `json:"key_prefix,omitempty"`

	// How often this node renews its entry in the hub's roster (who is
	// connected where, for presence and the admin API); a node that misses
	// three is taken for dead and its members are forgotten. Default: 5s.
	Heartbeat caddy.Duration `json:"heartbeat,omitempty"`
}

// CaddyModule returns the Caddy module information.
func (Broker) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "push.brokers.redis",
		New: func() caddy.Module { return new(Broker) },
	}
}

// UnmarshalCaddyfile reads
//
//	broker redis [<url>] {
//		sentinel      <master> <addr...>
//		cluster       <addr...>
//		username      <user>
//		password      <password>
//		wait_replicas <n> [<timeout>]
//		key_prefix    <prefix>
//		heartbeat     <duration>
//	}
func (b *Broker) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // consume broker name
	if d.NextArg() {
		b.URL = d.Val()
	}
	if d.NextArg() {
		return d.ArgErr()
	}
	seen := map[string]bool{}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		opt := d.Val()
		if seen[opt] {
			return d.Errf("broker redis option '%s' given more than once", opt)
		}
		seen[opt] = true
		args := d.RemainingArgs()
		one := func(dst *string) error {
			if len(args) != 1 {
				return d.ArgErr()
			}
			*dst = args[0]
			return nil
		}
		var err error
		switch opt {
		case "sentinel":
			if len(args) < 2 {
				return d.Errf("sentinel wants the master's name and at least one sentinel address")
			}
			b.Sentinel = &Sentinel{Master: args[0], Addrs: args[1:]}
		case "cluster":
			if len(args) == 0 {
				return d.Errf("cluster wants at least one node address")
			}
			b.Cluster = args
		case "username":
			err = one(&b.Username)
		case "password":
			err = one(&b.Password)
		case "key_prefix":
			err = one(&b.KeyPrefix)
		case "wait_replicas":
			if len(args) < 1 || len(args) > 2 {
				return d.ArgErr()
			}
			n, convErr := strconv.Atoi(args[0])
			if convErr != nil || n < 1 {
				return d.Errf("invalid wait_replicas '%s': want a number of replicas, 1 or more", args[0])
			}
			b.WaitReplicas = n
			if len(args) == 2 {
				v, convErr := caddy.ParseDuration(args[1])
				if convErr != nil || v <= 0 {
					return d.Errf("invalid wait_replicas timeout '%s': want a duration such as 1s", args[1])
				}
				b.WaitTimeout = caddy.Duration(v)
			}
		case "heartbeat":
			var v string
			if err = one(&v); err != nil {
				return err
			}
			dur, convErr := caddy.ParseDuration(v)
			if convErr != nil || dur <= 0 {
				return d.Errf("invalid heartbeat '%s': want a duration such as 5s", v)
			}
			b.Heartbeat = caddy.Duration(dur)
		default:
			return d.Errf("unrecognized broker redis option '%s'", opt)
		}
		if err != nil {
			return err
		}
	}
	if b.URL != "" && (b.Sentinel != nil || len(b.Cluster) > 0) || b.Sentinel != nil && len(b.Cluster) > 0 {
		return d.Errf("broker redis takes one of a url, sentinel and cluster")
	}
	return nil
}

// OpenBroker connects the hub to Redis. The client connects lazily, so
// this stays cheap (caddy validate calls it).
func (b Broker) OpenBroker(o push.BrokerOptions) (push.Broker, error) {
	client, err := b.newClient()
	if err != nil {
		return nil, err
	}
	if o.Resync == nil {
		o.Resync = func() {}
	}
	if o.Command == nil {
		o.Command = func(push.Command) int { return 0 }
	}
	if o.Stats == nil {
		o.Stats = func() push.NodeStats { return push.NodeStats{} }
	}
	if o.Joined == nil {
		o.Joined = func() []push.Joined { return nil }
	}
	if o.NodeLost == nil {
		o.NodeLost = func(string, []push.Joined) {}
	}
	if o.Rejoined == nil {
		o.Rejoined = func([]push.Joined) {}
	}
	if b.Heartbeat < 0 || b.WaitReplicas < 0 || b.WaitTimeout < 0 {
		_ = client.Close()
		return nil, fmt.Errorf("heartbeat, wait_replicas and wait_timeout must not be negative")
	}
	prefix := b.keyPrefix(o.Hub)
	ctx, cancel := context.WithCancel(context.Background())
	s := &store{
		client:   client,
		prefix:   prefix,
		keys:     []string{prefix + "seq"},
		replicas: b.WaitReplicas,
		waitFor:  cmp.Or(time.Duration(b.WaitTimeout), time.Second),
		deliver:  o.Deliver,
		resync:   o.Resync,
		command:  o.Command,
		node:     newEpoch(),
		logger:   o.Logger,
		limits:   o.History,
		cancel:   cancel,
		done:     make(chan struct{}),
		roster: roster{heartbeat: cmp.Or(time.Duration(b.Heartbeat), DefaultHeartbeat), stats: o.Stats, joined: o.Joined,
			nodeLost: o.NodeLost, rejoined: o.Rejoined, ops: make(chan rosterOp, 4096), asks: make(map[string]chan reply)},
		rosterDone: make(chan struct{}),
	}
	// the node follows the hub from its head as it opens, before any of
	// its subscriptions can exist: an event stored between a first
	// subscription and the listener's own subscribing is then caught up,
	// not skipped. Without Redis now, the listener starts where Redis is
	// when it comes (no subscription can have read a backlog meanwhile).
	var start *cursor
	hctx, hcancel := context.WithTimeout(ctx, time.Second)
	if epoch, head, err := s.head(hctx); err == nil {
		start = &cursor{epoch: epoch, seq: head}
	}
	hcancel()
	go s.listen(ctx, start)
	go s.runRoster(ctx)
	return s, nil
}

// store is one hub's connection to Redis.
type store struct {
	client   goredis.UniversalClient
	prefix   string
	keys     []string // the scripts' KEYS: one key of the hub's, which routes them under Cluster
	replicas int      // wait_replicas
	waitFor  time.Duration
	deliver  func(*push.Event)
	resync   func()
	command  func(push.Command) int
	node     string // tells this node's own broadcasts from others'
	logger   *zap.Logger
	cancel   context.CancelFunc
	done     chan struct{}

	mu     sync.Mutex
	limits push.HistoryLimits
	ps     *goredis.PubSub // the live subscription, which Close must close

	roster     roster
	rosterDone chan struct{}
}

// Keys, under the prefix: epoch, run and lineage (epoch.go), seq (the
// counter), t:<topic> (a stream per topic), tr:<topic> (the newest seq
// trimmed away from it), both expiring history_ttl after the topic's
// last event; all (the hub-wide stream, for catching up), key:<hex id>
// (an idempotency key: "<fingerprint> <epoch> <seq>" of its event,
// expiring with the window), id:<custom id> (a publisher's own event id:
// "<epoch> <seq>" of the earliest event published with it, see
// idIndexTTL), the events channel and the control channel (commands such
// as pause, for every node). Versions before tr:<topic>
// kept the trimmed seqs in one hash, trimmed, which is still read.
func (s *store) key(name string) string { return s.prefix + name }

// publishScript stores an event in every topic's stream and the hub-wide
// stream, trims them, and publishes it, atomically. Stream entry ids are
// "<seq>-1", so streams sort by seq; ages are kept in the entries. The
// epoch is read in the script (epochLua), so an id never pairs a
// sequence number with the epoch of an earlier Redis (one that lost its
// data, or rolled back).
//
// With an idempotency key (ARGV[8], its fingerprint ARGV[9] and window
// ARGV[10] in ms), the key is checked first and stored with the event,
// in the same step: a key already stored answers {seq, epoch, 1} of its
// event (a replay) or {0, "", 2} when its fingerprint differs, and
// nothing is published; so two nodes given the same key publish once. A
// replay still writes the key again (its value and expiry unchanged), so
// that a WAIT after it covers the first attempt's event. ARGV[11] is "1"
// for a private event (field x of the stored event, left out of a public
// one, so public events read as they did). ARGV[12] is the publisher's
// id of the event, or "" (field i, left out when empty), indexed in
// id:<id> unless an earlier event has it, for history_ttl or ARGV[13] ms
// (idIndexTTL); the topics follow.
var publishScript = goredis.NewScript(epochLua + `
local p, hist, ttl = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local ikey = ARGV[8] ~= '' and p .. 'key:' .. ARGV[8]
if ikey then
  local seen = redis.call('GET', ikey)
  if seen then
    local fp, e, s = string.match(seen, '^(%x+) (%S+) (%d+)$')
    if fp ~= ARGV[9] then return {0, '', 2} end
    redis.call('SET', ikey, seen, 'KEEPTTL')
    return {tonumber(s), e, 1}
  end
end
local epoch = epochOf(p, ARGV[7])
local seq = redis.call('INCR', p..'seq')
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local topics = {}
for i = 14, #ARGV do topics[#topics + 1] = ARGV[i] end
local custom = ARGV[12] ~= '' and ARGV[12] or nil
local ev = cjson.encode({p = epoch, s = seq, t = now, k = topics, e = ARGV[4], d = ARGV[5], r = tonumber(ARGV[6]), x = ARGV[11] == '1' or nil, i = custom})
local id = seq .. '-1'
local function mark(topic, trimmed)
  if ttl > 0 then
    redis.call('SET', p .. 'tr:' .. topic, trimmed, 'PX', ttl)
  else
    redis.call('SET', p .. 'tr:' .. topic, trimmed)
  end
end
for _, topic in ipairs(topics) do
  local key = p .. 't:' .. topic
  if hist > 0 then
    redis.call('XADD', key, id, 't', now, 'v', ev)
    local over = redis.call('XLEN', key) - hist
    if over > 0 then
      local gone = redis.call('XRANGE', key, '-', '+', 'COUNT', over)
      mark(topic, string.match(gone[#gone][1], '^(%d+)'))
      redis.call('XTRIM', key, 'MAXLEN', hist)
    end
    if ttl > 0 then
      local cut = {}
      for _, e in ipairs(redis.call('XRANGE', key, '-', '+', 'COUNT', 100)) do
        if tonumber(e[2][2]) >= now - ttl then break end
        cut[#cut + 1] = e[1]
      end
      if #cut > 0 then
        redis.call('XDEL', key, unpack(cut))
        mark(topic, string.match(cut[#cut], '^(%d+)'))
      end
      redis.call('PEXPIRE', key, ttl)
      redis.call('PEXPIRE', p .. 'tr:' .. topic, ttl)
    end
  else
    mark(topic, seq)
  end
end
redis.call('XADD', p .. 'all', id, 'v', ev)
redis.call('XTRIM', p .. 'all', 'MAXLEN', '~', math.max(10000, hist * 10))
redis.call('PUBLISH', p .. 'events', ev)
if ikey then
  redis.call('SET', ikey, ARGV[9] .. ' ' .. epoch .. ' ' .. seq, 'PX', ARGV[10])
end
if custom then
  redis.call('SET', p .. 'id:' .. custom, epoch .. ' ' .. seq, 'NX', 'PX', ttl > 0 and ttl or ARGV[13])
end
return {seq, epoch}
`)

// wireEvent is an event as stored and published in Redis.
type wireEvent struct {
	Epoch  string   `json:"p"`
	Seq    uint64   `json:"s"`
	Time   int64    `json:"t"`
	Topics []string `json:"k"`
	Type   string   `json:"e"`
	Data   string   `json:"d"`
	Retry  int64    `json:"r"`
	// Private is absent from public events, which older nodes stored
	// without it.
	Private bool `json:"x,omitempty"`
	// CustomID is the publisher's id of the event, absent when it gave
	// none (as from older nodes).
	CustomID string `json:"i,omitempty"`
}

// idIndexTTL is how long the index of publishers' ids (id:<custom id>)
// keeps an id when history_ttl is 0: events then leave history by count
// alone, which Redis cannot expire a key by, so the entry of an id whose
// events are gone lives on this long (a resume from it is then one from
// its event's hub id: a reset if events after it left history too). With
// history_ttl, the entry expires with the event it names.
const idIndexTTL = 24 * time.Hour

// newEpoch is a candidate epoch for a hub Redis has none for; the
// scripts keep the first one set.
func newEpoch() string {
	n, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	return strconv.FormatInt(n.Int64(), 36)
}

func unavailable(err error) error {
	return fmt.Errorf("%w: redis: %v", push.ErrUnavailable, err)
}

func (s *store) Publish(ctx context.Context, ev *push.Event) error {
	_, err := s.publish(ctx, ev, nil)
	return err
}

// PublishOnce checks and stores the key in the script that stores the
// event, so a retry that reaches another node is deduplicated too, and
// nothing can come between "stored" and "key remembered".
func (s *store) PublishOnce(ctx context.Context, ev *push.Event, k push.IdempotencyKey) (string, error) {
	return s.publish(ctx, ev, &k)
}

func (s *store) publish(ctx context.Context, ev *push.Event, k *push.IdempotencyKey) (string, error) {
	s.mu.Lock()
	l := s.limits
	s.mu.Unlock()
	var id, fp string
	var window int64
	if k != nil {
		id, fp, window = hex.EncodeToString(k.ID[:]), hex.EncodeToString(k.Fingerprint[:]), max(k.Window.Milliseconds(), 1)
	}
	private := ""
	if ev.Private {
		private = "1"
	}
	args := make([]any, 0, 13+len(ev.Topics))
	args = append(args, s.prefix, l.Events, l.TTL.Milliseconds(), ev.Type, ev.Data, ev.Retry, newEpoch(), id, fp, window, private,
		ev.CustomID, idIndexTTL.Milliseconds())
	for _, t := range ev.Topics {
		args = append(args, t)
	}
	res, err := s.runPublish(ctx, args)
	if err != nil {
		return "", err
	}
	outcome := int64(0)
	if len(res) == 3 {
		outcome, _ = res[2].(int64)
		res = res[:2]
	}
	if outcome == 2 {
		return "", push.ErrIdempotencyConflict
	}
	seq, epoch, err := seqAndEpoch(res)
	if err != nil {
		return "", unavailable(err)
	}
	if outcome == 1 {
		return push.FormatID(epoch, seq), nil
	}
	ev.Seq, ev.ID, ev.Time = seq, push.FormatID(epoch, seq), time.Now()
	return "", nil
}

// runPublish runs the publish script once, never again on its own (a
// late answer may come from a script that ran), and with wait_replicas
// waits on the same connection until that many replicas hold what it
// wrote: WAIT counts the connection's own writes.
func (s *store) runPublish(ctx context.Context, args []any) ([]any, error) {
	c, err := s.scripter(ctx)
	if err != nil {
		return nil, unavailable(err)
	}
	if s.replicas == 0 {
		res, err := publishScript.Run(ctx, c, s.keys, args...).Slice()
		if err != nil {
			return nil, unavailable(err)
		}
		return res, nil
	}
	for loaded := false; ; loaded = true {
		pipe := c.Pipeline()
		script := pipe.EvalSha(ctx, publishScript.Hash(), s.keys, args...)
		wait := pipe.Do(ctx, "wait", s.replicas, s.waitFor.Milliseconds())
		_, _ = pipe.Exec(ctx)
		res, err := script.Slice()
		if err != nil && !loaded && goredis.HasErrorPrefix(err, "NOSCRIPT") {
			if err := publishScript.Load(ctx, c).Err(); err != nil {
				return nil, unavailable(err)
			}
			continue
		}
		if err != nil {
			return nil, unavailable(err)
		}
		n, err := wait.Int64()
		if err != nil {
			return nil, unavailable(fmt.Errorf("waiting for replicas: %v", err))
		}
		if n < int64(s.replicas) {
			return nil, fmt.Errorf("%w: redis: %d of %d replicas had the event within %v, so it is not acknowledged (retry with the same Idempotency-Key)",
				push.ErrUnavailable, n, s.replicas, s.waitFor)
		}
		return res, nil
	}
}

// control is a message on the control channel, from the node that sent
// it: a command (asking for an answer when Ask is set), or an answer to
// one (Answer, with its count).
type control struct {
	Node    string       `json:"n"`
	Command push.Command `json:"c"`
	Ask     string       `json:"a,omitempty"`
	Answer  string       `json:"r,omitempty"`
	Count   int          `json:"k,omitempty"`
}

// Broadcast hands c to every other node following the hub. Like Pub/Sub,
// it reaches the nodes connected now: a node away from Redis misses it.
func (s *store) Broadcast(ctx context.Context, c push.Command) error {
	return s.send(ctx, control{Node: s.node, Command: c})
}

func (s *store) send(ctx context.Context, c control) error {
	payload, err := json.Marshal(c)
	if err != nil {
		return err
	}
	if err := s.client.Publish(ctx, s.key("control"), payload).Err(); err != nil {
		return unavailable(err)
	}
	return nil
}

// receiveControl carries out another node's command, and answers it when
// asked to; or hands an answer to the Ask that waits for it.
func (s *store) receiveControl(ctx context.Context, payload string) {
	var c control
	if err := json.Unmarshal([]byte(payload), &c); err != nil {
		s.logger.Warn("unreadable command on the control channel", zap.Error(err))
		return
	}
	switch {
	case c.Node == s.node:
	case c.Answer != "":
		s.answer(c)
	default:
		n := s.command(c.Command)
		if c.Ask != "" {
			ctx, cancel := context.WithTimeout(ctx, time.Second)
			defer cancel()
			if err := s.send(ctx, control{Node: s.node, Answer: c.Ask, Count: n}); err != nil {
				s.logger.Warn("command not answered", zap.Error(err))
			}
		}
	}
}

// seqAndEpoch reads the scripts' answer {seq, epoch}.
func seqAndEpoch(res []any) (uint64, string, error) {
	if len(res) == 2 {
		seq, ok1 := res[0].(int64)
		epoch, ok2 := res[1].(string)
		if ok1 && ok2 && seq >= 0 {
			return uint64(seq), epoch, nil
		}
	}
	return 0, "", fmt.Errorf("unexpected script answer %v", res)
}

func (s *store) Replay(ctx context.Context, topics []string, lastEventID string) (push.Backlog, error) {
	epoch, head, err := s.head(ctx)
	if err != nil {
		return push.Backlog{}, unavailable(err)
	}
	b := push.Backlog{Head: push.FormatID(epoch, head), HeadSeq: head}
	if lastEventID == "" {
		return b, nil
	}
	// a client that asks for the earliest asks for what is left: what
	// history dropped is no gap in it
	earliest := lastEventID == push.EarliestID
	var after uint64
	if !earliest {
		var reset string
		after, reset, err = s.resumePoint(ctx, epoch, head, lastEventID)
		if err != nil {
			return push.Backlog{}, err
		}
		if reset != "" {
			b.Reset = reset
			return b, nil
		}
	}
	s.mu.Lock()
	ttl := s.limits.TTL
	s.mu.Unlock()
	// one transaction, so that no publish trims a stream between the
	// read of its trim mark and the read of its entries
	pipe := s.client.TxPipeline()
	legacy := pipe.HMGet(ctx, s.key("trimmed"), topics...)
	marks := make([]*goredis.StringCmd, len(topics))
	ranges := make([]*goredis.XMessageSliceCmd, len(topics))
	exist := make([]*goredis.IntCmd, len(topics))
	for i, t := range topics {
		marks[i] = pipe.Get(ctx, s.key("tr:"+t))
		ranges[i] = pipe.XRange(ctx, s.key("t:"+t), streamAfter(after), "+")
		exist[i] = pipe.Exists(ctx, s.key("t:"+t))
	}
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, goredis.Nil) {
		return push.Backlog{}, unavailable(err)
	}
	trimmed := legacy.Val()
	for _, m := range marks {
		trimmed = append(trimmed, m.Val())
	}
	for _, v := range trimmed {
		if !earliest && markSeq(v) > after {
			b.Reset = "events after this id are no longer in history"
			return b, nil
		}
	}
	expired := false
	for i := range topics {
		expired = expired || exist[i].Val() == 0
		for _, en := range ranges[i].Val() {
			ev, err := decode(en.Values["v"])
			if err != nil {
				continue
			}
			// stored after head was read, so it comes live; replaying it
			// would skip the live events between head and it
			if ev.Seq > head {
				break
			}
			// a topic nobody published to since is trimmed by age here
			if ttl > 0 && time.Since(ev.Time) > ttl {
				if earliest {
					continue
				}
				return push.Backlog{Head: b.Head, HeadSeq: head, Reset: "events after this id are no longer in history"}, nil
			}
			b.Events = append(b.Events, ev)
		}
	}
	if expired && ttl > 0 && !earliest {
		gone, err := s.mayHaveExpired(ctx, after, ttl)
		if err != nil {
			return push.Backlog{}, unavailable(err)
		}
		if gone {
			return push.Backlog{Head: b.Head, HeadSeq: head, Reset: "events after this id are no longer in history"}, nil
		}
	}
	slices.SortFunc(b.Events, func(x, y *push.Event) int { return cmp.Compare(x.Seq, y.Seq) })
	b.Events = slices.CompactFunc(b.Events, func(x, y *push.Event) bool { return x.Seq == y.Seq })
	return b, nil
}

// resumePoint reads a client's last event id against the hub's epoch and
// head: the seq to replay after, or why the id cannot be resumed from.
func (s *store) resumePoint(ctx context.Context, epoch string, head uint64, lastEventID string) (after uint64, reset string, err error) {
	e, after, ok := push.ParseID(lastEventID)
	if !ok || after > head {
		return 0, "unknown event id", nil
	}
	if e != epoch {
		kept, err := s.continues(ctx, e, after)
		if err != nil {
			return 0, "", unavailable(err)
		}
		if !kept {
			return 0, "event id is from another hub, or from events Redis lost (a restart from an older snapshot, or a failover)", nil
		}
	}
	return after, "", nil
}

// markSeq reads a topic's trim mark: the newest seq trimmed from its
// stream (0: none, or no mark).
func markSeq(v any) uint64 {
	str, _ := v.(string)
	n, _ := strconv.ParseUint(str, 10, 64)
	return n
}

// ReplayMatching reads the hub-wide stream, which holds the newest events
// of every topic (at least 10,000, or ten times history), from after the
// id to the head, and applies Replay's rules to the matching events: one
// older than history_ttl, or no longer in a topic stream (its trim mark
// is after the id), resets the client, as does a hub-wide stream that no
// longer reaches back to the id. From "earliest" it returns the matching
// events some matching topic's stream still holds, and never resets.
func (s *store) ReplayMatching(ctx context.Context, match func(topic string) bool, lastEventID string) (push.Backlog, error) {
	epoch, head, err := s.head(ctx)
	if err != nil {
		return push.Backlog{}, unavailable(err)
	}
	b := push.Backlog{Head: push.FormatID(epoch, head), HeadSeq: head}
	if lastEventID == "" {
		return b, nil
	}
	earliest := lastEventID == push.EarliestID
	var after uint64
	if !earliest {
		var reset string
		if after, reset, err = s.resumePoint(ctx, epoch, head, lastEventID); err != nil {
			return push.Backlog{}, err
		}
		if reset != "" {
			b.Reset = reset
			return b, nil
		}
	}
	gone := push.Backlog{Head: b.Head, HeadSeq: head, Reset: "events after this id are no longer in history"}
	s.mu.Lock()
	ttl := s.limits.TTL
	s.mu.Unlock()
	topics := make(map[string]bool) // the matching topics of the events read
	matches := func(ev *push.Event) bool {
		found := false
		for _, t := range ev.Topics {
			if match(t) {
				topics[t], found = true, true
			}
		}
		return found
	}
	// up to head: an event stored after it comes live, and replaying it
	// would skip the live events between head and it
	last := strconv.FormatUint(head, 10) + "-1"
	for next := after; next < head; {
		entries, err := s.client.XRangeN(ctx, s.key("all"), streamAfter(next), last, 1000).Result()
		if err != nil {
			return push.Backlog{}, unavailable(err)
		}
		if len(entries) == 0 {
			if earliest {
				break
			}
			return gone, nil // the stream ends before the head
		}
		for _, en := range entries {
			seq := entrySeq(en.ID)
			if !earliest && seq != next+1 {
				return gone, nil // it no longer reaches back to the id
			}
			next = seq
			ev, err := decode(en.Values["v"])
			switch {
			case err != nil:
				if !earliest {
					return gone, nil
				}
			case !matches(ev):
			case ttl > 0 && time.Since(ev.Time) > ttl:
				if !earliest {
					return gone, nil
				}
			default:
				b.Events = append(b.Events, ev)
			}
		}
	}
	if len(b.Events) == 0 {
		return b, nil
	}
	mark, err := s.trimMarks(ctx, slices.Collect(maps.Keys(topics)))
	if err != nil {
		return push.Backlog{}, unavailable(err)
	}
	if !earliest {
		for _, m := range mark {
			if m > after {
				return gone, nil
			}
		}
		return b, nil
	}
	// keep what a matching topic's stream holds: what is after its mark
	b.Events = slices.DeleteFunc(b.Events, func(ev *push.Event) bool {
		return !slices.ContainsFunc(ev.Topics, func(t string) bool { return topics[t] && ev.Seq > mark[t] })
	})
	return b, nil
}

// trimMarks reads the trim marks of topics.
func (s *store) trimMarks(ctx context.Context, topics []string) (map[string]uint64, error) {
	pipe := s.client.Pipeline()
	legacy := pipe.HMGet(ctx, s.key("trimmed"), topics...)
	marks := make([]*goredis.StringCmd, len(topics))
	for i, t := range topics {
		marks[i] = pipe.Get(ctx, s.key("tr:"+t))
	}
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, goredis.Nil) {
		return nil, err
	}
	old := legacy.Val()
	out := make(map[string]uint64, len(topics))
	for i, t := range topics {
		out[t] = markSeq(marks[i].Val())
		if i < len(old) {
			out[t] = max(out[t], markSeq(old[i]))
		}
	}
	return out, nil
}

// entrySeq is the seq of a stream entry, from its id "<seq>-1".
func entrySeq(id string) uint64 {
	seq, _, _ := strings.Cut(id, "-")
	n, _ := strconv.ParseUint(seq, 10, 64)
	return n
}

// mayHaveExpired tells whether a topic stream that is gone (it expires
// history_ttl after its last event, or never existed) may have held
// events after seq. Seqs follow time, so if the hub's first event after
// seq is younger than the TTL, so is every later one, and none of them
// can be in an expired stream; an event older, or a hub-wide stream that
// no longer reaches back to seq, may hide some.
func (s *store) mayHaveExpired(ctx context.Context, seq uint64, ttl time.Duration) (bool, error) {
	next, err := s.client.XRangeN(ctx, s.key("all"), streamAfter(seq), "+", 1).Result()
	if err != nil || len(next) == 0 {
		return false, err
	}
	ev, err := decode(next[0].Values["v"])
	return err != nil || ev.Seq != seq+1 || time.Since(ev.Time) > ttl, nil
}

// streamAfter is the exclusive XRANGE start after an event's seq.
func streamAfter(seq uint64) string {
	return "(" + strconv.FormatUint(seq, 10) + "-1"
}

func decode(v any) (*push.Event, error) {
	str, _ := v.(string)
	var w wireEvent
	if err := json.Unmarshal([]byte(str), &w); err != nil {
		return nil, err
	}
	return &push.Event{
		Message: push.Message{Topics: w.Topics, Type: w.Type, Data: w.Data, Retry: w.Retry, Private: w.Private, CustomID: w.CustomID},
		ID:      push.FormatID(w.Epoch, w.Seq),
		Seq:     w.Seq,
		Time:    time.UnixMilli(w.Time),
	}, nil
}

// History describes the hub-wide stream, which holds the newest events of
// every topic (at least 10,000, or ten times history); its size is
// Redis's estimate.
func (s *store) History(ctx context.Context) (push.HistoryStats, error) {
	epoch, head, err := s.head(ctx)
	if err != nil {
		return push.HistoryStats{}, unavailable(err)
	}
	n, err := s.client.XLen(ctx, s.key("all")).Result()
	if err != nil {
		return push.HistoryStats{}, unavailable(err)
	}
	bytes, _ := s.client.MemoryUsage(ctx, s.key("all")).Result() // 0 where MEMORY is refused
	return push.HistoryStats{Events: n, Bytes: bytes, Head: push.FormatID(epoch, head)}, nil
}

// TopicHistory reads each topic's stream: its length and newest id.
func (s *store) TopicHistory(ctx context.Context, topics []string) ([]push.TopicHistory, error) {
	epoch, _, err := s.head(ctx)
	if err != nil {
		return nil, unavailable(err)
	}
	pipe := s.client.Pipeline()
	lens := make([]*goredis.IntCmd, len(topics))
	lasts := make([]*goredis.XMessageSliceCmd, len(topics))
	for i, t := range topics {
		lens[i] = pipe.XLen(ctx, s.key("t:"+t))
		lasts[i] = pipe.XRevRangeN(ctx, s.key("t:"+t), "+", "-", 1)
	}
	if _, err := pipe.Exec(ctx); err != nil && err != goredis.Nil {
		return nil, unavailable(err)
	}
	out := make([]push.TopicHistory, len(topics))
	for i := range topics {
		out[i].Events = int(lens[i].Val())
		if last := lasts[i].Val(); len(last) > 0 {
			seq, _, _ := strings.Cut(last[0].ID, "-")
			if n, err := strconv.ParseUint(seq, 10, 64); err == nil {
				out[i].LastID = push.FormatID(epoch, n)
			}
		}
	}
	return out, nil
}

func (s *store) SetHistory(l push.HistoryLimits) {
	s.mu.Lock()
	s.limits = l
	s.mu.Unlock()
}

// ResolveID reads the index of publishers' ids, which names the earliest
// event published with custom (until the entry expires, see idIndexTTL).
func (s *store) ResolveID(ctx context.Context, custom string) (string, bool, error) {
	v, err := s.client.Get(ctx, s.key("id:"+custom)).Result()
	if errors.Is(err, goredis.Nil) {
		return "", false, nil
	}
	if err != nil {
		return "", false, unavailable(err)
	}
	// its own epoch, so that Replay finds it in the lineage, or resets
	// for an event Redis lost
	epoch, seq, _ := strings.Cut(v, " ")
	n, err := strconv.ParseUint(seq, 10, 64)
	if err != nil {
		return "", false, nil
	}
	return push.FormatID(epoch, n), true, nil
}

// Close stops the listener. go-redis's Receive does not return when its
// context ends, so closing the subscription is what unblocks it.
func (s *store) Close() error {
	s.cancel()
	s.mu.Lock()
	if s.ps != nil {
		_ = s.ps.Close()
	}
	s.mu.Unlock()
	<-s.done
	<-s.rosterDone
	return s.client.Close()
}

// Interface guards
var (
	_ push.BrokerFactory    = Broker{}
	_ push.Broker           = (*store)(nil)
	_ push.Broadcaster      = (*store)(nil)
	_ push.Roster           = (*store)(nil)
	_ push.Inspector        = (*store)(nil)
	_ push.IdempotentBroker = (*store)(nil)
	_ push.MatchReplayer    = (*store)(nil)
	_ push.IDResolver       = (*store)(nil)
	_ caddyfile.Unmarshaler = (*Broker)(nil)
)
