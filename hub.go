package push

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
	"math"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/caddy-push/push/internal/engine"
)

// Hub is one named channel space: its broker stores events, and the hub fans
// them out to the subscriptions of this process.
//
// The fan-out runs in lanes: each subscription belongs to one lane, and
// each lane writes every event to its own subscriptions, one event at a
// time, so each subscription gets its events in order. An event with a
// large audience (spreadAt subscriptions or more) is handed to the
// goroutines of lanes 1 and up while the broker's goroutine writes lane
// 0's share, so one event to many sockets uses every core. A smaller one
// is written by the broker's goroutine alone, for every lane whose
// goroutine has nothing in hand (else it joins that lane's queue, behind
// what is in hand): a hand-off costs more than it saves there. With one
// lane (one core, or a hub outside Caddy) the broker's goroutine writes
// everything.
type Hub struct {
	name       string
	broker     Broker
	brokerName string // its module's name: memory, redis
	trims      bool   // holds memTrim (a hub of the push app)
	logger     *zap.Logger
	stats      hubStats
	events     *eventSink // the events hook's queue

	// idempotencyWindow is how long keys are remembered (0: ignored);
	// inFlight has the keys being published by this node.
	idempotencyWindow atomic.Int64
	inFlight          inFlight
	// maxPublishTopics bounds the topics of one publish
	maxPublishTopics atomic.Int64

	// deliverMu makes deliver's calls one at a time: the broker's, in id
	// order, and the hub's live events (push.join, push.leave) between them
	deliverMu sync.Mutex

	// matches memoizes which topics the pattern subscriptions' and the
	// Mercure tokens' selectors match
	matches *mercureMatchCache

	mu    sync.RWMutex
	lanes []lane // at least one
	next  atomic.Uint32
	// work feeds the goroutines of lanes 1 and up, one channel each
	// (work[0] is nil: lane 0 is the broker's goroutine); nil with one
	// lane. Sent to under workMu's read lock, closed under its write lock,
	// once (stopped).
	work    []chan *Event
	busy    []atomic.Int32 // events handed to each lane, not yet written
	workMu  sync.RWMutex
	stopped bool
	idle    sync.WaitGroup // the lanes' goroutines
}

// lane is a share of a hub's subscriptions: its topic index, its pattern
// subscriptions, and what its fan-out of one event gathers (used by one
// goroutine at a time).
type lane struct {
	topics map[string]map[*Subscription]struct{}
	// patterns has the subscriptions with patterns, grouped by pattern
	// (its selector's key), so an event costs one match per distinct
	// pattern and topic, however many subscriptions share the pattern
	patterns map[string]*patternGroup
	// out is what the lane's fan-out writes as it goes; behind a pointer,
	// so that readers of the index may copy a lane while it writes
	out *laneOut
}

// laneOut is a lane's fan-out of one event, in progress.
type laneOut struct {
	batch   engine.Batch            // writes to connections the engine owns, made together
	written [len(transports)]uint64 // deliveries of the event, per transport
	offered atomic.Uint64           // the Seq of the last stored event it offered
}

// patternGroup is the subscriptions of a lane that share a pattern.
type patternGroup struct {
	sel  *mercureSelector
	subs map[*Subscription]struct{}
}

// maxLanes bounds the fan-out goroutines of a hub.
const maxLanes = 8

// laneQueue is how many events a lane may have waiting; a publisher waits
// beyond it (the lanes never block on a client, so they drain fast).
const laneQueue = 1024

// spreadAt is the audience from which an event is written by every lane
// at once.
const spreadAt = 256

// matchCacheSize bounds a hub's memo of (selector, topic) matches.
const matchCacheSize = 64 << 10

func newHub(name string) *Hub {
	h := &Hub{name: name, logger: zap.NewNop(), lanes: []lane{newLane()}, matches: newMercureMatchCache(matchCacheSize), events: newEventSink()}
	h.idempotencyWindow.Store(int64(DefaultIdempotencyWindow))
	h.maxPublishTopics.Store(DefaultMaxPublishTopics)
	return h
}

// startLanes spreads the fan-out over n lanes, until stopLanes. Call it
// before the hub has subscriptions.
func (h *Hub) startLanes(n int) {
	n = min(n, maxLanes)
	if n < 2 {
		return
	}
	h.lanes = make([]lane, n)
	h.work = make([]chan *Event, n)
	h.busy = make([]atomic.Int32, n)
	for i := range h.lanes {
		h.lanes[i] = newLane()
		if i == 0 {
			continue // the broker's goroutine
		}
		h.work[i] = make(chan *Event, laneQueue)
		h.idle.Add(1)
		go func() {
			defer h.idle.Done()
			for ev := range h.work[i] {
				h.deliverLane(ev, i)
				h.busy[i].Add(-1)
			}
		}()
	}
}

func newLane() lane {
	return lane{topics: make(map[string]map[*Subscription]struct{}), patterns: make(map[string]*patternGroup), out: new(laneOut)}
}

// stopLanes ends the lanes' goroutines once they have delivered what they
// hold. The broker must not deliver any more.
func (h *Hub) stopLanes() {
	h.workMu.Lock()
	if !h.stopped {
		h.stopped = true
		for _, ch := range h.work[min(1, len(h.work)):] {
			close(ch)
		}
	}
	h.workMu.Unlock()
	h.idle.Wait()
}

// Destruct closes the hub's broker, then its fan-out, once no
// configuration uses the hub.
func (h *Hub) Destruct() error {
	live.CompareAndDelete(h.name, h)
	err := h.broker.Close()
	h.stopLanes()
	if h.trims {
		memTrim.release()
	}
	return err
}

// Name is the hub's name.
func (h *Hub) Name() string { return h.name }

// Publish validates m, has the broker store it, and returns the event id.
// Delivery to subscribers follows asynchronously from the broker. With
// m.IdempotencyKey set it is PublishAs on behalf of the process itself: a
// repeat returns the first event's id and publishes nothing.
func (h *Hub) Publish(ctx context.Context, m Message) (string, error) {
	p, err := h.PublishAs(ctx, m, "")
	return p.ID, err
}

// PublishAs is Publish on behalf of a publisher, whose identity scopes
// m.IdempotencyKey: the same key from two publishers names two messages.
// HTTP and WebSocket publishers are "token:<hash of the token>",
// "user:<user id or JWT sub>", "jwt:<hash of the token>" (a JWT without
// sub) or "anonymous:<client address, IPv6 by its /64>"; the admin API is
// "admin", the process's own code "".
//
// With a key, and the hub's idempotency window not 0, a repeat of the
// same message within the window stores nothing and returns the first
// event's id with Replayed set; a different message with the key fails
// with ErrIdempotencyConflict, and a repeat while the first is still
// being stored by this node with ErrIdempotencyInFlight.
func (h *Hub) PublishAs(ctx context.Context, m Message, publisher string) (Published, error) {
	if err := h.Validate(m); err != nil {
		return Published{}, err
	}
	m.Topics = uniqueTopics(m.Topics)
	key, window := m.IdempotencyKey, time.Duration(h.idempotencyWindow.Load())
	m.IdempotencyKey = "" // not kept with the event
	ev := &Event{Message: m}
	if key == "" || window <= 0 {
		if err := h.broker.Publish(ctx, ev); err != nil {
			return Published{}, err
		}
		h.stats.published.Add(1)
		return Published{ID: ev.PublicID()}, nil
	}
	b, ok := h.broker.(IdempotentBroker)
	if !ok {
		return Published{}, ErrIdempotencyUnsupported
	}
	k := IdempotencyKey{ID: idempotencyID(publisher, key), Fingerprint: fingerprint(m), Window: window}
	if !h.inFlight.add(k.ID) {
		h.stats.conflicts[conflictInFlight].Add(1)
		return Published{}, ErrIdempotencyInFlight
	}
	defer h.inFlight.remove(k.ID)
	first, err := b.PublishOnce(ctx, ev, k)
	switch {
	case errors.Is(err, ErrIdempotencyConflict):
		h.stats.conflicts[conflictDifferent].Add(1)
		return Published{}, err
	case err != nil:
		return Published{}, err
	case first != "":
		h.stats.replays.Add(1)
		// the first message had the same fingerprint, and so the same id
		return Published{ID: cmp.Or(m.CustomID, first), Replayed: true}, nil
	}
	h.stats.published.Add(1)
	return Published{ID: ev.PublicID()}, nil
}

// Validate reports why m may not be published on this hub, as PublishAs
// does before anything else: Message.Validate's rules (no reserved type,
// retry at most a day, ...), and at most max_publish_topics topics. The
// error wraps ErrInvalidMessage. The count is checked first, so a huge
// list costs no more than its length.
func (h *Hub) Validate(m Message) error {
	if n, limit := len(m.Topics), h.maxPublishTopics.Load(); int64(n) > limit {
		return invalidf("too many topics: %d (the limit is %d)", n, limit)
	}
	return m.Validate()
}

// SetMaxPublishTopics sets how many topics one publish may name (at least
// 1). The push app sets it from max_publish_topics.
func (h *Hub) SetMaxPublishTopics(n int) {
	h.maxPublishTopics.Store(int64(max(n, 1)))
}

// SetIdempotencyWindow sets how long the hub remembers idempotency keys;
// 0 ignores them. The push app sets it from idempotency_window.
func (h *Hub) SetIdempotencyWindow(d time.Duration) {
	h.idempotencyWindow.Store(int64(max(d, 0)))
}

// deliver hands ev to every local subscription of its topics. The broker
// calls it with each stored event, in id order; the hub with its live
// events.
func (h *Hub) deliver(ev *Event) {
	h.deliverMu.Lock()
	defer h.deliverMu.Unlock()
	if h.work == nil {
		h.deliverLane(ev, 0)
		return
	}
	spread := h.audience(ev) >= spreadAt
	h.workMu.RLock()
	for i := 1; i < len(h.lanes); i++ {
		// deliver is never called twice at once, and only it hands
		// events over: a lane with nothing in hand stays so meanwhile
		if !h.stopped && (spread || h.busy[i].Load() > 0) {
			h.busy[i].Add(1)
			h.work[i] <- ev
		} else {
			h.deliverLane(ev, i)
		}
	}
	h.workMu.RUnlock()
	h.deliverLane(ev, 0)
}

// audience counts the local subscriptions of ev's topics and patterns (a
// subscription to several of them more than once); it stops matching
// patterns once the count reaches spreadAt.
func (h *Hub) audience(ev *Event) int {
	h.mu.RLock()
	defer h.mu.RUnlock()
	n := 0
	for _, l := range h.lanes {
		for _, t := range ev.Topics {
			n += len(l.topics[t])
		}
	}
	for _, l := range h.lanes {
		for _, g := range l.patterns {
			if n >= spreadAt {
				return n
			}
			if h.matches.MatchAny(g.sel, ev.Topics) {
				n += len(g.subs)
			}
		}
	}
	return n
}

// deliverLane hands ev to the subscriptions of one lane; one goroutine at
// a time does this per lane, in id order.
func (h *Hub) deliverLane(ev *Event, i int) {
	h.mu.RLock()
	defer h.mu.RUnlock()
	l, out := h.lanes[i], h.lanes[i].out
	multi := len(ev.Topics) > 1
	for _, t := range ev.Topics {
		for s := range l.topics[t] {
			// a subscription to several of the event's topics, or to
			// patterns too, gets it once
			if (multi || len(s.patterns) > 0) && !s.firstOffer(ev) {
				continue
			}
			out.offer(s, ev)
		}
	}
	if len(l.patterns) > 0 {
		for _, g := range l.patterns {
			if !h.matches.MatchAny(g.sel, ev.Topics) {
				continue
			}
			for s := range g.subs {
				if s.firstOffer(ev) {
					out.offer(s, ev)
				}
			}
		}
	}
	out.batch.Flush()
	for t, n := range out.written {
		if n > 0 { // counted once per event, not per delivery
			h.stats.perTransport[t].delivered.Add(n)
			out.written[t] = 0
		}
	}
	if !ev.live {
		out.offered.Store(ev.Seq)
	}
}

// offer hands ev to s, unless it is private and s may not read it.
func (out *laneOut) offer(s *Subscription, ev *Event) {
	if ev.Private && !s.mayRead(ev) {
		return
	}
	if s.offer(ev, &out.batch, &out.written[s.transportIndex]) {
		out.written[s.transportIndex]++
	}
}

// Subscribe registers a subscription to topics and reads its backlog after
// lastEventID: an id a client saw (the hub's, "#<hub id>", or a
// publisher's own), EarliestID for the whole history, or "" for none.
// Live events are registered first and the backlog read second, so
// nothing falls between them; the subscription drops live events the
// backlog already holds. The caller must Close it.
func (h *Hub) Subscribe(ctx context.Context, topics []string, lastEventID string, transport string) (*Subscription, error) {
	return h.subscribe(ctx, topics, nil, lastEventID, Member{Connection: connectionID(), Transport: transport, Since: time.Now()}, nil, false)
}

// subscribe is Subscribe for a connection the hub knows as who (its
// Transport set), so the admin API and presence can name it, admitted on
// grant (nil: anonymous), which decides the private events it gets. It
// also gets the events any of whose topics one of patterns matches (a
// Mercure subscriber's selectors), each event once however many of its
// topics and patterns select it. With announce, it publishes push.join to
// the topics once subscribed, and Close publishes push.leave.
func (h *Hub) subscribe(ctx context.Context, topics []string, patterns []*mercureSelector, lastEventID string, who Member, grant *Grant, announce bool) (*Subscription, error) {
	transport := who.Transport
	who.Presence = announce
	if !announce {
		who.Announced = nil
	}
	s := &Subscription{
		hub:            h,
		Topics:         topics,
		patterns:       patterns,
		grant:          grant,
		transport:      transport,
		transportIndex: transportIndex(transport),
		notify:         make(chan struct{}, 1),
		ended:          make(chan struct{}),
	}
	s.follows.Store(&following{topics: topics, who: who})
	s.lane = int(h.next.Add(1) % uint32(len(h.lanes)))
	h.mu.Lock()
	l := &h.lanes[s.lane]
	for _, t := range topics {
		l.index(t, s)
	}
	for _, p := range patterns {
		g := l.patterns[p.key]
		if g == nil {
			g = &patternGroup{sel: p, subs: make(map[*Subscription]struct{})}
			l.patterns[p.key] = g
		}
		g.subs[s] = struct{}{}
	}
	h.mu.Unlock()
	h.stats.of(transport).connections.Add(1)
	if r, ok := h.broker.(Roster); ok {
		if err := r.Join(ctx, who, topics); err != nil {
			s.Close()
			return nil, err
		}
	}

	b, err := h.replay(ctx, topics, patterns, lastEventID)
	if err != nil {
		s.Close()
		return nil, err
	}
	s.from, s.skipThrough = s.marks(&b)
	h.stats.of(transport).replayed.Add(uint64(len(b.Events)))
	s.Backlog = b
	if announce {
		h.announce(who, who.announcedTopics(topics), "push.join")
	}
	return s, nil
}

// marks reads where a backlog just read leaves the subscription: from,
// after which the events of its topics reach the client (by the backlog,
// or live), and skip, up to which their live events are already in the
// backlog. It drops the private events the subscription may not read
// (they are not live either).
func (s *Subscription) marks(b *Backlog) (from, skip uint64) {
	skip = b.HeadSeq
	from = skip
	if n := len(b.Events); n > 0 {
		// a resume point with no event of the topics after it is the
		// same as the first event's predecessor
		from = b.Events[0].Seq - 1
		skip = max(skip, b.Events[n-1].Seq)
		b.Events = slices.DeleteFunc(b.Events, func(ev *Event) bool { return ev.Private && !s.mayRead(ev) })
	}
	return from, skip
}

// index adds s to the subscriptions of topic.
func (l *lane) index(topic string, s *Subscription) {
	subs := l.topics[topic]
	if subs == nil {
		subs = make(map[*Subscription]struct{})
		l.topics[topic] = subs
	}
	subs[s] = struct{}{}
}

// unindex removes s from the subscriptions of topic.
func (l *lane) unindex(topic string, s *Subscription) {
	if subs := l.topics[topic]; subs != nil {
		delete(subs, s)
		if len(subs) == 0 {
			delete(l.topics, topic)
		}
	}
}

// errSubscriptionClosed refuses a topic added to a subscription that has
// ended.
var errSubscriptionClosed = errors.New("the connection is closing")

// addTopic adds topic to s, an open subscription, and reads its backlog
// after lastEventID as Subscribe does. The caller must hold s's live
// events back meanwhile (the session's held), and then write, in order:
// earlier, the live events offered before the topic was indexed and not
// yet taken; then b, the topic's backlog (its Reset, or its Events);
// then s's live events as usual.
//
// The topic is indexed first and the backlog read second, so nothing
// falls between them. The backlog leaves out the events that reached the
// client through s's other topics before (an event on several), and
// keeps the others, whose live copies are then dropped (fresh); it is
// merged, in id order, with the live events offered up to its head
// (waiting for them if need be), so that each topic's events come in id
// order, each once, the old topics' as much as the new one's. With
// announce, s is announced to topic (push.join), and listed there.
//
// Only a subscription whose topics are sorted (a WebSocket
// subscription's) may change.
func (h *Hub) addTopic(ctx context.Context, s *Subscription, topic, lastEventID string, announce bool) (earlier []*Event, b Backlog, err error) {
	s.topicsMu.Lock()
	defer s.topicsMu.Unlock()
	old := s.follows.Load()
	if old.holds(topic) {
		return nil, Backlog{}, nil
	}
	// nothing reaches the client through topic until its backlog is read
	f := old.with(topic, announce, addedTopic{from: math.MaxUint64, skip: math.MaxUint64})
	h.mu.Lock()
	if s.closed.Load() {
		h.mu.Unlock()
		return nil, Backlog{}, errSubscriptionClosed
	}
	h.lanes[s.lane].index(topic, s)
	// no lane offers anything meanwhile: what was offered is all before
	earlier, seen := s.takeOffered()
	s.follows.Store(f)
	s.Topics = f.topics
	h.mu.Unlock()
	undo := func() {
		// as it was, but changed: its queue may hold events of topic,
		// which fresh now drops
		back := *old
		if back.added == nil {
			back.added = make(map[string]addedTopic)
		}
		h.mu.Lock()
		h.lanes[s.lane].unindex(topic, s)
		s.follows.Store(&back)
		s.Topics = old.topics
		h.mu.Unlock()
		h.rejoin(old)
	}
	if r, ok := h.broker.(Roster); ok {
		if err := r.Join(ctx, f.who, f.topics); err != nil {
			undo()
			return earlier, Backlog{}, err
		}
	}
	if b, err = h.replay(ctx, []string{topic}, nil, lastEventID); err == nil {
		// the live events up to the backlog's head are offered by now,
		// or soon: they merge with it
		err = h.offeredThrough(ctx, s.lane, b.HeadSeq)
	}
	if err != nil {
		undo()
		return earlier, Backlog{}, err
	}
	from, skip := s.marks(&b)
	b.Events = slices.DeleteFunc(b.Events, func(ev *Event) bool {
		return f.delivered(ev, topic, s.from, s.skipThrough, seen)
	})
	h.stats.of(s.transport).replayed.Add(uint64(len(b.Events)))
	done := *f
	done.added = maps.Clone(f.added)
	done.added[topic] = addedTopic{from: from, skip: skip, seen: seen}
	s.follows.Store(&done)
	live, _ := s.takeOffered()
	b.Events = mergeEvents(b.Events, live)
	if done.who.announcedOn(topic) {
		h.announce(done.who, []string{topic}, "push.join")
	}
	return earlier, b, nil
}

// takeOffered takes the events waiting for s's writer or sink, those it
// still gets (fresh), and returns them with the Seq of the last event
// offered.
func (s *Subscription) takeOffered() (events []*Event, lastSeq uint64) {
	s.mu.Lock()
	events, lastSeq = s.pending, s.lastSeq
	s.pending = nil
	s.mu.Unlock()
	return slices.DeleteFunc(events, func(ev *Event) bool { return !s.fresh(ev) }), lastSeq
}

// offeredThrough waits until lane i has offered the events up to seq,
// which the broker has stored and delivers in order. A hub that has
// delivered nothing yet may never deliver them (a Redis node follows
// from its start): then it does not wait, and a late event of the
// backlog is dropped as it comes (fresh), out of order with the events
// of other topics at worst.
func (h *Hub) offeredThrough(ctx context.Context, i int, seq uint64) error {
	out := h.lanes[i].out
	if out.offered.Load() == 0 {
		return nil
	}
	for wait := 50 * time.Microsecond; out.offered.Load() < seq; wait = min(2*wait, 10*time.Millisecond) {
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for the hub's events: %w", ctx.Err())
		case <-time.After(wait):
		}
	}
	return nil
}

// mergeEvents merges a backlog with the live events offered since it was
// read, in id order, each event once; a live-only event (push.join, ...)
// keeps its place among the live ones.
func mergeEvents(backlog, live []*Event) []*Event {
	if len(live) == 0 {
		return backlog
	}
	out := make([]*Event, 0, len(backlog)+len(live))
	i := 0
	for _, ev := range live {
		if !ev.live {
			for ; i < len(backlog) && backlog[i].Seq < ev.Seq; i++ {
				out = append(out, backlog[i])
			}
			if i < len(backlog) && backlog[i].Seq == ev.Seq {
				i++ // the same event
			}
		}
		out = append(out, ev)
	}
	return append(out, backlog[i:]...)
}

// removeTopic stops the events of topic reaching s. The client gets no
// event of the topic afterwards: the fan-out offers none once it is out
// of the index, and those offered before are dropped if not yet taken
// (fresh). If s was announced to topic, push.leave goes there.
func (h *Hub) removeTopic(s *Subscription, topic string) {
	s.topicsMu.Lock()
	defer s.topicsMu.Unlock()
	old := s.follows.Load()
	if !old.holds(topic) {
		return
	}
	f := old.without(topic)
	h.mu.Lock()
	if s.closed.Load() {
		h.mu.Unlock()
		return
	}
	h.lanes[s.lane].unindex(topic, s)
	s.follows.Store(f)
	s.Topics = f.topics
	h.mu.Unlock()
	h.rejoin(f)
	if old.who.announcedOn(topic) {
		h.announce(old.who, []string{topic}, "push.leave")
	}
}

// rejoin has the roster, if any, record a subscription's topics anew
// after they changed. A failure leaves the roster to the broker, which
// writes its entries anew once it can.
func (h *Hub) rejoin(f *following) {
	r, ok := h.broker.(Roster)
	if !ok {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := r.Join(ctx, f.who, f.topics); err != nil {
		h.logger.Warn("roster not updated", zap.String("connection", f.who.Connection), zap.Error(err))
	}
}

// with is f plus topic (kept sorted), at mark; announce says whether the
// member is announced to it.
func (f *following) with(topic string, announce bool, mark addedTopic) *following {
	n := &following{who: f.who, added: maps.Clone(f.added)}
	if n.added == nil {
		n.added = make(map[string]addedTopic, 1)
	}
	n.added[topic] = mark
	n.topics = slices.Sorted(slices.Values(append(slices.Clip(f.topics), topic)))
	n.who.Announced, n.who.Presence = announcedWith(f.who, f.topics, topic, announce)
	return n
}

// without is f less topic.
func (f *following) without(topic string) *following {
	n := &following{who: f.who, added: maps.Clone(f.added)}
	if n.added == nil {
		n.added = make(map[string]addedTopic)
	}
	delete(n.added, topic)
	n.topics = slices.DeleteFunc(slices.Clone(f.topics), func(t string) bool { return t == topic })
	if f.who.Announced != nil {
		n.who.Announced = slices.DeleteFunc(slices.Clone(f.who.Announced), func(t string) bool { return t == topic })
		if len(n.who.Announced) == 0 { // announced nowhere: as a connection never announced
			n.who.Announced, n.who.Presence = nil, false
		}
	}
	return n
}

// announcedWith is where a member announced as m on topics is announced
// once it also follows topic (announce: on topic too): its Announced
// and Presence.
func announcedWith(m Member, topics []string, topic string, announce bool) ([]string, bool) {
	switch {
	case announce && !m.Presence:
		return []string{topic}, true
	case announce && m.Announced != nil:
		return append(slices.Clip(m.Announced), topic), true
	case !announce && m.Presence && m.Announced == nil:
		return slices.Clone(topics), true // all of them, not the new one
	}
	return m.Announced, m.Presence
}

// replay reads the backlog of a subscription to topics and patterns from
// a client's last event id, whichever kind it is: the hub's id, "#<hub
// id>" (Mercure's spelling of the hub's ids), EarliestID, or a
// publisher's own id (Message.CustomID), which resumes after the earliest
// event in history that has it; anything else is a reset. Without
// patterns it is the broker's Replay, with them its ReplayMatching; a
// broker that cannot match resumes no pattern subscription.
func (h *Hub) replay(ctx context.Context, topics []string, patterns []*mercureSelector, lastEventID string) (Backlog, error) {
	from, known, err := h.resumePoint(ctx, lastEventID)
	switch {
	case err != nil:
		return Backlog{}, err
	case !known:
		b, err := h.broker.Replay(ctx, topics, "") // the head, for the reset
		b.Reset = "unknown event id"
		return b, err
	}
	if len(patterns) == 0 {
		return h.broker.Replay(ctx, topics, from)
	}
	mr, ok := h.broker.(MatchReplayer)
	if !ok {
		b, err := h.broker.Replay(ctx, nil, "") // the head
		if err == nil && from != "" {
			b.Reset = "this hub's broker cannot replay pattern subscriptions"
		}
		return b, err
	}
	exact := make(map[string]struct{}, len(topics))
	for _, t := range topics {
		exact[t] = struct{}{}
	}
	return mr.ReplayMatching(ctx, func(topic string) bool {
		if _, ok := exact[topic]; ok {
			return true
		}
		return slices.ContainsFunc(patterns, func(p *mercureSelector) bool { return h.matches.Match(p, topic) })
	}, from)
}

// resumePoint turns a client's last event id into one Replay reads: a
// hub id, "" or EarliestID. known is false for an id of neither kind.
func (h *Hub) resumePoint(ctx context.Context, id string) (from string, known bool, err error) {
	if _, _, ok := ParseID(id); ok || id == "" {
		return id, true, nil // the common case, at no cost
	}
	id = strings.TrimPrefix(id, "#")
	if _, _, ok := ParseID(id); ok || id == EarliestID {
		return id, true, nil
	}
	r, ok := h.broker.(IDResolver)
	if !ok || ValidateCustomID(id) != nil {
		return "", false, nil
	}
	return r.ResolveID(ctx, id)
}

func (h *Hub) unsubscribe(s *Subscription) {
	h.mu.Lock()
	l := &h.lanes[s.lane]
	for _, t := range s.Topics {
		l.unindex(t, s)
	}
	for _, p := range s.patterns {
		if g := l.patterns[p.key]; g != nil {
			delete(g.subs, s)
			if len(g.subs) == 0 {
				delete(l.patterns, p.key)
			}
		}
	}
	h.mu.Unlock()
	h.stats.of(s.transport).connections.Add(-1)
}

// uniqueTopics drops repeated topics, keeping the first of each in order,
// in time linear in their number.
func uniqueTopics(topics []string) []string {
	out := make([]string, 0, len(topics))
	if len(topics) < 2 {
		return append(out, topics...)
	}
	seen := make(map[string]struct{}, len(topics))
	for _, t := range topics {
		if _, dup := seen[t]; !dup {
			seen[t] = struct{}{}
			out = append(out, t)
		}
	}
	return out
}

// announce tells topics of a member's arrival or departure: to this
// node's subscribers at once, and to other nodes' through the broker's
// broadcast. The event is live only: it is not stored, has no id and is
// never replayed, so connections coming and going cannot push the
// topics' events out of history, nor move a client's resume point (a
// client that resumes gets push.presence instead).
func (h *Hub) announce(who Member, topics []string, event string) {
	if len(topics) == 0 {
		return
	}
	m := Message{Topics: topics, Type: event, Data: presenceData(who)}
	h.deliver(&Event{Message: m, live: true})
	if b, ok := h.broker.(Broadcaster); ok {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := b.Broadcast(ctx, Command{Announce: &m}); err != nil {
			h.logger.Warn("presence event not sent to other nodes", zap.String("event", event), zap.Error(err))
		}
	}
}

// Interface guards
var _ caddy.Destructor = (*Hub)(nil)
