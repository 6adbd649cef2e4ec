package push

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode"
	"unicode/utf8"
)

// MaxTopicLength is the longest topic, in bytes.
const MaxTopicLength = 256

// maxIDLength bounds what we parse from a client's Last-Event-ID.
const maxIDLength = 128

// MaxCustomIDLength is the longest id a publisher may give an event
// (Message.CustomID), in bytes.
const MaxCustomIDLength = 256

// EarliestID, as a client's last event id, asks for every event in the
// history of its topics, as Mercure's "earliest" does: a client that has
// seen none of them yet, but wants what the hub still has.
const EarliestID = "earliest"

// MaxRetry is the longest reconnection delay a publisher may ask of
// clients, in milliseconds: a day.
const MaxRetry = 86_400_000

// DefaultMaxPublishTopics is how many topics one publish may name, unless
// the hub's max_publish_topics says otherwise.
const DefaultMaxPublishTopics = 32

// ErrInvalidMessage is wrapped by every refusal of a message that may not
// be published as it is (HTTP 400, a WebSocket error frame): the error's
// text is the reason.
var ErrInvalidMessage = errors.New("invalid message")

// invalidMessage is a reason a message may not be published.
type invalidMessage struct{ reason error }

func (e invalidMessage) Error() string        { return e.reason.Error() }
func (e invalidMessage) Unwrap() error        { return e.reason }
func (e invalidMessage) Is(target error) bool { return target == ErrInvalidMessage }

func invalidf(format string, args ...any) error {
	return invalidMessage{fmt.Errorf(format, args...)}
}

// ReservedType reports whether an event type is the server's own, which
// no publisher may send: pause (see Hub.Pause), mercure, and every push.*
// (push.reset, push.presence, push.join, push.leave, and those to come).
// A forged one would reach clients as if the server had sent it.
func ReservedType(typ string) bool {
	return typ == "pause" || typ == "mercure" || strings.HasPrefix(typ, "push.")
}

// Message is what a publisher sends: the part of an event that is not
// assigned by the hub.
type Message struct {
	// Topics the event goes to; at least one.
	Topics []string `json:"topics"`
	// Type is the SSE event type (`event:` field); empty means "message".
	Type string `json:"event,omitempty"`
	// Data is the UTF-8 payload; it may hold newlines.
	Data string `json:"data"`
	// Retry, in milliseconds, is sent as the SSE `retry:` field when > 0.
	Retry int64 `json:"retry,omitempty"`
	// Private, Mercure's rule, limits the event to subscribers admitted
	// with a verified JWT whose subscribe claims allow at least one of
	// its topics; anonymous subscribers never get it, live or replayed.
	Private bool `json:"private,omitempty"`
	// CustomID is the event's id as its publisher chose it (Mercure's
	// id): clients see it instead of the hub's id, in SSE's id field
	// and WebSocket's "id", and may resume from it; the hub still orders
	// events by its own id. Empty leaves the hub's id. ValidateCustomID
	// has its rules.
	CustomID string `json:"custom_id,omitempty"`
	// IdempotencyKey, when set, makes the publish happen once: a repeat
	// with the same key and message, from the same publisher, within the
	// hub's idempotency_window, stores nothing and returns the first
	// event's id (see Hub.PublishAs). 1 to 255 printable ASCII
	// characters. It is not part of the event.
	IdempotencyKey string `json:"-"`
}

// Validate reports the first problem that would keep m from being published
// or encoded faithfully; the error wraps ErrInvalidMessage. A hub also
// bounds the number of topics (Hub.Validate).
func (m Message) Validate() error {
	if len(m.Topics) == 0 {
		return invalidf("no topic")
	}
	for _, t := range m.Topics {
		if err := ValidateTopic(t); err != nil {
			return invalidMessage{err}
		}
	}
	if len(m.Type) > MaxTopicLength {
		return invalidf("event type is longer than %d bytes", MaxTopicLength)
	}
	if !utf8.ValidString(m.Type) || strings.IndexFunc(m.Type, unicode.IsControl) >= 0 {
		return invalidf("event type %q has invalid UTF-8 or control characters", m.Type)
	}
	if ReservedType(m.Type) {
		return invalidf("event type %q is reserved for the server (pause, mercure and push.* are its own)", m.Type)
	}
	if !utf8.ValidString(m.Data) {
		return invalidf("data is not valid UTF-8")
	}
	if m.Retry < 0 {
		return invalidf("retry must not be negative")
	}
	if m.Retry > MaxRetry {
		return invalidf("retry %d is longer than a day (%d ms)", m.Retry, MaxRetry)
	}
	if m.CustomID != "" {
		if err := ValidateCustomID(m.CustomID); err != nil {
			return invalidMessage{err}
		}
	}
	if m.IdempotencyKey != "" {
		if err := ValidateIdempotencyKey(m.IdempotencyKey); err != nil {
			return invalidMessage{err}
		}
	}
	return nil
}

// ValidateCustomID checks an id a publisher gives its event against
// Mercure's rules: at most 256 bytes of UTF-8, with no control characters
// (C0, DEL, C1) or format characters (Unicode's Cf, such as U+200B, which
// hide in a copied id), not starting with # and not "earliest"
// (EarliestID); and against the hub's own: not of the form of the hub's
// ids (<epoch>-<n>), so that an id a client resumes from is never taken
// for one of the other kind.
func ValidateCustomID(id string) error {
	switch {
	case id == "":
		return errors.New("empty id")
	case len(id) > MaxCustomIDLength:
		return fmt.Errorf("id %.40q... is longer than %d bytes", id, MaxCustomIDLength)
	case !utf8.ValidString(id):
		return fmt.Errorf("id %q is not valid UTF-8", id)
	case strings.IndexFunc(id, hiddenRune) >= 0:
		return fmt.Errorf("id %q has control or format characters", id)
	case id[0] == '#':
		return fmt.Errorf("id %q starts with #, which Mercure keeps for the hub's own ids", id)
	case id == EarliestID:
		return fmt.Errorf("id %q is reserved: a client resuming from it asks for the whole history", id)
	}
	if _, _, ok := ParseID(id); ok {
		return fmt.Errorf("id %q has the form of the hub's own ids (<epoch>-<n>); choose another, such as a URN or UUID", id)
	}
	return nil
}

// hiddenRune reports a control character (C0, DEL, C1) or a format
// character (Cf): either would break an id's line or hide in it.
func hiddenRune(r rune) bool {
	return unicode.IsControl(r) || unicode.Is(unicode.Cf, r)
}

// ValidateTopic checks SPEC's rule: a non-empty UTF-8 string of at most
// 256 bytes with no control characters.
func ValidateTopic(t string) error {
	switch {
	case t == "":
		return fmt.Errorf("empty topic")
	case len(t) > MaxTopicLength:
		return fmt.Errorf("topic %.40q... is longer than %d bytes", t, MaxTopicLength)
	case !utf8.ValidString(t):
		return fmt.Errorf("topic %q is not valid UTF-8", t)
	case strings.IndexFunc(t, unicode.IsControl) >= 0:
		return fmt.Errorf("topic %q has control characters", t)
	}
	return nil
}

// Event is a published message with the identity its hub gave it. Events
// are shared, read-only, by every subscriber that receives them.
type Event struct {
	Message
	// ID is the hub's id: opaque to clients and strictly increasing per
	// hub. Clients see CustomID instead when it is set (PublicID).
	ID string `json:"id"`
	// Seq orders the events of one hub epoch; it is the number inside ID.
	Seq uint64 `json:"-"`
	// Time is when the broker stored the event; history_ttl counts from it.
	Time time.Time `json:"-"`

	// live marks an event the hub delivers without storing it (push.join,
	// push.leave): it has no ID and no Seq, is never replayed, and so
	// never moves a client's resume point
	live bool

	sseOnce sync.Once
	sse     []byte
	// the same with the hub's id as a fragment, "#<id>" (push_mercure),
	// made only for events that have a hub id to show
	hashOnce sync.Once
	hashSSE  []byte

	// WebSocket messages by format and topic, read without a lock by
	// every connection: the first one made (most events need no other),
	// then the rest, replaced whole (under wsMu) when one is added. An
	// event in history keeps them, so they are few objects: the
	// collector marks every one of them at every cycle.
	wsMu   sync.Mutex
	ws     atomic.Pointer[wsEncoding]
	wsMore atomic.Pointer[map[wsKey]*wsEncoding]

	// kept by the in-memory broker, under its lock: how many topic
	// histories hold the event, and its estimated size
	refs int
	size int64
}

// PublicID is the id clients see: the publisher's own (CustomID), or
// else the hub's (ID).
func (e *Event) PublicID() string {
	if e.CustomID != "" {
		return e.CustomID
	}
	return e.ID
}

// FormatID builds an event id from a hub epoch and a sequence number.
func FormatID(epoch string, seq uint64) string {
	return epoch + "-" + strconv.FormatUint(seq, 10)
}

// ParseID splits an id made by FormatID. ok is false for anything else,
// including ids that are too long to be ours.
func ParseID(id string) (epoch string, seq uint64, ok bool) {
	if len(id) > maxIDLength {
		return "", 0, false
	}
	i := strings.LastIndexByte(id, '-')
	if i <= 0 {
		return "", 0, false
	}
	epoch = id[:i]
	for _, c := range []byte(epoch) {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'z') {
			return "", 0, false
		}
	}
	digits := id[i+1:]
	if len(digits) > 1 && digits[0] == '0' {
		return "", 0, false // not an id we made
	}
	seq, err := strconv.ParseUint(digits, 10, 64)
	if err != nil {
		return "", 0, false
	}
	return epoch, seq, true
}
