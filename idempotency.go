package push

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"time"
)

// DefaultIdempotencyWindow is how long a hub remembers an idempotency key.
const DefaultIdempotencyWindow = time.Hour

// MaxIdempotencyKeyLength is the longest idempotency key, in bytes.
const MaxIdempotencyKeyLength = 255

// Errors of a publish with an idempotency key.
var (
	// ErrIdempotencyConflict: the key was used, within the window, for
	// a different message (HTTP 422). The publisher has a bug: a key
	// names one message.
	ErrIdempotencyConflict = errors.New("idempotency key was already used for a different message")
	// ErrIdempotencyInFlight: a publish with the same key is still
	// under way on this node (HTTP 409); retry later with the same key.
	ErrIdempotencyInFlight = errors.New("a publish with this idempotency key is still in progress")
	// ErrIdempotencyUnsupported: the hub's broker cannot remember keys
	// (HTTP 501).
	ErrIdempotencyUnsupported = errors.New("the hub's broker does not support idempotency keys")
)

// ValidateIdempotencyKey checks the rule of the Idempotency-Key header:
// 1 to 255 printable ASCII characters (space included, but not at either
// end, where HTTP would drop it).
func ValidateIdempotencyKey(k string) error {
	switch {
	case k == "":
		return errors.New("empty idempotency key")
	case len(k) > MaxIdempotencyKeyLength:
		return fmt.Errorf("idempotency key is longer than %d characters", MaxIdempotencyKeyLength)
	case k[0] == ' ' || k[len(k)-1] == ' ':
		return errors.New("idempotency key starts or ends with a space")
	}
	for i := 0; i < len(k); i++ {
		if k[i] < 0x20 || k[i] > 0x7e {
			return fmt.Errorf("idempotency key has a character that is not printable ASCII at byte %d", i)
		}
	}
	return nil
}

// IdempotencyKey is what a broker remembers of a publish with a key.
type IdempotencyKey struct {
	// ID names the key within the hub: a hash of the publisher's scope
	// and the key, so neither is stored and publishers stay apart.
	ID [16]byte
	// Fingerprint is a hash of the message (topics, type, data, retry);
	// a repeat must have the same.
	Fingerprint [16]byte
	// Window is how long the key is remembered from the first publish.
	Window time.Duration
}

// IdempotentBroker is implemented by brokers that remember idempotency
// keys (both of this module's do).
type IdempotentBroker interface {
	// PublishOnce is Publish, unless key.ID was stored within its
	// window: then it stores nothing and returns the id of the event
	// published with it, or ErrIdempotencyConflict when that event's
	// fingerprint differs. Checking the key, storing the event and
	// remembering the key are one atomic step for every node of the
	// hub, so a retry reaching another node cannot publish twice.
	PublishOnce(ctx context.Context, ev *Event, key IdempotencyKey) (first string, err error)
}

// Published is the outcome of a publish.
type Published struct {
	// ID is the event's id; for a replay, the id of the event published
	// first with the same key.
	ID string
	// Replayed is set when an earlier publish with the same idempotency
	// key and message stored the event: nothing was published now.
	Replayed bool
}

// idempotencyID hashes a publisher's scope and key into the key's name.
func idempotencyID(publisher, key string) [16]byte {
	h := sha256.New()
	writeField(h, "caddy-push idempotency key")
	writeField(h, publisher)
	writeField(h, key)
	var id [16]byte
	copy(id[:], h.Sum(nil))
	return id
}

// fingerprint hashes what makes a message: repeats are compared on the
// message as parsed, not on the bytes of the request, so a form and a
// JSON body, or an HTTP and a WebSocket publish, of the same message
// match, and so do two JSON spellings of the same data.
func fingerprint(m Message) [16]byte {
	h := sha256.New()
	var n [8]byte
	binary.BigEndian.PutUint64(n[:], uint64(len(m.Topics)))
	h.Write(n[:])
	for _, t := range m.Topics {
		writeField(h, t)
	}
	writeField(h, m.Type)
	writeField(h, m.Data)
	binary.BigEndian.PutUint64(n[:], uint64(m.Retry))
	h.Write(n[:])
	var fp [16]byte
	copy(fp[:], h.Sum(nil))
	return fp
}

// writeField writes s with its length, so no two field lists hash alike.
func writeField(h interface{ Write([]byte) (int, error) }, s string) {
	var n [8]byte
	binary.BigEndian.PutUint64(n[:], uint64(len(s)))
	h.Write(n[:])
	h.Write([]byte(s))
}

// inFlight is the keys whose publish is under way on this node.
type inFlight struct {
	mu   sync.Mutex
	keys map[[16]byte]struct{}
}

// add marks id as under way; false if it already is.
func (f *inFlight) add(id [16]byte) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, busy := f.keys[id]; busy {
		return false
	}
	if f.keys == nil {
		f.keys = make(map[[16]byte]struct{})
	}
	f.keys[id] = struct{}{}
	return true
}

func (f *inFlight) remove(id [16]byte) {
	f.mu.Lock()
	delete(f.keys, id)
	f.mu.Unlock()
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
