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
	// Fingerprint is a hash of the message (topics, type, data, retry,
	// private, custom id); a repeat must have the same.
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
	// ID is the event's id as clients see it (the publisher's own, when
	// it gave one); for a replay, the id of the event published first
	// with the same key.
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
	if m.Private {
		// a public message hashes as it did before private events, so a
		// key stored by an older node still matches
		h.Write([]byte{1})
	}
	if m.CustomID != "" {
		// likewise for a message without an id; the mark keeps it apart
		// from private's
		h.Write([]byte{2})
		writeField(h, m.CustomID)
	}
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
