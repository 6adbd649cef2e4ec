package main

import (
	"bytes"
	"errors"
	"strconv"
)

// Centrifugo's unidirectional transports (uni_sse, uni_websocket) send
// pushes of its JSON protocol, one per SSE event or WebSocket message, or
// several on lines of one message (uni_websocket's join_push_messages):
//
//	{"connect":{"client":"..","version":"..","subs":{"<channel>":{}},"ping":25,...}}
//	{"channel":"<channel>","pub":{"data":"<payload>","offset":1}}
//	{}                                      a ping
//	{"disconnect":{"code":3001,"reason":"shutdown"}}
//
// and join, leave, unsubscribe and the like, which carry no payload.

// pushKind is what a Centrifugo push is to a subscriber.
type pushKind int

const (
	pushOther      pushKind = iota // a ping, join, leave...: nothing to count
	pushPub                        // a publication: its data is a delivery
	pushConnect                    // the connect result, first on a stream
	pushDisconnect                 // the server is closing the stream
	pushMalformed                  // not a JSON object of pushes
)

// parseCentrifugoPush reads one push. For a publication, value is that
// of its "data" member: a string's contents as they stand (a payload needs
// no unescaping), another value's raw JSON, or nil without one; either of
// the last two is a malformed delivery. For a connect or a disconnect,
// value is its object.
func parseCentrifugoPush(msg []byte) (kind pushKind, value []byte) {
	p := skipSpace(msg)
	if len(p) == 0 || p[0] != '{' {
		return pushMalformed, nil
	}
	p = skipSpace(p[1:])
	for len(p) > 0 && p[0] != '}' {
		key, val, rest, ok := nextMember(p)
		if !ok {
			return pushMalformed, nil
		}
		switch string(key) {
		case "pub":
			data, _ := objectMember(val, "data")
			if len(data) >= 2 && data[0] == '"' {
				data = data[1 : len(data)-1]
			}
			return pushPub, data
		case "connect":
			return pushConnect, val
		case "disconnect":
			return pushDisconnect, val
		case "channel", "id":
			// the publication's channel, or an id: what follows tells
		default:
			return pushOther, nil // join, leave, unsubscribe, message...
		}
		p = rest
	}
	if len(p) == 0 {
		return pushMalformed, nil
	}
	return pushOther, nil // {}: a ping
}

// disconnectCode is the code of a disconnect push's object, 0 if none.
func disconnectCode(obj []byte) int {
	v, _ := objectMember(obj, "code")
	n, rest, ok := parseUint(v)
	if !ok || len(rest) > 0 || n > 1<<31 {
		return 0
	}
	return int(n)
}

// nextMember splits the object member that starts p, `"key": value,`,
// into the key's contents, the raw value, and what follows the comma.
func nextMember(p []byte) (key, value, rest []byte, ok bool) {
	s, rest, ok := jsonStringAt(p)
	if !ok {
		return nil, nil, nil, false
	}
	rest = skipSpace(rest)
	if len(rest) == 0 || rest[0] != ':' {
		return nil, nil, nil, false
	}
	if value, rest, ok = jsonValue(skipSpace(rest[1:])); !ok {
		return nil, nil, nil, false
	}
	rest = skipSpace(rest)
	if len(rest) > 0 && rest[0] == ',' {
		rest = skipSpace(rest[1:])
	}
	return s[1 : len(s)-1], value, rest, true
}

// objectMember returns the raw value of the member key of the object that
// starts p (a string with its quotes).
func objectMember(p []byte, key string) ([]byte, bool) {
	if len(p) == 0 || p[0] != '{' {
		return nil, false
	}
	p = skipSpace(p[1:])
	for len(p) > 0 && p[0] != '}' {
		k, v, rest, ok := nextMember(p)
		if !ok {
			return nil, false
		}
		if string(k) == key {
			return v, true
		}
		p = rest
	}
	return nil, false
}

// jsonValue splits the JSON value that starts p from what follows it. It
// checks only enough to find the value's end.
func jsonValue(p []byte) (value, rest []byte, ok bool) {
	if len(p) == 0 {
		return nil, nil, false
	}
	switch p[0] {
	case '"':
		return jsonStringAt(p)
	case '{', '[':
		depth := 0
		for i := 0; i < len(p); i++ {
			switch p[i] {
			case '"':
				s, _, ok := jsonStringAt(p[i:])
				if !ok {
					return nil, nil, false
				}
				i += len(s) - 1
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					return p[:i+1], p[i+1:], true
				}
			}
		}
		return nil, nil, false
	}
	// a number, true, false or null
	i := 0
	for i < len(p) && p[i] != ',' && p[i] != '}' && p[i] != ']' && p[i] != ' ' && p[i] != '\t' && p[i] != '\n' && p[i] != '\r' {
		i++
	}
	return p[:i], p[i:], i > 0
}

// jsonStringAt splits the JSON string that starts p, quotes included,
// from what follows it.
func jsonStringAt(p []byte) (s, rest []byte, ok bool) {
	if len(p) == 0 || p[0] != '"' {
		return nil, nil, false
	}
	for i := 1; i < len(p); i++ {
		switch p[i] {
		case '\\':
			i++
		case '"':
			return p[:i+1], p[i+1:], true
		}
	}
	return nil, nil, false
}

func skipSpace(p []byte) []byte {
	for len(p) > 0 && (p[0] == ' ' || p[0] == '\t' || p[0] == '\n' || p[0] == '\r') {
		p = p[1:]
	}
	return p
}

// appendJSONString appends s as a JSON string.
func appendJSONString(b []byte, s string) []byte {
	const hex = "0123456789abcdef"
	b = append(b, '"')
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '"' || c == '\\':
			b = append(b, '\\', c)
		case c < 0x20:
			b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
		default:
			b = append(b, c)
		}
	}
	return append(b, '"')
}

// centrifugoDisconnect is a disconnect push; its code tells why.
type centrifugoDisconnect int

func (e centrifugoDisconnect) Error() string { return "centrifugo disconnect " + strconv.Itoa(int(e)) }

var errNotSubscribed = errors.New("connected but not subscribed")

// centrifugoSource takes the payloads out of Centrifugo's pushes.
type centrifugoSource struct {
	src  source // the SSE events' data or the WebSocket messages
	rest []byte // the pushes left of the last message
}

// push returns the next push, valid until the next call.
func (s *centrifugoSource) push() (msg []byte, err error) {
	for len(s.rest) == 0 {
		if s.rest, err = s.src.next(); err != nil {
			return nil, err
		}
	}
	msg, s.rest, _ = bytes.Cut(s.rest, []byte{'\n'})
	return msg, nil
}

// connected reads the connect push that opens a stream, and checks that
// the connection is subscribed to topic: Centrifugo ignores a channel the
// connection may not subscribe to, and would then look like a server that
// delivers nothing.
func (s *centrifugoSource) connected(topic string) error {
	msg, err := s.push()
	if err != nil {
		return err
	}
	switch kind, v := parseCentrifugoPush(msg); kind {
	case pushConnect:
		subs, _ := objectMember(v, "subs")
		if _, ok := objectMember(subs, topic); !ok {
			return errNotSubscribed
		}
		return nil
	case pushDisconnect:
		return centrifugoDisconnect(disconnectCode(v))
	}
	return errors.New("no connect push")
}

func (s *centrifugoSource) next() ([]byte, error) {
	for {
		msg, err := s.push()
		if err != nil {
			return nil, err
		}
		switch kind, v := parseCentrifugoPush(msg); kind {
		case pushPub:
			return v, nil
		case pushMalformed:
			return msg, nil // the subscriber counts it malformed
		case pushDisconnect:
			return nil, centrifugoDisconnect(disconnectCode(v))
		}
	}
}
