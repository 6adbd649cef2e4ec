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
	"fmt"
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
	// URL of the Redis server: redis://[user:password@]host:port/db, or
	// rediss:// for TLS. Placeholders are expanded, so {env.REDIS_URL}
	// works. Default: redis://127.0.0.1:6379/0.
	URL string `json:"url,omitempty"`
	// KeyPrefix starts every key the hub uses, so several hubs and apps
	// can share one Redis. Default: push:<hub name>:
	KeyPrefix string `json:"key_prefix,omitempty"`
	// Heartbeat is how often this node renews its entry in the hub's
	// roster (who is connected where, for presence and the admin API); a
	// node that misses three is taken for dead and its members are
	// forgotten. Default: 5s.
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
//		key_prefix <prefix>
//		heartbeat  <duration>
//	}
func (b *Broker) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // consume broker name
	if d.NextArg() {
		b.URL = d.Val()
	}
	if d.NextArg() {
		return d.ArgErr()
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		switch d.Val() {
		case "key_prefix":
			if !d.NextArg() {
				return d.ArgErr()
			}
			b.KeyPrefix = d.Val()
			if d.NextArg() {
				return d.ArgErr()
			}
		case "heartbeat":
			if !d.NextArg() {
				return d.ArgErr()
			}
			v, err := caddy.ParseDuration(d.Val())
			if err != nil || v <= 0 {
				return d.Errf("invalid heartbeat '%s': want a duration such as 5s", d.Val())
			}
			b.Heartbeat = caddy.Duration(v)
			if d.NextArg() {
				return d.ArgErr()
			}
		default:
			return d.Errf("unrecognized broker redis option '%s'", d.Val())
		}
	}
	return nil
}

// OpenBroker connects the hub to Redis. The client connects lazily, so
// this stays cheap (caddy validate calls it).
func (b Broker) OpenBroker(o push.BrokerOptions) (push.Broker, error) {
	url := caddy.NewReplacer().ReplaceKnown(cmpOr(b.URL, "redis://127.0.0.1:6379/0"), "")
	opts, err := goredis.ParseURL(url)
	if err != nil {
		return nil, fmt.Errorf("redis url: %v", err)
	}
	opts.ReadTimeout = 2 * time.Second
	opts.WriteTimeout = 2 * time.Second
	opts.DialTimeout = 2 * time.Second
	opts.MaxRetries = 1
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
	if b.Heartbeat < 0 {
		return nil, fmt.Errorf("heartbeat must not be negative")
	}
	heartbeat := time.Duration(b.Heartbeat)
	if heartbeat == 0 {
		heartbeat = DefaultHeartbeat
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &store{
		client:  goredis.NewClient(opts),
		prefix:  cmpOr(b.KeyPrefix, "push:"+o.Hub+":"),
		deliver: o.Deliver,
		resync:  o.Resync,
		command: o.Command,
		node:    newEpoch(),
		logger:  o.Logger,
		limits:  o.History,
		cancel:  cancel,
		done:    make(chan struct{}),
		roster: roster{heartbeat: heartbeat, stats: o.Stats, joined: o.Joined,
			ops: make(chan rosterOp, 4096), asks: make(map[string]chan reply)},
		rosterDone: make(chan struct{}),
	}
	go s.listen(ctx)
	go s.runRoster(ctx)
	return s, nil
}

func cmpOr(v, def string) string {
	if v == "" {
		return def
	}
	return v
}

// store is one hub's connection to Redis.
type store struct {
	client  *goredis.Client
	prefix  string
	deliver func(*push.Event)
	resync  func()
	command func(push.Command) int
	node    string // tells this node's own broadcasts from others'
	logger  *zap.Logger
	cancel  context.CancelFunc
	done    chan struct{}

	mu     sync.Mutex
	limits push.HistoryLimits
	ps     *goredis.PubSub // the live subscription, which Close must close

	roster     roster
	rosterDone chan struct{}
}

// Keys, under the prefix: epoch (set once), seq (the counter), t:<topic>
// (a stream per topic), all (the hub-wide stream, for catching up),
// trimmed (hash: topic → newest seq trimmed away), key:<hex id> (an
// idempotency key: "<fingerprint> <epoch> <seq>" of its event, expiring
// with the window), the events channel and the control channel (commands
// such as pause, for every node).
func (s *store) key(name string) string { return s.prefix + name }

// publishScript stores an event in every topic's stream and the hub-wide
// stream, trims them, and publishes it, atomically. Stream entry ids are
// "<seq>-1", so streams sort by seq; ages are kept in the entries. The
// epoch is read in the script, so an id never pairs a sequence number
// with the epoch of an earlier Redis (one that lost its data).
//
// With an idempotency key (ARGV[8], its fingerprint ARGV[9] and window
// ARGV[10] in ms), the key is checked first and stored with the event,
// in the same step: a key already stored answers {seq, epoch, 1} of its
// event (a replay) or {0, "", 2} when its fingerprint differs, and
// nothing is published; so two nodes given the same key publish once.
var publishScript = goredis.NewScript(`
local p, hist, ttl = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local ikey = ARGV[8] ~= '' and p .. 'key:' .. ARGV[8]
if ikey then
  local seen = redis.call('GET', ikey)
  if seen then
    local fp, e, s = string.match(seen, '^(%x+) (%S+) (%d+)$')
    if fp ~= ARGV[9] then return {0, '', 2} end
    return {tonumber(s), e, 1}
  end
end
redis.call('SET', p..'epoch', ARGV[7], 'NX')
local epoch = redis.call('GET', p..'epoch')
local seq = redis.call('INCR', p..'seq')
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local topics = {}
for i = 11, #ARGV do topics[#topics + 1] = ARGV[i] end
local ev = cjson.encode({p = epoch, s = seq, t = now, k = topics, e = ARGV[4], d = ARGV[5], r = tonumber(ARGV[6])})
local id = seq .. '-1'
for _, topic in ipairs(topics) do
  local key = p .. 't:' .. topic
  if hist > 0 then
    redis.call('XADD', key, id, 't', now, 'v', ev)
    local over = redis.call('XLEN', key) - hist
    if over > 0 then
      local gone = redis.call('XRANGE', key, '-', '+', 'COUNT', over)
      redis.call('HSET', p .. 'trimmed', topic, string.match(gone[#gone][1], '^(%d+)'))
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
        redis.call('HSET', p .. 'trimmed', topic, string.match(cut[#cut], '^(%d+)'))
      end
    end
  else
    redis.call('HSET', p .. 'trimmed', topic, seq)
  end
end
redis.call('XADD', p .. 'all', id, 'v', ev)
redis.call('XTRIM', p .. 'all', 'MAXLEN', '~', math.max(10000, hist * 10))
redis.call('PUBLISH', p .. 'events', ev)
if ikey then
  redis.call('SET', ikey, ARGV[9] .. ' ' .. epoch .. ' ' .. seq, 'PX', ARGV[10])
end
return {seq, epoch}
`)

// headScript reads the hub's epoch (making one for a new hub) and the
// seq of its newest event, atomically.
var headScript = goredis.NewScript(`
redis.call('SET', ARGV[1]..'epoch', ARGV[2], 'NX')
return {tonumber(redis.call('GET', ARGV[1]..'seq') or '0'), redis.call('GET', ARGV[1]..'epoch')}
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
}

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
	args := make([]any, 0, 10+len(ev.Topics))
	args = append(args, s.prefix, l.Events, l.TTL.Milliseconds(), ev.Type, ev.Data, ev.Retry, newEpoch(), id, fp, window)
	for _, t := range ev.Topics {
		args = append(args, t)
	}
	res, err := publishScript.Run(ctx, s.client, nil, args...).Slice()
	if err != nil {
		return "", unavailable(err)
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

// head reads the hub's epoch and the seq of its newest event.
func (s *store) head(ctx context.Context) (string, uint64, error) {
	res, err := headScript.Run(ctx, s.client, nil, s.prefix, newEpoch()).Slice()
	if err != nil {
		return "", 0, err
	}
	seq, epoch, err := seqAndEpoch(res)
	return epoch, seq, err
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
	e, after, ok := push.ParseID(lastEventID)
	switch {
	case !ok || after > head:
		b.Reset = "unknown event id"
		return b, nil
	case e != epoch:
		b.Reset = "event id is from another hub or an earlier Redis"
		return b, nil
	}
	trimmed, err := s.client.HMGet(ctx, s.key("trimmed"), topics...).Result()
	if err != nil {
		return push.Backlog{}, unavailable(err)
	}
	for _, v := range trimmed {
		if str, ok := v.(string); ok {
			if n, _ := strconv.ParseUint(str, 10, 64); n > after {
				b.Reset = "events after this id are no longer in history"
				return b, nil
			}
		}
	}
	s.mu.Lock()
	ttl := s.limits.TTL
	s.mu.Unlock()
	for _, t := range topics {
		entries, err := s.client.XRange(ctx, s.key("t:"+t), streamAfter(after), "+").Result()
		if err != nil {
			return push.Backlog{}, unavailable(err)
		}
		for _, en := range entries {
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
				return push.Backlog{Head: b.Head, HeadSeq: head, Reset: "events after this id are no longer in history"}, nil
			}
			b.Events = append(b.Events, ev)
		}
	}
	slices.SortFunc(b.Events, func(x, y *push.Event) int { return cmp.Compare(x.Seq, y.Seq) })
	b.Events = slices.CompactFunc(b.Events, func(x, y *push.Event) bool { return x.Seq == y.Seq })
	return b, nil
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
		Message: push.Message{Topics: w.Topics, Type: w.Type, Data: w.Data, Retry: w.Retry},
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

// cursor is how far a node has delivered the hub's events.
type cursor struct {
	epoch string
	seq   uint64 // the newest seq delivered
}

// listen delivers every event of the hub to this node, in seq order, with
// one Pub/Sub subscription. After losing Redis it reconnects with backoff
// and catches up from the hub-wide stream, so nothing Redis acknowledged
// is missed.
func (s *store) listen(ctx context.Context) {
	defer close(s.done)
	var cur *cursor
	backoff := 100 * time.Millisecond
	down := false
	for ctx.Err() == nil {
		err := s.follow(ctx, &cur, func() {
			if down {
				s.logger.Info("redis available again")
			}
			backoff, down = 100*time.Millisecond, false
		})
		if ctx.Err() != nil {
			return
		}
		if !down {
			s.logger.Warn("redis unavailable; reconnecting", zap.Error(err))
			down = true
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

// follow subscribes, catches up from the cursor, calls connected, then
// delivers live events until the subscription fails. A node that starts
// (a nil cursor) starts from now: its subscribers replay from the streams.
func (s *store) follow(ctx context.Context, cur **cursor, connected func()) error {
	ps := s.client.Subscribe(ctx, s.key("events"), s.key("control"))
	defer ps.Close()
	s.mu.Lock()
	s.ps = ps
	s.mu.Unlock()
	if ctx.Err() != nil { // Close came first
		return ctx.Err()
	}
	if _, err := ps.Receive(ctx); err != nil { // the subscription is in place
		return err
	}
	epoch, head, err := s.head(ctx)
	if err != nil {
		return err
	}
	switch {
	case *cur == nil:
		*cur = &cursor{epoch: epoch, seq: head}
	case (*cur).epoch != epoch:
		s.lost("redis has lost the hub's events (a restart without persistence?)")
		*cur = &cursor{epoch: epoch, seq: head}
	default:
		if err := s.catchUp(ctx, *cur, head); err != nil {
			return err
		}
	}
	connected()
	s.logger.Info("following redis", zap.String("prefix", s.prefix), zap.Uint64("from", (*cur).seq))
	for {
		msg, err := ps.Receive(ctx)
		if err != nil {
			return err
		}
		m, ok := msg.(*goredis.Message)
		if !ok {
			continue
		}
		if m.Channel == s.key("control") {
			s.receiveControl(ctx, m.Payload)
			continue
		}
		ev, err := decode(m.Payload)
		if err != nil {
			continue
		}
		if err := s.advance(ctx, *cur, ev); err != nil {
			return err
		}
	}
}

// advance delivers a live event after whatever Pub/Sub skipped.
func (s *store) advance(ctx context.Context, cur *cursor, ev *push.Event) error {
	epoch, _, _ := push.ParseID(ev.ID)
	if epoch != cur.epoch {
		// Redis was emptied under us: nothing before ev can be delivered
		s.lost("redis has lost the hub's events (flushed?)")
		cur.epoch, cur.seq = epoch, ev.Seq-1
	}
	if ev.Seq <= cur.seq {
		return nil
	}
	if ev.Seq > cur.seq+1 {
		// Pub/Sub lost something; the hub-wide stream has it
		if err := s.catchUp(ctx, cur, ev.Seq-1); err != nil {
			return err
		}
	}
	cur.seq = ev.Seq
	s.deliver(ev)
	return nil
}

// catchUp delivers the hub-wide stream's events after the cursor, up to
// seq head. When the stream no longer has them all (the node was away
// longer than it keeps), local subscribers must resume on their own.
func (s *store) catchUp(ctx context.Context, cur *cursor, head uint64) error {
	for cur.seq < head {
		entries, err := s.client.XRangeN(ctx, s.key("all"), streamAfter(cur.seq), "+", 1000).Result()
		if err != nil {
			return err
		}
		for _, en := range entries {
			ev, err := decode(en.Values["v"])
			if err != nil {
				continue // and the next is a gap
			}
			if ev.Seq > head {
				return nil
			}
			if ev.Seq != cur.seq+1 {
				s.lost("this node was away longer than the hub-wide stream reaches back")
				cur.seq = head
				return nil
			}
			cur.seq = ev.Seq
			s.deliver(ev)
		}
		if len(entries) == 0 {
			s.lost("the hub-wide stream ends before the hub's newest event")
			cur.seq = head
		}
	}
	return nil
}

// lost ends every local subscription: their clients resume from their
// own last ids, with a replay from the topic streams or a push.reset.
func (s *store) lost(why string) {
	s.logger.Warn("events lost for this node; local streams end so clients resume", zap.String("reason", why))
	s.resync()
}

// Interface guards
var (
	_ push.BrokerFactory    = Broker{}
	_ push.Broker           = (*store)(nil)
	_ push.Broadcaster      = (*store)(nil)
	_ push.Roster           = (*store)(nil)
	_ push.Inspector        = (*store)(nil)
	_ push.IdempotentBroker = (*store)(nil)
	_ caddyfile.Unmarshaler = (*Broker)(nil)
)
