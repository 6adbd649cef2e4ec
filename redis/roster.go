package redis

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	goredis "github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"github.com/caddy-push/push"
)

// The roster: who is connected on every node, for presence and the admin
// API. Keys, under the prefix: nodes (sorted set: node → when it expires,
// ms), m:<topic> (hash: <node>/<connection> → member), nm:<node> (hash:
// connection → its topics, to forget a node's members), mtopics (set: the
// topics with members), ns (hash: node → its counters). A node renews its
// entry every heartbeat; any node's heartbeat forgets the members of a
// node that stopped.

// DefaultHeartbeat is how often a node renews its entry; it is taken for
// dead after missedHeartbeats of them.
const (
	DefaultHeartbeat = 5 * time.Second
	missedHeartbeats = 3
)

// forgetLua removes node n's members, and returns them: connection,
// topics (JSON), member (JSON; empty for a connection without topics),
// and so on. The scripts that need it start with it.
const forgetLua = `
local function forget(p, n)
  local conns = redis.call('HGETALL', p..'nm:'..n)
  local gone = {}
  for i = 1, #conns, 2 do
    local member = ''
    for _, topic in ipairs(cjson.decode(conns[i+1])) do
      local k = p..'m:'..topic
      if member == '' then member = redis.call('HGET', k, n..'/'..conns[i]) or '' end
      redis.call('HDEL', k, n..'/'..conns[i])
      if redis.call('HLEN', k) == 0 then redis.call('SREM', p..'mtopics', topic) end
    end
    gone[#gone + 1] = conns[i]
    gone[#gone + 1] = conns[i+1]
    gone[#gone + 1] = member
  end
  redis.call('DEL', p..'nm:'..n)
  redis.call('HDEL', p..'ns', n)
  redis.call('ZREM', p..'nodes', n)
  return gone
end
local function now()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
`

// heartbeatScript renews this node (ARGV: prefix, node, ttl ms, its
// counters), forgets the nodes that expired, and returns whether this
// node was still known (if not, it must write its members anew) and the
// nodes it forgot, each with its members as forget returns them. Being
// one script, it hands a dead node's members to one node only.
var heartbeatScript = goredis.NewScript(forgetLua + `
local p, node = ARGV[1], ARGV[2]
local t = now()
local known = redis.call('ZSCORE', p..'nodes', node)
redis.call('ZADD', p..'nodes', t + tonumber(ARGV[3]), node)
redis.call('HSET', p..'ns', node, ARGV[4])
local lost = {}
for _, d in ipairs(redis.call('ZRANGEBYSCORE', p..'nodes', '-inf', t, 'LIMIT', 0, 16)) do
  lost[#lost + 1] = d
  lost[#lost + 1] = forget(p, d)
end
if known then return {1, lost} end
return {0, lost}
`)

// forgetScript forgets a node (ARGV: prefix, node).
var forgetScript = goredis.NewScript(forgetLua + `
forget(ARGV[1], ARGV[2])
return 1
`)

// joinScript records a connection (ARGV: prefix, node, connection,
// member, topics...); for a connection it knows, the topics replace those
// it had (a WebSocket client subscribed or unsubscribed).
var joinScript = goredis.NewScript(`
local p, node, conn = ARGV[1], ARGV[2], ARGV[3]
local old = redis.call('HGET', p..'nm:'..node, conn)
if old then
  local keep = {}
  for i = 5, #ARGV do keep[ARGV[i]] = true end
  for _, topic in ipairs(cjson.decode(old)) do
    if not keep[topic] then
      local k = p..'m:'..topic
      redis.call('HDEL', k, node..'/'..conn)
      if redis.call('HLEN', k) == 0 then redis.call('SREM', p..'mtopics', topic) end
    end
  end
end
local topics = {}
for i = 5, #ARGV do
  redis.call('HSET', p..'m:'..ARGV[i], node..'/'..conn, ARGV[4])
  redis.call('SADD', p..'mtopics', ARGV[i])
  topics[#topics + 1] = ARGV[i]
end
redis.call('HSET', p..'nm:'..node, conn, cjson.encode(topics))
return 1
`)

// leaveScript forgets a connection (ARGV: prefix, node, connection).
var leaveScript = goredis.NewScript(`
local p, node, conn = ARGV[1], ARGV[2], ARGV[3]
local t = redis.call('HGET', p..'nm:'..node, conn)
if not t then return 0 end
for _, topic in ipairs(cjson.decode(t)) do
  local k = p..'m:'..topic
  redis.call('HDEL', k, node..'/'..conn)
  if redis.call('HLEN', k) == 0 then redis.call('SREM', p..'mtopics', topic) end
end
redis.call('HDEL', p..'nm:'..node, conn)
return 1
`)

// membersScript returns a topic's member count, the live nodes, and,
// unless there are more than ARGV[3], the members (ARGV: prefix, topic,
// max).
var membersScript = goredis.NewScript(forgetLua + `
local k = ARGV[1]..'m:'..ARGV[2]
local n = redis.call('HLEN', k)
local live = redis.call('ZRANGEBYSCORE', ARGV[1]..'nodes', now(), '+inf')
if n > tonumber(ARGV[3]) then return {n, live} end
return {n, live, redis.call('HVALS', k)}
`)

// liveScript returns the live nodes (ARGV: prefix).
var liveScript = goredis.NewScript(forgetLua + `
return redis.call('ZRANGEBYSCORE', ARGV[1]..'nodes', now(), '+inf')
`)

// rosterOp is a change to this node's entries, written in order by the
// roster's goroutine.
type rosterOp struct {
	join   bool
	member push.Member
	topics []string
	done   chan error // nil: nobody waits
}

// roster is the store's part that keeps this node's entries.
type roster struct {
	heartbeat time.Duration
	stats     func() push.NodeStats
	joined    func() []push.Joined
	nodeLost  func(node string, lost []push.Joined)
	rejoined  func([]push.Joined)
	ops       chan rosterOp

	mu    sync.Mutex
	dirty bool                  // an op was lost: write every entry anew
	asks  map[string]chan reply // answers awaited by Ask, by its id
	// registered is set once a heartbeat has put this node in the live
	// set: before it, Redis not knowing the node is its start, not a
	// rejoin
	registered bool
}

// reply is a node's answer to an Ask.
type reply struct {
	node  string
	count int
}

// runRoster writes this node's entries and renews them every heartbeat,
// until ctx ends; then it forgets them, so a node that stops cleanly
// leaves at once rather than when it expires.
func (s *store) runRoster(ctx context.Context) {
	defer close(s.rosterDone)
	tick := time.NewTicker(s.roster.heartbeat)
	defer tick.Stop()
	s.beat(ctx)
	for {
		select {
		case <-ctx.Done():
			c, cancel := context.WithTimeout(context.Background(), time.Second)
			_ = forgetScript.Run(c, s.client, s.keys, s.prefix, s.node).Err()
			cancel()
			return
		case <-tick.C:
			s.beat(ctx)
		case op := <-s.roster.ops:
			err := s.write(ctx, op)
			if err != nil {
				s.setDirty()
			}
			if op.done != nil {
				op.done <- err
			}
		}
	}
}

func (s *store) setDirty() {
	s.roster.mu.Lock()
	s.roster.dirty = true
	s.roster.mu.Unlock()
}

// write applies one change to this node's entries.
func (s *store) write(ctx context.Context, op rosterOp) error {
	if !op.join {
		return leaveScript.Run(ctx, s.client, s.keys, s.prefix, s.node, op.member.Connection).Err()
	}
	m := op.member
	m.Node = s.node
	data, err := json.Marshal(m)
	if err != nil {
		return err
	}
	args := make([]any, 0, 4+len(op.topics))
	args = append(args, s.prefix, s.node, m.Connection, string(data))
	for _, t := range op.topics {
		args = append(args, t)
	}
	return joinScript.Run(ctx, s.client, s.keys, args...).Err()
}

// beat renews this node's entry, and writes every entry anew when Redis
// did not know the node any more (it lost its data, or took the node for
// dead) or a change was lost.
func (s *store) beat(ctx context.Context) {
	stats, _ := json.Marshal(s.roster.stats())
	ttl := s.roster.heartbeat * missedHeartbeats
	known, err := s.renew(ctx, ttl, stats)
	if err != nil {
		s.setDirty() // Redis may lose or expire us meanwhile
		return
	}
	s.roster.mu.Lock()
	rewrite := s.roster.dirty || !known
	s.roster.dirty = false
	forgotten := !known && s.roster.registered
	s.roster.registered = true
	s.roster.mu.Unlock()
	if !rewrite {
		return
	}
	if err := forgetScript.Run(ctx, s.client, s.keys, s.prefix, s.node).Err(); err != nil {
		s.setDirty()
		return
	}
	// forget took the node out of the live set: back in first
	if _, err := s.renew(ctx, ttl, stats); err != nil {
		s.setDirty()
		return
	}
	joined := s.roster.joined()
	for _, j := range joined {
		if err := s.write(ctx, rosterOp{join: true, member: j.Member, topics: j.Topics}); err != nil {
			s.setDirty()
			return
		}
	}
	if forgotten && len(joined) > 0 {
		s.roster.rejoined(joined)
	}
}

// renew runs the heartbeat script: it reports whether Redis still knew
// this node, and tells of the members of the dead nodes it forgot.
func (s *store) renew(ctx context.Context, ttl time.Duration, stats []byte) (bool, error) {
	res, err := heartbeatScript.Run(ctx, s.client, s.keys, s.prefix, s.node, ttl.Milliseconds(), string(stats)).Slice()
	if err != nil {
		return false, err
	}
	if len(res) != 2 {
		return false, fmt.Errorf("unexpected answer %v", res)
	}
	known, _ := res[0].(int64)
	lost, _ := res[1].([]any)
	for i := 0; i+1 < len(lost); i += 2 {
		node, _ := lost[i].(string)
		members := lostMembers(node, lost[i+1])
		s.logger.Info("node lost: its entries in the roster expired", zap.String("node", node), zap.Int("connections", len(members)))
		if len(members) > 0 {
			s.roster.nodeLost(node, members)
		}
	}
	return known == 1, nil
}

// lostMembers decodes the members forget returned for node: a
// connection's member as it joined (all but its id when it had no
// topics), and its topics.
func lostMembers(node string, v any) []push.Joined {
	list, _ := v.([]any)
	out := make([]push.Joined, 0, len(list)/3)
	for i := 0; i+2 < len(list); i += 3 {
		conn, _ := list[i].(string)
		topics, _ := list[i+1].(string)
		member, _ := list[i+2].(string)
		var j push.Joined
		_ = json.Unmarshal([]byte(member), &j.Member)
		_ = json.Unmarshal([]byte(topics), &j.Topics) // "{}", cjson's empty list, leaves none
		j.Member.Connection, j.Member.Node = conn, node
		out = append(out, j)
	}
	return out
}

// Join records a local connection, after the changes queued before it;
// joining again replaces its topics.
func (s *store) Join(ctx context.Context, m push.Member, topics []string) error {
	done := make(chan error, 1)
	select {
	case s.roster.ops <- rosterOp{join: true, member: m, topics: topics, done: done}:
	case <-ctx.Done():
		return unavailable(ctx.Err())
	}
	select {
	case err := <-done:
		if err != nil {
			return unavailable(err)
		}
		return nil
	case <-ctx.Done():
		return unavailable(ctx.Err())
	}
}

// Leave forgets a local connection. A change that cannot be queued at
// once is made by the next heartbeat, which writes every entry anew.
func (s *store) Leave(ctx context.Context, m push.Member, topics []string, wait bool) {
	op := rosterOp{member: m, topics: topics}
	if wait {
		op.done = make(chan error, 1)
	}
	select {
	case s.roster.ops <- op:
	default:
		s.setDirty()
		return
	}
	if wait {
		select {
		case <-op.done:
		case <-ctx.Done():
		}
	}
}

// Members returns the members of topic on the live nodes.
func (s *store) Members(ctx context.Context, topic string, max int, presence bool) ([]push.Member, int, error) {
	res, err := membersScript.Run(ctx, s.client, s.keys, s.prefix, topic, max).Slice()
	if err != nil {
		return nil, 0, unavailable(err)
	}
	if len(res) < 2 {
		return nil, 0, unavailable(fmt.Errorf("unexpected answer %v", res))
	}
	n, _ := res[0].(int64)
	if len(res) == 2 {
		return nil, int(n), nil // more than max: the count, which may hold members a dead node left for a heartbeat or two
	}
	live := liveSet(res[1])
	var out []push.Member
	for _, v := range res[2].([]any) {
		var m push.Member
		str, _ := v.(string)
		if json.Unmarshal([]byte(str), &m) != nil || !live[m.Node] || presence && !m.Presence {
			continue
		}
		out = append(out, m)
	}
	slices.SortFunc(out, func(a, b push.Member) int {
		if c := a.Since.Compare(b.Since); c != 0 {
			return c
		}
		return strings.Compare(a.Connection, b.Connection)
	})
	return out, len(out), nil
}

func liveSet(v any) map[string]bool {
	live := make(map[string]bool)
	list, _ := v.([]any)
	for _, n := range list {
		if str, ok := n.(string); ok {
			live[str] = true
		}
	}
	return live
}

// Topics counts the members of the topics that start with prefix.
func (s *store) Topics(ctx context.Context, prefix string) (map[string]int, error) {
	all, err := s.client.SMembers(ctx, s.key("mtopics")).Result()
	if err != nil {
		return nil, unavailable(err)
	}
	var topics []string
	for _, t := range all {
		if strings.HasPrefix(t, prefix) {
			topics = append(topics, t)
		}
	}
	pipe := s.client.Pipeline()
	lens := make([]*goredis.IntCmd, len(topics))
	for i, t := range topics {
		lens[i] = pipe.HLen(ctx, s.key("m:"+t))
	}
	if len(topics) > 0 {
		if _, err := pipe.Exec(ctx); err != nil {
			return nil, unavailable(err)
		}
	}
	counts := make(map[string]int, len(topics))
	for i, t := range topics {
		if n := lens[i].Val(); n > 0 {
			counts[t] = int(n)
		}
	}
	return counts, nil
}

// liveNodes returns the nodes whose entries are current.
func (s *store) liveNodes(ctx context.Context) (map[string]bool, error) {
	res, err := liveScript.Run(ctx, s.client, s.keys, s.prefix).Result()
	if err != nil {
		return nil, unavailable(err)
	}
	return liveSet(res), nil
}

// Stats returns the counters of the other live nodes, as of their last
// heartbeat.
func (s *store) Stats(ctx context.Context) ([]push.NodeStats, error) {
	live, err := s.liveNodes(ctx)
	if err != nil {
		return nil, err
	}
	all, err := s.client.HGetAll(ctx, s.key("ns")).Result()
	if err != nil {
		return nil, unavailable(err)
	}
	var out []push.NodeStats
	for node, v := range all {
		var st push.NodeStats
		if node == s.node || !live[node] || json.Unmarshal([]byte(v), &st) != nil {
			continue
		}
		st.Node = node
		out = append(out, st)
	}
	return out, nil
}

// askTimeout bounds how long Ask waits for the other nodes' answers.
const askTimeout = 2 * time.Second

// Ask broadcasts c and sums the other live nodes' answers, waiting for
// all of them or askTimeout, whichever comes first.
func (s *store) Ask(ctx context.Context, c push.Command) (int, int, error) {
	live, err := s.liveNodes(ctx)
	if err != nil {
		return 0, 0, err
	}
	delete(live, s.node)
	id := newAskID()
	answers := make(chan reply, len(live)+1)
	s.roster.mu.Lock()
	s.roster.asks[id] = answers
	s.roster.mu.Unlock()
	defer func() {
		s.roster.mu.Lock()
		delete(s.roster.asks, id)
		s.roster.mu.Unlock()
	}()
	if err := s.send(ctx, control{Node: s.node, Command: c, Ask: id}); err != nil {
		return 0, 0, err
	}
	timeout := time.NewTimer(askTimeout)
	defer timeout.Stop()
	count, nodes := 0, 1
	for waiting := len(live); waiting > 0; {
		select {
		case r := <-answers:
			if live[r.node] {
				delete(live, r.node)
				waiting--
				count += r.count
				nodes++
			}
		case <-timeout.C:
			s.logger.Warn("nodes did not answer a command in time", zap.Int("missing", waiting))
			return count, nodes, nil
		case <-ctx.Done():
			return count, nodes, nil
		}
	}
	return count, nodes, nil
}

// answer hands a node's reply to the Ask that waits for it.
func (s *store) answer(c control) {
	s.roster.mu.Lock()
	ch := s.roster.asks[c.Answer]
	s.roster.mu.Unlock()
	if ch != nil {
		select {
		case ch <- reply{node: c.Node, count: c.Count}:
		default:
		}
	}
}

func newAskID() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
