package push

import (
	"strconv"
	"strings"
	"time"
)

// SSE returns the event in the text/event-stream format, encoded once and
// shared by every subscriber.
func (e *Event) SSE() []byte {
	e.sseOnce.Do(func() {
		// sized at once, as an event in history keeps it: "data: " and
		// "\n" per line, and at most 41 bytes of field names, the retry's
		// digits and line ends besides
		lines := 1 + strings.Count(e.Data, "\n") + strings.Count(e.Data, "\r")
		id := e.PublicID()
		b := make([]byte, 0, len(id)+len(e.Type)+len(e.Data)+7*lines+41)
		e.sse = appendSSE(b, id, e.Type, e.Data, e.Retry)
	})
	return e.sse
}

// appendSSE writes one event. Data is split on every line terminator the
// SSE parser knows (CRLF, LF, CR) so no payload can start a field or an
// event of its own; the type and id are validated never to hold one.
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

// appendPause appends the pause block: come back at until. It has no id,
// so the client's last id stays that of its last event; retry makes a
// plain EventSource, which has no pause listener, wait as long.
func appendPause(b []byte, now, until time.Time) []byte {
	ms := max(until.Sub(now).Milliseconds(), 1)
	return appendSSE(b, "", "pause", strconv.FormatInt(until.UnixMilli(), 10), ms)
}

// appendPresence appends the subscription's push.presence events, for an
// SSE stream. They have no id: they are not events of the hub.
func (s *Subscription) appendPresence(b []byte) []byte {
	for _, p := range s.presence {
		b = appendSSE(b, "", "push.presence", p.data, 0)
	}
	s.presence = nil
	return b
}

// sseFor is SSE, or with hashIDs the encoding push_mercure sends: the
// hub's id as a fragment, "#<id>", which the Mercure protocol allows for
// ids a hub makes (a publisher's own id, which may not start with "#",
// is sent as it is, and so is an event without an id).
func (e *Event) sseFor(hashIDs bool) []byte {
	if !hashIDs || e.ID == "" || e.PublicID() != e.ID {
		return e.SSE()
	}
	e.hashOnce.Do(func() {
		e.hashSSE = appendSSE(make([]byte, 0, len(e.SSE())+1), "#"+e.ID, e.Type, e.Data, e.Retry)
	})
	return e.hashSSE
}
