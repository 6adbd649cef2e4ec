package push

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"go.uber.org/zap"
)

// EventsHook tells the app what happens on a hub: connections coming and
// going (with why they went), and what WebSocket clients publish. Events
// are sent in JSON batches, signed with the secret, from a bounded queue,
// and retried until the app takes them.
type EventsHook struct {
	Hook

	// The key the app checks each batch with: the Push-Signature header
	// is sha256=<hex of the HMAC-SHA256 of the body with this key>.
	// Placeholders are expanded once, at load ({env.PUSH_EVENTS_SECRET}).
	// Required.
	Secret string `json:"secret,omitempty"`

	// How long an event may wait for others to share its batch. Default:
	// 1s.
	Interval caddy.Duration `json:"interval,omitempty"`

	// The most events in one batch; a full batch is sent at once.
	// Default: 100.
	Batch int `json:"batch,omitempty"`

	// The most events that may wait to be sent while the app is slow or
	// down; beyond it new events are dropped, counted in
	// caddy_push_hook_events_dropped_total and logged. Default: 10000.
	Queue int `json:"queue,omitempty"`
}

// Defaults of the events hook.
const (
	DefaultEventsInterval = time.Second
	DefaultEventsBatch    = 100
	DefaultEventsQueue    = 10000
)

// The events hook's retries: from the first delay, doubling up to the
// longest; and how long a hub whose last configuration with events goes
// away keeps trying to send what is queued.
const (
	eventsRetryFirst = 100 * time.Millisecond
	eventsRetryMax   = 10 * time.Second
	eventsFlushFor   = 2 * time.Second
	// eventsLogEvery spaces the warnings of a queue that drops events,
	// and of an app that does not take them
	eventsLogEvery = 5 * time.Second
)

// provision checks the options and readies the hook.
func (e *EventsHook) provision(ctx caddy.Context) error {
	if err := e.Hook.provision(ctx, "events"); err != nil {
		return err
	}
	e.Secret = caddy.NewReplacer().ReplaceKnown(e.Secret, "")
	if e.Secret == "" {
		return fmt.Errorf("events needs a secret: the app checks with it that each batch comes from this server (the Push-Signature header); without one anybody could send it events")
	}
	if e.Interval < 0 || e.Batch < 0 || e.Queue < 0 {
		return fmt.Errorf("events: interval, batch and queue must not be negative")
	}
	if e.Interval == 0 {
		e.Interval = caddy.Duration(DefaultEventsInterval)
	}
	if e.Batch == 0 {
		e.Batch = DefaultEventsBatch
	}
	if e.Queue == 0 {
		e.Queue = DefaultEventsQueue
	}
	return nil
}

// sign is the Push-Signature of body.
func (e *EventsHook) sign(body []byte) string {
	mac := hmac.New(sha256.New, []byte(e.Secret))
	mac.Write(body)
	return "sha256=" + hex.EncodeToString(mac.Sum(nil))
}

// hookEvent is one thing the app is told.
type hookEvent struct {
	// Type is connect, disconnect, subscribe, unsubscribe or publish.
	Type string    `json:"type"`
	Time time.Time `json:"time"`
	Hub  string    `json:"hub"`
	// who: the connection
	Connection string `json:"connection,omitempty"`
	User       string `json:"user,omitempty"`
	Transport  string `json:"transport,omitempty"`
	RemoteAddr string `json:"remote_addr,omitempty"`
	// Meta is what the authorize hook's answer attached to the connection.
	Meta json.RawMessage `json:"meta,omitempty"`
	// Topics are the connection's topics (connect, disconnect), or those
	// it took up or gave up (subscribe, unsubscribe).
	Topics []string `json:"topics,omitempty"`
	// Reason is why a connection ended, or, on connect, "rejoined" for a
	// connection told of again (see Hub.rejoined).
	Reason string `json:"reason,omitempty"`
	// Node is the node that was lost (reason node_lost).
	Node string `json:"node,omitempty"`
	// Event is what a client published.
	Event *hookMessage `json:"event,omitempty"`
}

// hookMessage is a published event as the app is told of it.
type hookMessage struct {
	ID     string   `json:"id"`
	Topics []string `json:"topics"`
	Event  string   `json:"event,omitempty"`
	Data   string   `json:"data"`
}

// Why a connection ended, as the app is told.
const (
	hookClientLeft   = "client_left"   // the client went, or its connection dropped
	hookSlow         = "slow"          // cut off as a slow consumer
	hookMaxDuration  = "max_duration"  // reached max_duration (with or without pause_for)
	hookPaused       = "paused"        // paused (Hub.Pause, the admin API)
	hookReload       = "reload"        // its handler's config unloaded: a reload, or Caddy stopping
	hookTokenExpired = "token_expired" // the token that admitted it expired
	hookDisconnected = "disconnected"  // an operator disconnected it (Hub.Disconnect, the admin API)
	hookResync       = "resync"        // the hub's broker lost events: the client resumes
	hookPolicy       = "policy"        // a WebSocket closed for what its client sent (rate, size, errors)
	hookNodeLost     = "node_lost"     // the node holding it stopped (Redis: told by a surviving node)
)

// endReasons is what the app is told for each of the hub's causes.
var endReasons = [...]string{
	endResync:     hookResync,
	endSlow:       hookSlow,
	endPause:      hookPaused,
	endDisconnect: hookDisconnected,
	endExpired:    hookTokenExpired,
}

// connectionEvent is an event of typ about the connection who, with
// topics.
func connectionEvent(typ string, who Member, topics []string) hookEvent {
	return hookEvent{Type: typ, Connection: who.Connection, User: who.User, Transport: who.Transport,
		RemoteAddr: who.RemoteAddr, Meta: who.Meta, Topics: topics}
}

// hookEvent tells the app of e, if the hub has an events hook: it is
// queued, and sent in a batch. It never blocks, and costs nothing
// without the hook. The WebSocket's subscribe and unsubscribe messages
// tell of the topics a connection takes up or gives up with
//
//	sub.hub.hookEvent(connectionEvent("subscribe", sub.Member(), []string{topic}))
func (h *Hub) hookEvent(e hookEvent) {
	if !h.events.on.Load() {
		return
	}
	if e.Time.IsZero() {
		e.Time = time.Now()
	}
	e.Time = e.Time.UTC()
	e.Hub = h.name
	h.events.add(e)
}

// hookTopics are the topics a connection follows, as the app is told:
// its topics, and a push_mercure subscriber's selectors too.
func (s *Subscription) hookTopics() []string {
	if len(s.patterns) == 0 {
		return s.topics()
	}
	topics := slices.Clip(s.topics())
	for _, p := range s.patterns {
		topics = append(topics, p.String())
	}
	return topics
}

// connected tells the app of a connection an endpoint admitted; its end
// is told by Close. stopping is the endpoint's: a connection that ends
// once it is closed ends for a reload.
func (s *Subscription) connected(stopping <-chan struct{}) {
	if !s.hub.events.attached.Load() {
		return
	}
	s.stopping, s.reported = stopping, true
	s.hub.events.open.Add(1)
	e := connectionEvent("connect", s.Member(), s.hookTopics())
	e.Time = s.Member().Since
	s.hub.hookEvent(e)
}

// endedFor records why the connection ends, unless a reason is known
// already: the first is the one the app is told.
func (s *Subscription) endedFor(reason string) {
	s.why.CompareAndSwap(nil, &reason)
}

// disconnected tells the app that a connection it was told of has ended,
// and why.
func (s *Subscription) disconnected() {
	if !s.reported {
		return
	}
	reason := hookClientLeft
	if why := s.why.Load(); why != nil {
		reason = *why
	} else if isClosed(s.stopping) {
		reason = hookReload
	}
	e := connectionEvent("disconnect", s.Member(), s.hookTopics())
	e.Reason = reason
	s.hub.hookEvent(e)
	if s.hub.events.open.Add(-1) == 0 {
		signal(s.hub.events.wake) // a flush may be waiting for it
	}
}

func isClosed(c <-chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

// published tells the app of what a client published through its
// connection, who.
func (h *Hub) published(who Member, m Message, id string) {
	if !h.events.on.Load() {
		return
	}
	e := connectionEvent("publish", who, nil)
	e.Event = &hookMessage{ID: id, Topics: m.Topics, Event: m.Type, Data: m.Data}
	h.hookEvent(e)
}

// nodeLost tells the app that the connections of a node that stopped
// have ended. The broker calls it on the one node that found the node
// dead, with the connections its roster held.
func (h *Hub) nodeLost(node string, lost []Joined) {
	for _, j := range lost {
		e := connectionEvent("disconnect", j.Member, j.Topics)
		e.Reason, e.Node = hookNodeLost, node
		h.hookEvent(e)
	}
}

// rejoined tells the app again of this node's connections, when the
// broker's roster had forgotten the node (another node took it for dead
// and told the app of its connections' end, or Redis lost its data)
// while they stayed open.
func (h *Hub) rejoined(list []Joined) {
	for _, j := range list {
		e := connectionEvent("connect", j.Member, j.Topics)
		e.Reason = "rejoined"
		h.hookEvent(e)
	}
}

// eventSink is a hub's queue of events for the app, and the goroutine
// that sends them. It outlives configurations, as the hub does: each
// configuration with events attaches its settings, and the newest one
// attached is used, so a reload loses nothing queued. The goroutine runs
// while a configuration is attached; when the last one detaches, it
// sends what is queued, and the ends of the connections the app was told
// of and that are closing, for up to eventsFlushFor, then ends.
type eventSink struct {
	on       atomic.Bool  // the goroutine runs: events are queued
	attached atomic.Bool  // a configuration is: new connections are told of
	open     atomic.Int64 // connections the app was told of, and not yet of their end
	dropped  atomic.Uint64

	mu      sync.Mutex
	queue   []hookEvent
	configs []*EventsHook // attached, newest last
	last    *EventsHook   // the newest, kept to flush with once none is attached
	logger  *zap.Logger   // of the newest configuration
	done    chan struct{} // closed as the goroutine ends
	// flushUntil is when the goroutine gives up on what is queued, once
	// no configuration is attached; zero while one is
	flushUntil time.Time
	wake       chan struct{} // an event to send, or a change of configuration
	flush      chan struct{} // the last configuration detached: cut a retry's wait short
	unseen     int           // drops not yet logged
	logged     time.Time     // the last warning about drops
}

func newEventSink() *eventSink {
	return &eventSink{wake: make(chan struct{}, 1), flush: make(chan struct{}, 1), logger: zap.NewNop()}
}

// attach makes cfg the settings events are sent with, starting the
// goroutine if need be.
func (s *eventSink) attach(cfg *EventsHook, logger *zap.Logger) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.configs = append(s.configs, cfg)
	s.last, s.logger, s.flushUntil = cfg, logger, time.Time{}
	s.attached.Store(true)
	select {
	case <-s.flush: // a detach's, now stale
	default:
	}
	if !s.on.Load() {
		s.on.Store(true)
		s.done = make(chan struct{})
		go s.run(s.done)
	}
	signal(s.wake)
}

// detach drops cfg; the newest configuration still attached takes over.
// When none is left, it waits for the goroutine to flush the queue and
// end.
func (s *eventSink) detach(cfg *EventsHook) {
	s.mu.Lock()
	i := slices.Index(s.configs, cfg)
	if i < 0 {
		s.mu.Unlock()
		return
	}
	s.configs = slices.Delete(s.configs, i, i+1)
	if n := len(s.configs); n > 0 {
		s.last = s.configs[n-1]
		s.mu.Unlock()
		return
	}
	s.attached.Store(false)
	s.flushUntil = time.Now().Add(eventsFlushFor)
	done := s.done
	signal(s.wake)
	signal(s.flush)
	s.mu.Unlock()
	<-done
}

// signal wakes the goroutine that waits on c.
func signal(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// add queues e, or drops it when the queue is full.
func (s *eventSink) add(e hookEvent) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.on.Load() {
		return // the hook was removed meanwhile
	}
	if len(s.queue) >= s.last.Queue {
		s.dropped.Add(1)
		s.unseen++
		if now := time.Now(); now.Sub(s.logged) >= eventsLogEvery {
			s.logger.Warn("events for the app dropped: the queue is full (the app is down or slow)",
				zap.Int("dropped", s.unseen), zap.Int("queue", s.last.Queue))
			s.unseen, s.logged = 0, now
		}
		return
	}
	s.queue = append(s.queue, e)
	if len(s.queue) == 1 || len(s.queue) >= s.last.Batch {
		signal(s.wake)
	}
}

// settings are what a batch is sent with now: the newest
// configuration's, and when none is attached the time to give up at.
func (s *eventSink) settings() (*EventsHook, *zap.Logger, time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.last, s.logger, s.flushUntil
}

// run sends batches: a full one at once, else once its first event has
// waited the interval; and once no configuration is attached, what is
// queued at once, until the queue is empty or the flush's time is up.
func (s *eventSink) run(done chan struct{}) {
	defer close(done)
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		s.mu.Lock()
		cfg, until, n := s.last, s.flushUntil, len(s.queue)
		// a flush waits for the ends of the connections the app was told
		// of too: those of a stopping server are closing
		if !until.IsZero() && (n == 0 && s.open.Load() == 0 || time.Now().After(until)) {
			if n > 0 {
				s.dropped.Add(uint64(n))
				s.logger.Warn("events for the app dropped: the hub's events hook was removed before the app took them",
					zap.Int("dropped", n))
			}
			s.queue = nil
			s.on.Store(false)
			s.mu.Unlock()
			return
		}
		var wait time.Duration
		switch {
		case n == 0 && until.IsZero():
			wait = time.Hour // until an event comes
		case n == 0:
			wait = time.Until(until) // or the last connection ends
		case until.IsZero() && n < cfg.Batch:
			// an event's time is when it was queued, give or take
			wait = time.Until(s.queue[0].Time.Add(time.Duration(cfg.Interval)))
		}
		if wait > 0 {
			s.mu.Unlock()
			timer.Reset(wait)
			select {
			case <-s.wake:
			case <-timer.C:
			}
			timer.Stop()
			continue
		}
		batch := slices.Clone(s.queue[:min(n, cfg.Batch)])
		s.queue = slices.Delete(s.queue, 0, len(batch))
		s.mu.Unlock()
		s.send(batch, timer)
	}
}

// send posts batch until the app takes it (answers 2xx), with the
// newest configuration's URLs and secret, backing off between tries.
// Once no configuration is attached, it gives up at the flush's time,
// and counts the batch dropped.
func (s *eventSink) send(batch []hookEvent, timer *time.Timer) {
	body, err := json.Marshal(struct {
		Events []hookEvent `json:"events"`
	}{batch})
	if err != nil { // every field of an event encodes
		panic(err)
	}
	delay := eventsRetryFirst
	var warned time.Time
	for try := 1; ; try++ {
		cfg, logger, until := s.settings()
		ctx, cancel := context.Background(), context.CancelFunc(func() {})
		if !until.IsZero() {
			ctx, cancel = context.WithDeadline(ctx, until)
		}
		a, err := cfg.post(ctx, body, http.Header{"Push-Signature": {cfg.sign(body)}})
		cancel()
		if err == nil && a.Status >= 200 && a.Status < 300 {
			if try > 1 {
				logger.Info("events delivered to the app again", zap.Int("tries", try))
			}
			return
		}
		if err == nil {
			err = fmt.Errorf("the app answered %d: %s", a.Status, hookReason(a))
		}
		if !until.IsZero() && time.Now().After(until) {
			s.dropped.Add(uint64(len(batch)))
			logger.Warn("events for the app dropped: the hub's events hook was removed before the app took them",
				zap.Int("dropped", len(batch)), zap.Error(err))
			return
		}
		if time.Since(warned) >= eventsLogEvery {
			logger.Warn("events not delivered to the app; retrying", zap.Int("events", len(batch)), zap.Int("try", try), zap.Error(err))
			warned = time.Now()
		}
		// equal jitter: from half the delay to all of it
		wait := delay/2 + rand.N(delay/2+1)
		if !until.IsZero() {
			wait = min(wait, time.Until(until))
		}
		timer.Reset(wait)
		select {
		case <-timer.C:
		case <-s.flush:
		}
		timer.Stop()
		delay = min(2*delay, eventsRetryMax)
	}
}

// unmarshalCaddyfile reads the hub option
//
//	events <url...> {
//		secret   <key>
//		interval <duration>
//		batch    <count>
//		queue    <count>
//		timeout  <duration>
//	}
func (e *EventsHook) unmarshalCaddyfile(d *caddyfile.Dispenser) error {
	seen := make(map[string]bool)
	return unmarshalHook(d, &e.Hook, func(opt string) (bool, error) {
		if seen[opt] {
			return true, d.Errf("events option '%s' given more than once", opt)
		}
		seen[opt] = true
		switch opt {
		case "secret":
			return true, parseString(d, &e.Secret)
		case "interval":
			return true, parseDuration(d, &e.Interval)
		case "batch", "queue":
			n := &e.Batch
			if opt == "queue" {
				n = &e.Queue
			}
			if err := parseInt(d, n); err != nil {
				return true, err
			}
			if *n == 0 {
				return true, d.Errf("invalid %s '0': want 1 or more", opt)
			}
			return true, nil
		}
		return false, nil
	})
}
