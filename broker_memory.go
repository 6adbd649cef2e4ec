package push

import (
	"cmp"
	"context"
	"hash/maphash"
	"slices"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
)

func init() {
	caddy.RegisterModule(MemoryBroker{})
}

// MemoryBroker keeps a hub's events in this process: ids, history and
// fan-out live and die with the process (a restart gives the hub a new
// epoch, and clients resuming with an older id get `push.reset`).
type MemoryBroker struct{}

// CaddyModule returns the Caddy module information.
func (MemoryBroker) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "push.brokers.memory",
		New: func() caddy.Module { return new(MemoryBroker) },
	}
}

// OpenBroker starts an in-memory store for one hub.
func (MemoryBroker) OpenBroker(o BrokerOptions) (Broker, error) {
	m := &memoryStore{
		epoch:   strconv.FormatInt(time.Now().UnixNano(), 36),
		deliver: o.Deliver,
		limits:  o.History,
		topics:  make(map[string]*topicHistory),
		seed:    maphash.MakeSeed(),
		done:    make(chan struct{}),
	}
	go m.sweep(time.Minute)
	return m, nil
}

type memoryStore struct {
	epoch   string
	deliver func(*Event)
	done    chan struct{}

	mu     sync.Mutex
	seq    uint64
	limits HistoryLimits
	// topics has the topics that hold events: one whose history empties
	// is forgotten at once, so a hub that sees many short-lived topics
	// keeps no entry per topic, and the entries count in bytes.
	topics map[string]*topicHistory
	// forgotten has, for the topics we no longer know, the newest event
	// dropped from any of them, in buckets by a hash of the topic: a
	// client resuming from before it may have missed events of its topic.
	// Sharing a bucket can only cost a needless reset, not a missed one.
	forgotten [forgottenBuckets]uint64
	seed      maphash.Seed
	// forgottenMax is the newest of forgotten: a pattern subscription,
	// which may follow any topic, resuming from before it may have
	// missed events
	forgottenMax uint64
	// log has the retained events in id order, each once however many
	// topics hold it, so the memory bound evicts the oldest first; bytes
	// is their size and their topics' and live their number (log also has
	// released events, which compact drops).
	log   []*Event
	bytes int64
	live  int
	// keys are the idempotency keys remembered; their bytes count in
	// bytes, and they may take half of MaxBytes at most
	keys keyTable
	// ids has the seqs of the retained events that have each publisher's
	// id (CustomID), oldest first: one that leaves history leaves it
	// too. Their entries count in the events' size.
	ids map[string][]uint64
}

// forgottenBuckets is how many buckets of forgotten topics a hub keeps
// (8 bytes each).
const forgottenBuckets = 4096

// topicSize estimates the memory of a topic's entry in the history: its
// name, its map slot, its topicHistory and its slice of events.
func topicSize(t string) int64 { return 96 + int64(len(t)) }

// topicHistory is one topic's retained events, oldest first.
type topicHistory struct {
	events  []*Event
	dropped uint64 // Seq of the newest event no longer retained
}

func (m *memoryStore) Publish(_ context.Context, ev *Event) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.store(ev)
	m.evict()
	// under the lock, so subscribers see events in id order
	m.deliver(ev)
	return nil
}

// PublishOnce checks the key, stores the event and remembers the key
// under one lock: a second publish with the key waits for the first and
// finds it.
func (m *memoryStore) PublishOnce(_ context.Context, ev *Event, k IdempotencyKey) (string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := time.Now()
	if e, ok := m.keys.lookup(k.ID, now); ok {
		if e.fingerprint != k.Fingerprint {
			return "", ErrIdempotencyConflict
		}
		return FormatID(m.epoch, e.seq), nil
	}
	m.store(ev)
	m.keys.remember(k, ev.Seq, now)
	m.bytes += keyCost
	m.trimKeys(now)
	m.evict()
	m.deliver(ev)
	return "", nil
}

// store gives ev its id and adds it to its topics' histories, trimmed.
func (m *memoryStore) store(ev *Event) {
	m.seq++
	ev.Seq = m.seq
	ev.ID = FormatID(m.epoch, m.seq)
	ev.Time = time.Now()
	for _, t := range ev.Topics {
		th := m.topics[t]
		if th == nil {
			// a topic forgotten before may have dropped events since a
			// client's id
			th = &topicHistory{dropped: *m.bucket(t)}
			m.topics[t] = th
			m.bytes += topicSize(t)
		}
		th.events = append(th.events, ev)
	}
	if ev.CustomID != "" {
		if m.ids == nil {
			m.ids = make(map[string][]uint64)
		}
		m.ids[ev.CustomID] = append(m.ids[ev.CustomID], ev.Seq)
	}
	ev.refs = len(ev.Topics)
	ev.size = eventSize(ev)
	m.bytes += ev.size
	m.live++
	m.log = append(m.log, ev)
	for _, t := range ev.Topics {
		if th := m.topics[t]; th != nil { // nil if listed twice and forgotten
			m.trim(t, th, ev.Time)
		}
	}
}

// trimKeys drops the idempotency keys that expired or no longer fit.
func (m *memoryStore) trimKeys(now time.Time) {
	m.bytes -= m.keys.bytes()
	m.keys.trim(now, m.limits.MaxBytes/2)
	m.bytes += m.keys.bytes()
}

// trim drops what the limits no longer allow from topic t, oldest first,
// and forgets t if that empties it.
func (m *memoryStore) trim(t string, th *topicHistory, now time.Time) {
	n := 0
	for n < len(th.events) && (len(th.events)-n > m.limits.Events ||
		m.limits.TTL > 0 && now.Sub(th.events[n].Time) > m.limits.TTL) {
		m.release(th, th.events[n])
		th.events[n] = nil
		n++
	}
	th.events = th.events[n:]
	if len(th.events) == 0 {
		m.forget(t, th)
	}
}

// release notes that th no longer holds ev.
func (m *memoryStore) release(th *topicHistory, ev *Event) {
	th.dropped = ev.Seq
	if ev.refs--; ev.refs == 0 {
		m.bytes -= ev.size
		m.live--
		if ev.CustomID != "" {
			m.unindex(ev)
		}
	}
}

// unindex removes ev, which left history, from the events that have its
// CustomID. It is not always the oldest of them: topics trim apart.
func (m *memoryStore) unindex(ev *Event) {
	seqs := m.ids[ev.CustomID]
	if i := slices.Index(seqs, ev.Seq); i >= 0 {
		seqs = slices.Delete(seqs, i, i+1)
	}
	if len(seqs) == 0 {
		delete(m.ids, ev.CustomID)
	} else {
		m.ids[ev.CustomID] = seqs
	}
}

// ResolveID finds the oldest retained event published with custom.
func (m *memoryStore) ResolveID(_ context.Context, custom string) (string, bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	seqs := m.ids[custom]
	if len(seqs) == 0 {
		return "", false, nil
	}
	return FormatID(m.epoch, seqs[0]), true, nil
}

// forget removes topic t, which holds no events, keeping only, in its
// bucket, the newest event it dropped.
func (m *memoryStore) forget(t string, th *topicHistory) {
	b := m.bucket(t)
	*b = max(*b, th.dropped)
	m.forgottenMax = max(m.forgottenMax, th.dropped)
	delete(m.topics, t)
	m.bytes -= topicSize(t)
}

func (m *memoryStore) bucket(topic string) *uint64 {
	return &m.forgotten[maphash.String(m.seed, topic)%forgottenBuckets]
}

// evict drops the oldest events of the hub until the history fits in
// MaxBytes. The oldest retained event is at the front of every topic
// that still holds it.
func (m *memoryStore) evict() {
	for m.limits.MaxBytes > 0 && m.bytes > m.limits.MaxBytes && len(m.log) > 0 {
		ev := m.log[0]
		m.log[0] = nil
		m.log = m.log[1:]
		for _, t := range ev.Topics {
			if th := m.topics[t]; th != nil && len(th.events) > 0 && th.events[0] == ev {
				m.release(th, ev)
				th.events[0] = nil
				th.events = th.events[1:]
				if len(th.events) == 0 {
					m.forget(t, th)
				}
			}
		}
	}
	m.compact()
}

// compact drops released events from the log: at its front at once, and
// everywhere once they are half of it, so the log neither pins their data
// nor grows without bound.
func (m *memoryStore) compact() {
	for len(m.log) > 0 && m.log[0].refs == 0 {
		m.log[0] = nil
		m.log = m.log[1:]
	}
	if len(m.log) > 64 && len(m.log) > 2*m.live {
		// into a new array, so the old one's spare capacity goes too
		kept := make([]*Event, 0, m.live)
		for _, ev := range m.log {
			if ev.refs > 0 {
				kept = append(kept, ev)
			}
		}
		m.log = kept
	}
}

// eventSize estimates the memory an event holds, for history_max_bytes,
// once subscribers have had it (encodings are made on first delivery and
// kept with the event): the data, its SSE encoding (about as large), and a
// WebSocket message both prepared for gorilla (1-2 times the data, as its
// buffer grows by doubling) and as a frame for the engine; plus about
// 1 KiB for the event, its id and the encodings' maps and structs. A
// WebSocket json-format subscriber of another of the event's topics adds
// an encoding this does not count. A publisher's id is in the event and
// its encodings, and has an entry in the index of ids (idEntrySize).
func eventSize(ev *Event) int64 {
	d := len(ev.Data)
	n := 1024 + 5*d + d/4 + 3*len(ev.ID) + 2*len(ev.Type)
	for _, t := range ev.Topics {
		n += 32 + len(t)
	}
	if ev.CustomID != "" {
		n += idEntrySize + 3*len(ev.CustomID)
	}
	return int64(n)
}

// idEntrySize estimates an event's share of the index of publishers' ids:
// a map slot (the string and slice headers, and the map's spare room) and
// a seq in the slice, with its spare room. It errs high, as most ids name
// one event.
const idEntrySize = 96

func (m *memoryStore) Replay(_ context.Context, topics []string, lastEventID string) (Backlog, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	b := Backlog{Head: FormatID(m.epoch, m.seq), HeadSeq: m.seq}
	if lastEventID == "" {
		return b, nil
	}
	// a client that asks for the earliest asks for what is left: what
	// history dropped is no gap in it
	earliest := lastEventID == EarliestID
	var after uint64
	if !earliest {
		var reset string
		if after, reset = m.resumePoint(lastEventID); reset != "" {
			b.Reset = reset
			return b, nil
		}
	}
	now := time.Now()
	for _, t := range topics {
		th := m.topics[t]
		if th != nil {
			m.trim(t, th, now)
		}
		if th == nil || len(th.events) == 0 {
			if !earliest && *m.bucket(t) > after {
				b.Reset = "events after this id are no longer in history"
				b.Events = nil
				return b, nil
			}
			continue
		}
		if !earliest && th.dropped > after {
			b.Reset = "events after this id are no longer in history"
			b.Events = nil
			return b, nil
		}
		i := sort.Search(len(th.events), func(i int) bool { return th.events[i].Seq > after })
		b.Events = append(b.Events, th.events[i:]...)
	}
	if len(topics) > 1 {
		// an event of several subscribed topics was collected once per topic
		slices.SortFunc(b.Events, func(x, y *Event) int { return cmp.Compare(x.Seq, y.Seq) })
		b.Events = slices.CompactFunc(b.Events, func(x, y *Event) bool { return x == y })
	}
	return b, nil
}

// resumePoint reads a client's last event id: the seq to replay after,
// or why the id cannot be resumed from.
func (m *memoryStore) resumePoint(lastEventID string) (after uint64, reset string) {
	epoch, after, ok := ParseID(lastEventID)
	switch {
	case !ok || after > m.seq:
		return 0, "unknown event id"
	case epoch != m.epoch:
		return 0, "event id is from an earlier run of the hub"
	}
	return after, ""
}

// ReplayMatching reads every topic the hub holds events of, under the
// lock: each costs history, so a hub holds few enough for a resuming
// pattern subscription to go through them. It cannot tell whether a
// forgotten topic matched, so an id from before the newest event dropped
// with any forgotten topic is reset.
func (m *memoryStore) ReplayMatching(_ context.Context, match func(topic string) bool, lastEventID string) (Backlog, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	b := Backlog{Head: FormatID(m.epoch, m.seq), HeadSeq: m.seq}
	if lastEventID == "" {
		return b, nil
	}
	earliest := lastEventID == EarliestID
	var after uint64
	if !earliest {
		if after, b.Reset = m.resumePoint(lastEventID); b.Reset != "" {
			return b, nil
		}
	}
	now := time.Now()
	for t, th := range m.topics {
		if !match(t) {
			continue
		}
		m.trim(t, th, now) // may forget t, as deleting while ranging allows
		if !earliest && th.dropped > after {
			b.Reset = "events after this id are no longer in history"
			b.Events = nil
			return b, nil
		}
		i := sort.Search(len(th.events), func(i int) bool { return th.events[i].Seq > after })
		b.Events = append(b.Events, th.events[i:]...)
	}
	if !earliest && m.forgottenMax > after {
		b.Reset = "events after this id are no longer in history"
		b.Events = nil
		return b, nil
	}
	// an event of several matching topics was collected once per topic
	slices.SortFunc(b.Events, func(x, y *Event) int { return cmp.Compare(x.Seq, y.Seq) })
	b.Events = slices.CompactFunc(b.Events, func(x, y *Event) bool { return x == y })
	return b, nil
}

func (m *memoryStore) SetHistory(l HistoryLimits) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.limits = l
	now := time.Now()
	for t, th := range m.topics {
		m.trim(t, th, now)
	}
	m.trimKeys(now)
	m.evict()
}

// sweep drops the events whose history_ttl has passed from topics nobody
// publishes to or resumes from any more, forgetting the topics they empty,
// and the idempotency keys whose window has passed.
func (m *memoryStore) sweep(every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-m.done:
			return
		case now := <-t.C:
			m.mu.Lock()
			for t, th := range m.topics {
				m.trim(t, th, now)
			}
			m.trimKeys(now)
			m.compact()
			m.mu.Unlock()
		}
	}
}

func (m *memoryStore) History(context.Context) (HistoryStats, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return HistoryStats{Events: int64(m.live), Bytes: m.bytes, Head: FormatID(m.epoch, m.seq)}, nil
}

func (m *memoryStore) TopicHistory(_ context.Context, topics []string) ([]TopicHistory, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]TopicHistory, len(topics))
	for i, t := range topics {
		if th := m.topics[t]; th != nil && len(th.events) > 0 {
			out[i] = TopicHistory{Events: len(th.events), LastID: th.events[len(th.events)-1].ID}
		}
	}
	return out, nil
}

func (m *memoryStore) Close() error {
	close(m.done)
	return nil
}

// keyCost estimates the memory of one remembered key in the memory
// broker, for history_max_bytes: its map slot (id, entry, and the map's
// spare room) and its place in the age queue (with the slice's spare
// room). It errs high: BenchmarkIdempotencyKeyTable measures at most 108
// bytes a key over 1,000,000 keys through a table bounded at 32 MiB.
const keyCost = 160

// maxKeys bounds the memory broker's key table whatever the byte budget.
const maxKeys = 1 << 20

// keyEntry is a remembered key: the event it published and until when.
type keyEntry struct {
	fingerprint [16]byte
	seq         uint64
	expires     int64 // UnixNano
}

// keyRef is a key's place in the age queue; seq tells it from a later
// use of the same key after it expired.
type keyRef struct {
	id  [16]byte
	seq uint64
}

// keyTable is the memory broker's idempotency keys, oldest first out:
// by age (the window), by count (maxKeys) and by bytes (half of
// history_max_bytes, so keys never crowd out all events).
type keyTable struct {
	entries map[[16]byte]keyEntry
	queue   []keyRef // by age; may hold refs whose entry was replaced
	// deleted counts the entries deleted since entries was made: a Go
	// map keeps the room of what it deleted, and under the steady churn
	// of a full table takes up to 170 bytes a key instead of 70; made
	// afresh once a quarter of its size went, it stays near 108 (the
	// copy costs about a microsecond per key added)
	deleted int
}

// lookup returns the live entry of id.
func (t *keyTable) lookup(id [16]byte, now time.Time) (keyEntry, bool) {
	e, ok := t.entries[id]
	if !ok || now.UnixNano() >= e.expires {
		return keyEntry{}, false
	}
	return e, true
}

// remember stores id for the event of seq.
func (t *keyTable) remember(k IdempotencyKey, seq uint64, now time.Time) {
	if t.entries == nil {
		t.entries = make(map[[16]byte]keyEntry)
	}
	t.entries[k.ID] = keyEntry{fingerprint: k.Fingerprint, seq: seq, expires: now.Add(k.Window).UnixNano()}
	t.queue = append(t.queue, keyRef{id: k.ID, seq: seq})
}

// bytes is the table's estimated memory.
func (t *keyTable) bytes() int64 { return int64(len(t.queue)) * keyCost }

// trim drops the oldest keys while they have expired or the table is
// over maxKeys or maxBytes (0: no byte bound).
func (t *keyTable) trim(now time.Time, maxBytes int64) {
	n := 0
	for n < len(t.queue) {
		ref := t.queue[n]
		e, ok := t.entries[ref.id]
		current := ok && e.seq == ref.seq
		over := len(t.queue)-n > maxKeys || maxBytes > 0 && int64(len(t.queue)-n)*keyCost > maxBytes
		if current && !over && now.UnixNano() < e.expires {
			break
		}
		if current {
			delete(t.entries, ref.id)
			t.deleted++
		}
		n++
	}
	if n == 0 {
		return
	}
	t.queue = t.queue[n:]
	switch {
	case len(t.queue) == 0:
		// let the map's and the queue's arrays go when the table empties
		t.entries, t.queue, t.deleted = nil, nil, 0
		return
	case cap(t.queue) > 64 && cap(t.queue) > 2*len(t.queue):
		t.queue = append(make([]keyRef, 0, len(t.queue)), t.queue...)
	}
	if t.deleted > max(len(t.entries)/4, 1024) {
		// not maps.Clone, which copies the map's room too
		fresh := make(map[[16]byte]keyEntry, len(t.entries))
		for id, e := range t.entries {
			fresh[id] = e
		}
		t.entries, t.deleted = fresh, 0
	}
}

// Interface guards
var (
	_ BrokerFactory    = MemoryBroker{}
	_ Broker           = (*memoryStore)(nil)
	_ Inspector        = (*memoryStore)(nil)
	_ IdempotentBroker = (*memoryStore)(nil)
	_ MatchReplayer    = (*memoryStore)(nil)
	_ IDResolver       = (*memoryStore)(nil)
)
