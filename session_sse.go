package push

import (
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"
)

// sseSession is an SSE stream as the protocol sees it, whichever
// transport carries it once it is open (the engine's sseStream, or an
// sseWriter on the handler's goroutine).
type sseSession struct {
	h   *SSEHandler
	sub *Subscription
	t   sseTransport
}

// open sends the retry, the id the stream starts from, a comment (so the
// browser fires "open" at once), the presence snapshot, then the reset or
// the backlog, which it releases: a long stream must not pin old events.
// The opening goes out through net/http whichever transport goes on.
func (s *sseSession) open(sw *sseWriter, lastEventID string) bool {
	b := s.sub.Backlog
	s.sub.Backlog.Events = nil
	open := make([]byte, 0, 128)
	open = append(open, "retry: "...)
	open = strconv.AppendInt(open, time.Duration(s.h.Retry).Milliseconds(), 10)
	open = append(open, '\n')
	if id := startID(b, lastEventID); id != "" {
		open = append(open, "id: "...)
		open = append(open, s.showID(id)...)
		open = append(open, '\n')
	}
	open = append(open, ": ok\n\n"...)
	open = s.sub.appendPresence(open)
	if b.Reset != "" {
		open = appendSSE(open, s.showID(b.Head), "push.reset", b.Reset, 0)
	}
	return sw.write(open) && sw.writeEvents(s.sub, b.Events)
}

// startID is the id a stream opens with, so that the client's last id is
// right even before its first event: a fresh client starts from the head
// (its first reconnect resumes from there, not from nothing), and a
// client that resumed with ?lastEventId (a new EventSource, which knows no
// id yet) from that id, so a pause listener reading e.lastEventId gets it.
// After a reset, the push.reset event carries the head instead. After
// EarliestID too the stream starts at the head, before the backlog's
// events (which carry their ids): a client that got none comes back from
// the head, not for the whole history again.
func startID(b Backlog, lastEventID string) string {
	switch {
	case b.Reset != "":
		return ""
	case lastEventID == "" || lastEventID == EarliestID:
		return b.Head
	}
	// canonical, and so safe to echo: ParseID accepts no line breaks
	if epoch, seq, ok := ParseID(strings.TrimPrefix(lastEventID, "#")); ok {
		return FormatID(epoch, seq)
	}
	// a publisher's own id, found in history (else the backlog would be a
	// reset): one the hub checked at publish, so with no line breaks
	if ValidateCustomID(lastEventID) == nil {
		return lastEventID
	}
	return ""
}

// showID is how the stream shows an id of the hub: as a fragment on
// push_mercure.
func (s *sseSession) showID(id string) string {
	if s.h.hashIDs {
		return hashID(id)
	}
	return id
}

// ended ends the stream the way the hub's reason for ending the
// subscription asks.
func (s *sseSession) ended() { s.t.end(s.lastWords()) }

// lastWords are what the client is told as the hub ends its subscription:
// nothing when it fell behind (it is not reading), a pause block for a
// pause, a comment when an operator disconnected it, a short retry
// otherwise (a token that expired too: the browser comes back at once,
// with the cookie or token it has now, and resumes).
func (s *sseSession) lastWords() []byte {
	if s.sub.FellBehind() {
		if ce := s.h.logger.Check(zap.DebugLevel, "slow subscriber disconnected"); ce != nil {
			ce.Write(zap.Strings("topics", s.sub.topics()))
		}
		return nil
	}
	if until, ok := s.sub.PausedUntil(); ok {
		return appendPause(nil, time.Now(), until)
	}
	if s.sub.Disconnected() {
		return disconnectedComment
	}
	return goodbye()
}

// expire ends the stream at max_duration: with pause_for it pauses the
// subscription, which then ends (ended), and reports true; otherwise it
// says goodbye and reports false.
func (s *sseSession) expire() bool {
	if s.h.expire(s.sub) {
		return true
	}
	s.t.end(goodbye())
	return false
}
