package push

import (
	"encoding/binary"
	"encoding/json"
	"maps"
	"slices"
	"sync"
	"unicode/utf8"

	"github.com/gorilla/websocket"
)

// WebSocket opcodes (RFC 6455 §5.2).
const (
	opContinuation = 0x0
	opText         = 0x1
	opBinary       = 0x2
	opClose        = 0x8
	opPing         = 0x9
	opPong         = 0xA
)

// appendServerFrame appends one whole, unmasked frame (a server's).
func appendServerFrame(b []byte, op byte, payload []byte) []byte {
	return append(appendFrameHeader(b, op, len(payload)), payload...)
}

// appendServerFrameString is appendServerFrame with the payload in a
// string.
func appendServerFrameString(b []byte, op byte, payload string) []byte {
	return append(appendFrameHeader(b, op, len(payload)), payload...)
}

// appendFrameHeader appends the header of an unmasked, final frame whose
// payload is n bytes; it is frameHeaderLen(n) bytes long.
func appendFrameHeader(b []byte, op byte, n int) []byte {
	b = append(b, 0x80|op)
	switch {
	case n < 126:
		return append(b, byte(n))
	case n <= 0xFFFF:
		b = append(b, 126)
		return binary.BigEndian.AppendUint16(b, uint16(n))
	default:
		b = append(b, 127)
		return binary.BigEndian.AppendUint64(b, uint64(n))
	}
}

func frameHeaderLen(n int) int {
	switch {
	case n < 126:
		return 2
	case n <= 0xFFFF:
		return 4
	default:
		return 10
	}
}

// closeFrame is a close frame with a code and a reason, cut to the 123
// bytes a control frame leaves for it.
func closeFrame(code int, reason string) []byte {
	if len(reason) > 123 {
		reason = reason[:123]
		for !utf8.ValidString(reason) {
			reason = reason[:len(reason)-1]
		}
	}
	return appendServerFrame(nil, opClose, websocket.FormatCloseMessage(code, reason))
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
	payload := appendFrameJSON((*bp)[:0], wsFrame{ID: e.PublicID(), Topic: key.topic, Event: e.Type, Data: e.Data})
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

// presenceFrames are the subscription's push.presence events as WebSocket
// messages: in json format {"topic","event","data"} without an id (a
// client keeping the last id must not lose it), in text format the data.
func (s *Subscription) presenceFrames(format string) [][]byte {
	frames := make([][]byte, len(s.presence))
	for i, p := range s.presence {
		frames[i] = presenceFrame(format, p)
	}
	s.presence = nil
	return frames
}

// presenceFrame is one push.presence event as a WebSocket message.
func presenceFrame(format string, p topicPresence) []byte {
	if format == FormatText {
		return []byte(p.data)
	}
	frame, _ := json.Marshal(struct {
		Topic string `json:"topic"`
		Event string `json:"event"`
		Data  string `json:"data"`
	}{p.topic, "push.presence", p.data})
	return frame
}

// frameReader reads a client's frames (RFC 6455 §5) from its input as it
// arrives, whatever way it is cut. It holds memory only while a frame or a
// fragmented message is incomplete, so an idle connection holds none.
type frameReader struct {
	max     int64  // the largest message
	partial []byte // input not yet a whole frame
	msg     []byte // a fragmented message so far
	msgOp   byte   // its opcode; 0 when none is under way
}

// protocolError is why a client's input ends its connection: the close
// code and reason to send.
type protocolError struct {
	code   int
	reason string
}

// feed reads input and calls emit with each whole message (text or
// binary, defragmented) and control frame, in order; the payload is only
// valid during the call. It stops at the first protocol error, and when
// emit returns false.
func (r *frameReader) feed(input []byte, emit func(op byte, payload []byte) bool) *protocolError {
	data := input
	if len(r.partial) > 0 {
		r.partial = append(r.partial, input...)
		data = r.partial
	}
	used, perr := r.frames(data, emit)
	rest := data[used:]
	switch {
	case perr != nil || len(rest) == 0:
		r.partial = nil
	case len(r.partial) > 0:
		r.partial = append(r.partial[:0], rest...) // copy down; rest is inside partial
	default:
		r.partial = append([]byte(nil), rest...) // input is the caller's
	}
	return perr
}

// frames parses the whole frames at the start of data and returns how
// many bytes they took.
func (r *frameReader) frames(data []byte, emit func(op byte, payload []byte) bool) (int, *protocolError) {
	used := 0
	for {
		buf := data[used:]
		if len(buf) < 2 {
			return used, nil
		}
		fin, rsv, op := buf[0]&0x80 != 0, buf[0]&0x70, buf[0]&0x0F
		masked, n := buf[1]&0x80 != 0, uint64(buf[1]&0x7F)
		hdr := 2
		switch n {
		case 126:
			if len(buf) < 4 {
				return used, nil
			}
			n, hdr = uint64(binary.BigEndian.Uint16(buf[2:])), 4
		case 127:
			if len(buf) < 10 {
				return used, nil
			}
			n, hdr = binary.BigEndian.Uint64(buf[2:]), 10
			if n>>63 != 0 {
				return used, &protocolError{websocket.CloseProtocolError, "frame length has its top bit set"}
			}
		}
		switch {
		case rsv != 0:
			return used, &protocolError{websocket.CloseProtocolError, "reserved bits set without an extension"}
		case !masked:
			return used, &protocolError{websocket.CloseProtocolError, "a client's frames must be masked"}
		case op >= opClose && (op > opPong || !fin || n > 125):
			return used, &protocolError{websocket.CloseProtocolError, "bad control frame"}
		case op > opBinary && op < opClose:
			return used, &protocolError{websocket.CloseProtocolError, "unknown opcode"}
		case op == opContinuation && r.msgOp == 0:
			return used, &protocolError{websocket.CloseProtocolError, "continuation frame without a message"}
		case (op == opText || op == opBinary) && r.msgOp != 0:
			return used, &protocolError{websocket.CloseProtocolError, "new message before the last one ended"}
		case op < opClose && uint64(len(r.msg))+n > uint64(r.max):
			// refused before its payload is read, so it cannot hold memory
			return used, &protocolError{websocket.CloseMessageTooBig, "message too big"}
		}
		hdr += 4
		if len(buf) < hdr || uint64(len(buf)-hdr) < n {
			return used, nil
		}
		key, payload := buf[hdr-4:hdr], buf[hdr:hdr+int(n)]
		for i := range payload {
			payload[i] ^= key[i&3]
		}
		used += hdr + int(n)

		switch {
		case op >= opClose:
			if perr := checkControl(op, payload); perr != nil {
				return used, perr
			}
		case op == opContinuation:
			r.msg = append(r.msg, payload...)
			if !fin {
				continue
			}
			op, payload = r.msgOp, r.msg
			r.msgOp, r.msg = 0, nil
		case !fin:
			r.msgOp, r.msg = op, append([]byte(nil), payload...)
			continue
		}
		if op == opText && !utf8.Valid(payload) {
			return used, &protocolError{websocket.CloseInvalidFramePayloadData, "text message is not UTF-8"}
		}
		if !emit(op, payload) {
			return used, nil
		}
	}
}

// checkControl checks a close frame's code and reason (§5.5.1, §7.4).
func checkControl(op byte, payload []byte) *protocolError {
	if op != opClose || len(payload) == 0 {
		return nil
	}
	if len(payload) == 1 {
		return &protocolError{websocket.CloseProtocolError, "close frame with a one-byte code"}
	}
	code := int(binary.BigEndian.Uint16(payload))
	if !validCloseCode(code) {
		return &protocolError{websocket.CloseProtocolError, "invalid close code"}
	}
	if !utf8.Valid(payload[2:]) {
		return &protocolError{websocket.CloseInvalidFramePayloadData, "close reason is not UTF-8"}
	}
	return nil
}

// validCloseCode: the codes a peer may send (RFC 6455 §7.4.1, §7.4.2).
func validCloseCode(code int) bool {
	switch {
	case code >= 1000 && code <= 1003, code >= 1007 && code <= 1014:
		return true
	default:
		return code >= 3000 && code <= 4999
	}
}
