package push

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/gorilla/websocket"
)

// MaxTopicLength is the longest topic, in bytes.
const MaxTopicLength = 256

// maxIDLength bounds what we parse from a client's Last-Event-ID.
const maxIDLength = 128

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
	if m.IdempotencyKey != "" {
		if err := ValidateIdempotencyKey(m.IdempotencyKey); err != nil {
			return invalidMessage{err}
		}
	}
	return nil
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
	// ID is opaque to clients and strictly increasing per hub.
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

// SSE returns the event in the text/event-stream format, encoded once and
// shared by every subscriber.
func (e *Event) SSE() []byte {
	e.sseOnce.Do(func() {
		// sized at once, as an event in history keeps it: "data: " and
		// "\n" per line, and at most 41 bytes of field names, the retry's
		// digits and line ends besides
		lines := 1 + strings.Count(e.Data, "\n") + strings.Count(e.Data, "\r")
		b := make([]byte, 0, len(e.ID)+len(e.Type)+len(e.Data)+7*lines+41)
		e.sse = appendSSE(b, e.ID, e.Type, e.Data, e.Retry)
	})
	return e.sse
}

// appendSSE writes one event. Data is split on every line terminator the
// SSE parser knows (CRLF, LF, CR) so no payload can start a field or an
// event of its own; the type and id are validated never to hold one.
// appendPause appends the pause block: come back at until. It has no id,
// so the client's last id stays that of its last event; retry makes a
// plain EventSource, which has no pause listener, wait as long.
func appendPause(b []byte, now, until time.Time) []byte {
	ms := max(until.Sub(now).Milliseconds(), 1)
	return appendSSE(b, "", "pause", strconv.FormatInt(until.UnixMilli(), 10), ms)
}

func appendSSE(b []byte, id, typ, data string, retry int64) []byte {
	if id != "" {
		b = append(b, "id: "...)
		b = append(b, id...)
		b = append(b, '\n')
	}
	if typ != "" {
		b = append(b, "event: "...)
		b = append(b, typ...)
		b = append(b, '\n')
	}
	if retry > 0 {
		b = append(b, "retry: "...)
		b = strconv.AppendInt(b, retry, 10)
		b = append(b, '\n')
	}
	for {
		b = append(b, "data: "...)
		i := strings.IndexAny(data, "\r\n")
		if i < 0 {
			b = append(b, data...)
			b = append(b, '\n')
			break
		}
		b = append(b, data[:i]...)
		b = append(b, '\n')
		if data[i] == '\r' && i+1 < len(data) && data[i+1] == '\n' {
			i++
		}
		data = data[i+1:]
	}
	return append(b, '\n')
}

// wsEncoding is an event as one WebSocket message: as a whole server
// frame (connections the engine writes), and prepared for gorilla
// (connections on goroutines) when one of those asks: preparing builds a
// gorilla connection's worth of buffers, which costs an event more than
// its whole fan-out to a few dozen engine connections.
type wsEncoding struct {
	wsKey
	frame  []byte
	data   []byte // the frame's payload (gorilla copies it)
	pmOnce sync.Once
	pm     *websocket.PreparedMessage
}

// wsKey names an encoding: text, or json with the topic it names.
type wsKey struct {
	json  bool
	topic string
}

// wsMessage returns the event as a WebSocket message for gorilla.
func (e *Event) wsMessage(format string, subscribed []string) *websocket.PreparedMessage {
	enc := e.wsEncoded(format, subscribed)
	enc.pmOnce.Do(func() {
		enc.pm, _ = websocket.NewPreparedMessage(websocket.TextMessage, enc.data)
	})
	return enc.pm
}

// wsFrame returns the event as a whole unmasked text frame.
func (e *Event) wsFrame(format string, subscribed []string) []byte {
	return e.wsEncoded(format, subscribed).frame
}

// wsEncoded returns the event's WebSocket encodings, made once per format
// and topic and shared by every connection. In json format the topic is
// the first of the event's topics the subscription follows (subscribed is
// sorted).
func (e *Event) wsEncoded(format string, subscribed []string) *wsEncoding {
	var key wsKey
	if format == FormatJSON {
		// the subscription follows one of them: if no earlier one, the
		// last (so an event to one topic needs no search)
		last := len(e.Topics) - 1
		key = wsKey{json: true, topic: e.Topics[last]}
		for _, t := range e.Topics[:last] {
			if _, ok := slices.BinarySearch(subscribed, t); ok {
				key.topic = t
				break
			}
		}
	}
	if enc := e.findWS(key); enc != nil {
		return enc
	}
	e.wsMu.Lock()
	defer e.wsMu.Unlock()
	if enc := e.findWS(key); enc != nil {
		return enc // made meanwhile
	}
	enc := e.encodeWS(key)
	if e.ws.Load() == nil {
		e.ws.Store(enc)
		return enc
	}
	m := make(map[wsKey]*wsEncoding, 1)
	if old := e.wsMore.Load(); old != nil {
		maps.Copy(m, *old)
	}
	m[key] = enc
	e.wsMore.Store(&m)
	return enc
}

// findWS returns the encoding named key, if it was made.
func (e *Event) findWS(key wsKey) *wsEncoding {
	if enc := e.ws.Load(); enc != nil && enc.wsKey == key {
		return enc
	}
	if m := e.wsMore.Load(); m != nil {
		return (*m)[key]
	}
	return nil
}

// wsScratch holds json payloads while their frame is sized.
var wsScratch = sync.Pool{New: func() any { b := make([]byte, 0, 1024); return &b }}

// encodeWS makes one encoding: a text frame of exactly its size, which
// is all an event keeps of it besides the wsEncoding.
func (e *Event) encodeWS(key wsKey) *wsEncoding {
	if !key.json {
		n := len(e.Data)
		frame := appendServerFrameString(make([]byte, 0, frameHeaderLen(n)+n), opText, e.Data)
		return &wsEncoding{wsKey: key, frame: frame, data: frame[len(frame)-n:]}
	}
	bp := wsScratch.Get().(*[]byte)
	payload := appendFrameJSON((*bp)[:0], wsFrame{ID: e.ID, Topic: key.topic, Event: e.Type, Data: e.Data})
	n := len(payload)
	frame := appendServerFrame(make([]byte, 0, frameHeaderLen(n)+n), opText, payload)
	if cap(payload) <= 64<<10 { // a rare large one is left to the collector
		*bp = payload
		wsScratch.Put(bp)
	}
	return &wsEncoding{wsKey: key, frame: frame, data: frame[len(frame)-n:]}
}

// encodeFrame writes a json-format frame, leaving <, > and & as they are.
func encodeFrame(f wsFrame) []byte { return appendFrameJSON(nil, f) }

// appendFrameJSON appends f as encoding/json writes it with SetEscapeHTML
// (false), without the reflection and the buffers: an event's frame is
// made on the fan-out's path. FuzzFrameJSON holds the two to the same
// bytes.
func appendFrameJSON(b []byte, f wsFrame) []byte {
	b = append(b, '{')
	if f.ID != "" { // a presence event has none
		b = append(b, `"id":`...)
		b = appendJSONString(b, f.ID)
		b = append(b, ',')
	}
	if f.Topic != "" {
		b = append(b, `"topic":`...)
		b = appendJSONString(b, f.Topic)
		b = append(b, ',')
	}
	if f.Event != "" {
		b = append(b, `"event":`...)
		b = appendJSONString(b, f.Event)
		b = append(b, ',')
	}
	b = append(b, `"data":`...)
	b = appendJSONString(b, f.Data)
	return append(b, '}')
}

// appendJSONString is encoding/json's string encoder without HTML
// escaping: quotes, backslashes and control characters escaped, invalid
// UTF-8 replaced by U+FFFD, U+2028 and U+2029 escaped for JavaScript.
func appendJSONString(b []byte, s string) []byte {
	const hex = "0123456789abcdef"
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		if c := s[i]; c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\b':
				b = append(b, '\\', 'b')
			case '\f':
				b = append(b, '\\', 'f')
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xF])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hex[r&0xF])
			i += size
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}
