package push

import (
	"context"
	"slices"
	"sync"
	"sync/atomic"
)

// Hub is one named channel space: its broker stores events, and the hub fans
// them out to the subscriptions of this process.
type Hub struct {
	name   string
	broker Broker
	stats  hubStats

	mu     sync.RWMutex
	topics map[string]map[*Subscription]struct{}
}

func newHub(name string) *Hub {
	return &Hub{name: name, topics: make(map[string]map[*Subscription]struct{})}
}

// Name is the hub's name.
func (h *Hub) Name() string { return h.name }

// Publish validates m, has the broker store it, and returns the event id.
// Delivery to subscribers follows asynchronously from the broker.
func (h *Hub) Publish(ctx context.Context, m Message) (string, error) {
	if err := m.Validate(); err != nil {
		return "", err
	}
	m.Topics = uniqueTopics(m.Topics)
	ev := &Event{Message: m}
	if err := h.broker.Publish(ctx, ev); err != nil {
		return "", err
	}
	h.stats.published.Add(1)
	return ev.ID, nil
}

// deliver hands ev to every local subscription of its topics. The broker
// calls it one event at a time, in id order.
func (h *Hub) deliver(ev *Event) {
	h.mu.RLock()
	defer h.mu.RUnlock()
	multi := len(ev.Topics) > 1
	for _, t := range ev.Topics {
		for s := range h.topics[t] {
			if multi {
				// a subscription to several of the event's topics gets it once
				if s.lastOffered >= ev.Seq {
					continue
				}
				s.lastOffered = ev.Seq
			}
			s.offer(ev)
		}
	}
}

// Subscribe registers a subscription to topics and reads its backlog after
// lastEventID. Live events are registered first and the backlog read
// second, so nothing falls between them; the subscription drops live
// events the backlog already holds. The caller must Close it.
func (h *Hub) Subscribe(ctx context.Context, topics []string, lastEventID string, transport string) (*Subscription, error) {
	s := &Subscription{
		hub:       h,
		Topics:    topics,
		transport: transport,
		notify:    make(chan struct{}, 1),
		ended:     make(chan struct{}),
	}
	h.mu.Lock()
	for _, t := range topics {
		subs := h.topics[t]
		if subs == nil {
			subs = make(map[*Subscription]struct{})
			h.topics[t] = subs
		}
		subs[s] = struct{}{}
	}
	h.mu.Unlock()
	h.stats.of(transport).connections.Add(1)

	b, err := h.broker.Replay(ctx, topics, lastEventID)
	if err != nil {
		s.Close()
		return nil, err
	}
	s.Backlog = b
	s.skipThrough = b.HeadSeq
	if n := len(b.Events); n > 0 {
		s.skipThrough = max(s.skipThrough, b.Events[n-1].Seq)
		h.stats.of(transport).replayed.Add(uint64(n))
	}
	return s, nil
}

// resync ends every subscription: the broker lost events it cannot
// deliver in order, so each client must resume from its own last id.
func (h *Hub) resync() {
	h.mu.RLock()
	defer h.mu.RUnlock()
	for _, subs := range h.topics {
		for s := range subs {
			s.end(false)
		}
	}
}

func (h *Hub) unsubscribe(s *Subscription) {
	h.mu.Lock()
	for _, t := range s.Topics {
		if subs := h.topics[t]; subs != nil {
			delete(subs, s)
			if len(subs) == 0 {
				delete(h.topics, t)
			}
		}
	}
	h.mu.Unlock()
	h.stats.of(s.transport).connections.Add(-1)
}

// maxPending is how many events a subscription may have queued before it is
// a slow consumer and is disconnected (it can resume with its last id).
const maxPending = 1024

// Subscription is one client's live feed from a hub. The hub offers events
// without ever blocking; the client's writer takes them in batches.
type Subscription struct {
	// Topics are the subscribed topics.
	Topics []string
	// Backlog is what the client gets before live events.
	Backlog Backlog

	hub         *Hub
	transport   string
	lastOffered uint64 // only touched by deliver, which the broker serialises
	skipThrough uint64 // live events up to here are already in the backlog

	mu      sync.Mutex
	pending []*Event
	notify  chan struct{}
	ended   chan struct{}
	endOnce sync.Once
	behind  bool // why ended was closed; written before
	closed  atomic.Bool
}

func (s *Subscription) offer(ev *Event) {
	s.mu.Lock()
	if len(s.pending) >= maxPending {
		s.mu.Unlock()
		s.CutOff()
		return
	}
	s.pending = append(s.pending, ev)
	s.mu.Unlock()
	select {
	case s.notify <- struct{}{}:
	default:
	}
}

// CutOff ends the subscription of a subscriber that is too slow (its
// queue is full, or a write to it timed out), and counts it.
func (s *Subscription) CutOff() {
	s.end(true)
}

func (s *Subscription) end(behind bool) {
	s.endOnce.Do(func() {
		s.behind = behind
		if behind {
			s.hub.stats.of(s.transport).slow.Add(1)
		}
		close(s.ended)
	})
}

// Ready is signalled when events are waiting to be taken.
func (s *Subscription) Ready() <-chan struct{} { return s.notify }

// Ended is closed when the hub ends the subscription: the subscriber fell
// too far behind (FellBehind), or the hub's broker lost events it cannot
// deliver in order. The connection must then end so that the client
// resumes from its last id, with a replay or a push.reset.
func (s *Subscription) Ended() <-chan struct{} { return s.ended }

// FellBehind reports, once Ended is closed, whether the subscriber was
// cut off for being too slow.
func (s *Subscription) FellBehind() bool { return s.behind }

// Take moves the waiting events into buf (whose contents it overwrites)
// and returns it. Passing the previous batch back in makes the steady
// state allocation-free.
func (s *Subscription) Take(buf []*Event) []*Event {
	s.mu.Lock()
	batch := s.pending
	clear(buf)
	s.pending = buf[:0]
	s.mu.Unlock()
	// drop what the backlog already delivered
	i := 0
	for i < len(batch) && batch[i].Seq <= s.skipThrough {
		i++
	}
	if i > 0 {
		batch = append(batch[:0], batch[i:]...)
	}
	return batch
}

// Delivered counts events written to the client, for metrics.
func (s *Subscription) Delivered(n int) {
	s.hub.stats.of(s.transport).delivered.Add(uint64(n))
}

// Close unregisters the subscription. It is safe to call more than once.
func (s *Subscription) Close() {
	if s.closed.CompareAndSwap(false, true) {
		s.hub.unsubscribe(s)
	}
}

// uniqueTopics drops repeated topics, keeping the first of each in order.
func uniqueTopics(topics []string) []string {
	out := make([]string, 0, len(topics))
	for _, t := range topics {
		if !slices.Contains(out, t) {
			out = append(out, t)
		}
	}
	return out
}
