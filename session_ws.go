package push

import (
	"encoding/json"
	"strconv"
	"time"

	"github.com/gorilla/websocket"
)

// wsSession is a WebSocket connection as the protocol sees it, whichever
// transport carries it (the engine's wsStream, or a socket on goroutines).
type wsSession struct {
	h       *WSHandler
	sub     *Subscription
	publish []string // the topics the client may publish to
	limit   *rateLimit
	toApp   *proxyQueue // messages on their way to publish_proxy; nil without it
	t       wsTransport
}

func newWSSession(h *WSHandler, sub *Subscription, publish []string, t wsTransport) wsSession {
	return wsSession{h: h, sub: sub, publish: publish, limit: newRateLimit(h.PublishRate, h.PublishBurst),
		toApp: newProxyQueue(h, publish), t: t}
}

// open sends the presence snapshot, then the reset or the backlog, which
// it releases: a long connection must not pin old events. It reports
// false if a write failed.
func (s *wsSession) open() bool {
	for _, frame := range s.sub.presenceFrames(s.h.Format) {
		if !s.t.writeText(frame) {
			return false
		}
	}
	b := s.sub.Backlog
	s.sub.Backlog.Events = nil
	if b.Reset != "" && !s.t.writeText(encodeFrame(wsFrame{ID: b.Head, Event: "push.reset", Data: b.Reset})) {
		return false
	}
	return s.t.writeEvents(b.Events)
}

// message handles one client message: it publishes it, or answers with an
// error frame; it reports false when the connection is closing.
func (s *wsSession) message(text bool, payload []byte) bool {
	var problem string
	switch {
	case !text:
		problem = replyBinary
	default:
		switch s.limit.take(time.Now()) {
		case rateExceeded:
			problem = replyRateExceeded
		case rateAbused:
			s.sub.endedFor(hookPolicy)
			s.t.close(websocket.ClosePolicyViolation, reasonRateAbused)
			return false
		default:
			if s.toApp != nil {
				problem = s.proxy(payload)
			} else if err := publishFrame(s.h.ctx, s.sub, s.publish, payload); err != nil {
				// under the module's context: the request's has ended
				problem = err.Error()
			}
		}
	}
	if problem != "" && !s.t.reply(errorFrame(problem)) {
		s.sub.endedFor(hookPolicy)
		s.t.close(websocket.ClosePolicyViolation, reasonTooManyErrors)
		return false
	}
	return true
}

// closed ends what the session still does once its connection has ended.
func (s *wsSession) closed() { s.toApp.stop() }

func errorFrame(msg string) []byte {
	frame, _ := json.Marshal(map[string]string{"error": msg})
	return frame
}

// ended closes the way the hub's reason for ending the subscription asks;
// a paused client first gets the pause frame.
func (s *wsSession) ended() {
	code, reason, frame := endedWith(s.sub)
	if frame != nil && !s.t.writeText(frame) {
		return
	}
	s.t.close(code, reason)
}

// expire ends the connection at max_duration: with pause_for it pauses
// the subscription, which then ends (ended), and reports true; otherwise
// it closes with 1001 and reports false.
func (s *wsSession) expire() bool {
	if s.h.expire(s.sub) {
		return true
	}
	s.t.close(websocket.CloseGoingAway, reasonMaxDuration)
	return false
}

// endedWith says how to close when the hub ended the subscription: the
// close code and reason, and for a pause the frame to send first.
func endedWith(sub *Subscription) (code int, reason string, frame []byte) {
	if sub.Disconnected() {
		return websocket.ClosePolicyViolation, disconnectedReason, nil
	}
	if sub.TokenExpired() {
		return websocket.ClosePolicyViolation, reasonTokenExpired, nil
	}
	if sub.FellBehind() {
		return CloseSlowConsumer, reasonSlowConsumer, nil
	}
	if until, ok := sub.PausedUntil(); ok {
		ms := strconv.FormatInt(until.UnixMilli(), 10)
		// the same frame in either format: a pause is not an event, so it has no id
		return CloseTryAgainLater, reasonPaused + ms + " (" + until.UTC().Format(time.RFC3339) + ")",
			[]byte(`{"event":"pause","data":"` + ms + `"}`)
	}
	return websocket.CloseServiceRestart, reasonResync, nil
}
