package push

import (
	"context"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddy-push/push/internal/engine"
)

// Subscription is one client's live feed from a hub. The hub offers events
// without ever blocking; the client's writer takes them in batches.
type Subscription struct {
	// Topics are the subscribed topics. Only a WebSocket client's
	// subscribe and unsubscribe messages change them, under the hub's
	// lock, and each change replaces the slice.
	Topics []string
	// Backlog is what the client gets before live events.
	Backlog Backlog

	hub *Hub
	// follows is what it follows (its topics, and who it is on them),
	// replaced whole under the hub's lock and topicsMu, so that any
	// goroutine may read it without a lock
	follows        atomic.Pointer[following]
	topicsMu       sync.Mutex // held while its topics change, and by Close
	grant          *Grant     // the token that admitted it (nil: anonymous); set before the hub indexes it, never changed
	transport      string
	transportIndex int             // of transport in transports
	lane           int             // of the hub's lanes, the one that delivers to it
	lastOffered    uint64          // only touched by its lane, one event at a time
	lastLive       *Event          // the same, for live events (which have no Seq)
	lastSeq        uint64          // the Seq of the last stored event offered; under mu
	skipThrough    uint64          // live events up to here are already in the backlog
	from           uint64          // the events of its first topics after this reach the client (backlog or live)
	presence       []topicPresence // push.presence data to send first, per topic
	// patterns select topics besides Topics (a Mercure subscriber's
	// selectors); set before the hub indexes it, never changed
	patterns []*mercureSelector

	mu      sync.Mutex
	pending []*Event
	sink    Sink // once attached, only held (detached) while a topic is added
	told    bool // sink.Ended was called
	expiry  *time.Timer
	notify  chan struct{}
	ended   chan struct{}
	endOnce sync.Once
	// why ended was closed, and until when a paused client stays away;
	// written before it is closed
	cause      endCause
	pauseUntil time.Time
	closed     atomic.Bool

	// the events hook: whether the app was told of the connection (and
	// is to be told of its end), the endpoint's stopping, and why the
	// connection ends, once known (the first reason given)
	reported bool
	stopping <-chan struct{}
	why      atomic.Pointer[string]
}

// endCause is why the hub ended a subscription.
type endCause uint8

const (
	endResync     endCause = iota // the broker lost events
	endSlow                       // the subscriber fell too far behind
	endPause                      // paused: the client should come back later
	endDisconnect                 // disconnected by an operator (Hub.Disconnect)
	endExpired                    // the token that admitted it expired
)

// maxPending is how many events a subscription may have queued before it is
// a slow consumer and is disconnected (it can resume with its last id).
const maxPending = 1024

// Sink takes a subscription's live events straight from the hub's
// fan-out, instead of a goroutine taking them in batches (Ready, Take).
// Its methods are called on the fan-out's goroutine and must not block.
type Sink interface {
	// Deliver writes one live event, in id order, and reports whether it
	// did (the hub counts deliveries).
	Deliver(ev *Event) bool
	// Ended is called once when the hub ends the subscription; Ended's
	// channel is closed, and FellBehind and PausedUntil say why.
	Ended()
}

// batchSink is a Sink whose deliveries the fan-out gathers into one
// batch of writes (a stream the connection engine owns).
type batchSink interface {
	Sink
	// DeliverInto adds a live event's write to b, and has b count it in
	// count once written.
	DeliverInto(b *engine.Batch, ev *Event, count *uint64)
}

// offer queues ev for the subscription's goroutine, or writes it through
// its sink (a batchSink adds it to b, which counts it in count); it
// reports whether the sink wrote it.
func (s *Subscription) offer(ev *Event, b *engine.Batch, count *uint64) bool {
	s.mu.Lock()
	if !ev.live {
		s.lastSeq = ev.Seq
	}
	if sink := s.sink; sink != nil {
		// skipThrough is set before Attach, which published it under mu
		skip := !s.fresh(ev)
		s.mu.Unlock()
		if skip {
			return false
		}
		if bs, ok := sink.(batchSink); ok {
			bs.DeliverInto(b, ev, count)
			return false
		}
		return sink.Deliver(ev)
	}
	if len(s.pending) >= maxPending {
		s.mu.Unlock()
		s.CutOff()
		return false
	}
	s.pending = append(s.pending, ev)
	s.mu.Unlock()
	select {
	case s.notify <- struct{}{}:
	default:
	}
	return false
}

// Attach hands the subscription's live events to sink from now on: the
// events waiting now first, then each as the hub delivers it. Call it once
// the backlog is written; nothing must call Take afterwards.
func (s *Subscription) Attach(sink Sink) {
	n := 0
	for {
		// the waiting events are written outside the lock (a write that
		// finds the client too slow ends the subscription, which takes
		// it); those offered meanwhile wait for the next round
		s.mu.Lock()
		batch := s.pending
		s.pending = nil
		if len(batch) == 0 {
			s.sink = sink
			break
		}
		s.mu.Unlock()
		for _, ev := range batch {
			if s.fresh(ev) && sink.Deliver(ev) {
				n++
			}
		}
	}
	tell := s.isEnded() && !s.told // ended before the sink could hear of it
	s.told = s.told || tell
	s.mu.Unlock()
	s.Delivered(n)
	if tell {
		sink.Ended()
	}
}

// hold detaches the subscription's sink, so that its live events wait
// (as before Attach) until Attach hands them to the sink again.
func (s *Subscription) hold() {
	s.mu.Lock()
	s.sink = nil
	s.mu.Unlock()
}

// CutOff ends the subscription of a subscriber that is too slow (its
// queue is full, or a write to it timed out), and counts it.
func (s *Subscription) CutOff() {
	s.end(endSlow, time.Time{})
}

// Pause ends the subscription and asks its client to come back at until.
func (s *Subscription) Pause(until time.Time) {
	s.end(endPause, until)
}

// end closes Ended with its cause, once; it reports whether this call did.
func (s *Subscription) end(cause endCause, until time.Time) bool {
	done := false
	s.endOnce.Do(func() {
		s.cause, s.pauseUntil = cause, until
		s.endedFor(endReasons[cause])
		switch cause {
		case endSlow:
			s.hub.stats.of(s.transport).slow.Add(1)
		case endPause:
			s.hub.stats.of(s.transport).paused.Add(1)
		case endDisconnect:
			s.hub.stats.of(s.transport).disconnected.Add(1)
		case endExpired:
			s.hub.stats.of(s.transport).expired.Add(1)
		}
		close(s.ended)
		// a goroutine waiting on Ready only hears of the end there
		select {
		case s.notify <- struct{}{}:
		default:
		}
		done = true
	})
	if done {
		s.mu.Lock()
		sink := s.sink
		tell := sink != nil && !s.told
		s.told = s.told || tell
		s.mu.Unlock()
		if tell {
			sink.Ended()
		}
	}
	return done
}

func (s *Subscription) isEnded() bool {
	select {
	case <-s.ended:
		return true
	default:
		return false
	}
}

// Ready is signalled when events are waiting to be taken, and when the
// subscription has ended (Ended).
func (s *Subscription) Ready() <-chan struct{} { return s.notify }

// Ended is closed when the hub ends the subscription: the subscriber fell
// too far behind (FellBehind), it was paused (PausedUntil), or the hub's
// broker lost events it cannot deliver in order. The connection must then
// end so that the client resumes from its last id, with a replay or a
// push.reset.
func (s *Subscription) Ended() <-chan struct{} { return s.ended }

// FellBehind reports, once Ended is closed, whether the subscriber was
// cut off for being too slow.
func (s *Subscription) FellBehind() bool { return s.cause == endSlow }

// PausedUntil reports, once Ended is closed, whether the subscription was
// paused, or disconnected with a time to come back, and when its client
// should come back.
func (s *Subscription) PausedUntil() (time.Time, bool) {
	return s.pauseUntil, s.cause == endPause || s.cause == endDisconnect && !s.pauseUntil.IsZero()
}

// Disconnected reports, once Ended is closed, whether an operator
// disconnected the subscription (Hub.Disconnect): a WebSocket closes with
// 1008, an SSE stream ends (after a pause block when PausedUntil says so).
func (s *Subscription) Disconnected() bool { return s.cause == endDisconnect }

// TokenExpired reports whether the subscription ended because the token
// that admitted it expired (see ExpireAt).
func (s *Subscription) TokenExpired() bool { return s.cause == endExpired }

// ExpireAt ends the subscription at t, the expiry of the token that
// admitted it, so that a revoked user does not keep streaming: its
// client must come back with a token that is good now. A zero t never
// ends it.
func (s *Subscription) ExpireAt(t time.Time) {
	if t.IsZero() {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.expiry != nil {
		s.expiry.Stop()
	}
	s.expiry = time.AfterFunc(time.Until(t), func() { s.end(endExpired, time.Time{}) })
}

// Member is who the subscription is: its connection id, user, transport,
// remote address and start.
func (s *Subscription) Member() Member { return s.follows.Load().who }

// topics are the subscription's topics, for a reader that does not hold
// the hub's lock.
func (s *Subscription) topics() []string { return s.follows.Load().topics }

// Take moves the waiting events into buf (whose contents it overwrites)
// and returns it. Passing the previous batch back in makes the steady
// state allocation-free.
func (s *Subscription) Take(buf []*Event) []*Event {
	s.mu.Lock()
	batch := s.pending
	clear(buf)
	s.pending = buf[:0]
	s.mu.Unlock()
	// drop what the backlog already delivered, and the events of topics
	// it no longer follows
	return slices.DeleteFunc(batch, func(ev *Event) bool { return !s.fresh(ev) })
}

// firstOffer reports whether ev is offered to the subscription for the
// first time, and marks it offered: an event can reach a subscription
// through several of its topics and patterns. Only its lane calls it,
// with events in id order.
func (s *Subscription) firstOffer(ev *Event) bool {
	if ev.live {
		if s.lastLive == ev {
			return false
		}
		s.lastLive = ev
		return true
	}
	if s.lastOffered >= ev.Seq {
		return false
	}
	s.lastOffered = ev.Seq
	return true
}

// mayRead reports whether the subscription may get ev, a private event:
// Mercure's rule, its connection's verified token allows one of ev's
// topics (with a Mercure token, one of its subscribe selectors matches
// one). The fan-out asks only for private events.
func (s *Subscription) mayRead(ev *Event) bool {
	if s.grant == nil {
		return false
	}
	if s.grant.mercure != nil {
		return s.grant.mercure.CanReceivePrivate(ev.Topics, s.hub.matches)
	}
	for _, t := range ev.Topics {
		if s.grant.CanSubscribe(t) {
			return true
		}
	}
	return false
}

// fresh reports whether a live delivery of ev is not already in the
// subscription's backlog (nor in that of a topic added since), and, once
// its topics changed, whether it still follows one of ev's topics.
func (s *Subscription) fresh(ev *Event) bool {
	f := s.follows.Load()
	if f.added == nil { // its topics never changed: the common case
		return ev.live || ev.Seq > s.skipThrough
	}
	return !f.inBacklog(ev) && f.gets(ev, s.skipThrough)
}

// following is what a subscription follows. It is never changed: a
// WebSocket client's subscribe and unsubscribe replace it.
type following struct {
	topics []string // sorted, once they changed
	// who is the connection, with Presence and Announced as of topics
	who Member
	// added has the topics added since the subscription began; nil until
	// its topics first change
	added map[string]addedTopic
}

// addedTopic is where the events of a topic added to an open
// subscription begin.
type addedTopic struct {
	from uint64 // its events after this reach the client (backlog or live)
	skip uint64 // its live events up to here were in its backlog
	// seen is the last event offered before it was added: its backlog
	// holds its events after this (up to skip) even when they reach the
	// client through another topic too
	seen uint64
}

// holds reports whether f follows topic.
func (f *following) holds(topic string) bool {
	_, ok := slices.BinarySearch(f.topics, topic)
	return ok
}

// delivered reports whether ev, in the backlog of a topic being added
// (except), reached the client already through one of the other topics
// f follows: in that topic's backlog, or live before the topic was
// indexed (seen: the last event offered then). first and firstSkip are
// the marks of the subscription's first topics. (One it gets live since
// is merged with the backlog, once.)
func (f *following) delivered(ev *Event, except string, first, firstSkip, seen uint64) bool {
	for _, t := range ev.Topics {
		if t == except || !f.holds(t) {
			continue
		}
		from, skip := first, firstSkip
		if a, ok := f.added[t]; ok {
			from, skip = a.from, a.skip
		}
		if ev.Seq > from && (ev.Seq <= skip || ev.Seq <= seen) {
			return true
		}
	}
	return false
}

// inBacklog reports whether ev, offered live, was in the backlog of a
// topic added to f: ev came late, after the backlog was merged with the
// live events.
func (f *following) inBacklog(ev *Event) bool {
	if ev.live {
		return false
	}
	for _, t := range ev.Topics {
		if a, ok := f.added[t]; ok && ev.Seq > max(a.from, a.seen) && ev.Seq <= a.skip && f.holds(t) {
			return true
		}
	}
	return false
}

// gets reports whether ev reaches the client live through one of the
// topics f follows: ev is live (push.join, ...), or after that topic's
// skip mark (firstSkip for the subscription's first topics).
func (f *following) gets(ev *Event, firstSkip uint64) bool {
	for _, t := range ev.Topics {
		if !f.holds(t) {
			continue
		}
		skip := firstSkip
		if a, ok := f.added[t]; ok {
			skip = a.skip
		}
		if ev.live || ev.Seq > skip {
			return true
		}
	}
	return false
}

// Delivered counts events written to the client, for metrics.
func (s *Subscription) Delivered(n int) {
	s.hub.stats.of(s.transport).delivered.Add(uint64(n))
}

// Close unregisters the subscription. It is safe to call more than once.
func (s *Subscription) Close() {
	if s.closed.CompareAndSwap(false, true) {
		s.mu.Lock()
		if s.expiry != nil {
			s.expiry.Stop()
		}
		s.mu.Unlock()
		// after a topic being added, which then sees it closed
		s.topicsMu.Lock()
		defer s.topicsMu.Unlock()
		s.hub.unsubscribe(s)
		f := s.follows.Load()
		if r, ok := s.hub.broker.(Roster); ok {
			// before push.leave, so no newcomer lists a member that left
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			r.Leave(ctx, f.who, f.topics, f.who.Presence)
			cancel()
		}
		s.hub.announce(f.who, f.who.announcedTopics(f.topics), "push.leave")
		if f.who.Mercure != nil {
			s.hub.mercureSubscriptionEvents(f.who.Mercure, false)
		}
		s.disconnected()
	}
}
