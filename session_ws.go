package push

import (
	"context"
	"encoding/json"
	"slices"
	"strconv"
	"time"

	"github.com/gorilla/websocket"
)

// wsSession is a WebSocket connection as the protocol sees it, whichever
// transport carries it (the engine's wsStream, or a socket on goroutines).
type wsSession struct {
	h      *WSHandler
	sub    *Subscription
	rights wsRights
	// dropped are the topics the client unsubscribed from (and has not
	// subscribed to again); read and written by the reader of client
	// messages only
	dropped map[string]struct{}
	limit   *rateLimit
	toApp   *proxyQueue // messages on their way to publish_proxy; nil without it
	t       wsTransport
}

func newWSSession(h *WSHandler, sub *Subscription, rights wsRights, t wsTransport) wsSession {
	return wsSession{h: h, sub: sub, rights: rights, limit: newRateLimit(h.PublishRate, h.PublishBurst),
		toApp: newProxyQueue(h), t: t}
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

// message handles one client message: it runs a command (json format),
// or publishes it, or answers with an error frame; it reports false when
// the connection is closing.
func (s *wsSession) message(text bool, payload []byte) bool {
	if !text {
		return s.answer(errorFrame(replyBinary))
	}
	switch s.limit.take(time.Now()) {
	case rateExceeded:
		return s.answer(errorFrame(replyRateExceeded))
	case rateAbused:
		s.sub.endedFor(hookPolicy)
		s.t.close(websocket.ClosePolicyViolation, reasonRateAbused)
		return false
	}
	if s.h.Format == FormatJSON {
		switch c, ok, err := parseCommand(payload); {
		case err != nil:
			return s.answer(errorFrame(err.Error()))
		case ok && c.subscribe:
			return s.subscribe(c.topic, c.lastEventID)
		case ok:
			return s.unsubscribe(c.topic)
		}
	}
	allowed := s.publishable()
	if len(allowed) == 0 && len(s.dropped) > 0 {
		return s.answer(errorFrame(replyNoPublishNow))
	}
	if s.toApp != nil {
		if problem := s.proxy(payload, allowed); problem != "" {
			return s.answer(errorFrame(problem))
		}
		return true
	}
	// under the module's context: the request's has ended
	if err := publishFrame(s.h.ctx, s.sub, allowed, payload); err != nil {
		return s.answer(errorFrame(err.Error()))
	}
	return true
}

// answer sends a frame on behalf of the reader of client messages; a
// client that provokes them faster than they go out is closed.
func (s *wsSession) answer(frame []byte) bool {
	if !s.t.reply(frame) {
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

// commandTimeout bounds the hub's work for one command (the roster, the
// backlog).
const commandTimeout = 5 * time.Second

// subscribe adds a topic to the connection (a subscribe message),
// checked as a connect's topics are. The client gets, as at connect, the
// topic's push.presence (with presence), its backlog after lastEventID or
// a push.reset, then {"subscribed":"<topic>"}, then the topic's live
// events; the hub leaves out of the backlog the events that reach the
// client through its other topics. A topic it follows is answered at
// once.
func (s *wsSession) subscribe(topic, lastEventID string) bool {
	if s.sub.follows.Load().holds(topic) {
		return s.answer(answerFrame("subscribed", topic))
	}
	add := topicAdd{Topic: topic, Held: s.sub.topics(), Connect: s.rights.connect, Grant: s.rights.grant, Request: s.rights.request}
	if err := s.h.checkAddedTopic(add, s.h.Subscribe); err != nil {
		return s.answer(errorFrame(err.Error()))
	}
	added := false
	ok := s.t.held(func() bool {
		ctx, cancel := context.WithTimeout(s.h.ctx, commandTimeout)
		defer cancel()
		announce := s.h.announces(topic)
		earlier, b, err := s.h.hub.addTopic(ctx, s.sub, topic, lastEventID, announce)
		if !s.t.writeEvents(earlier) {
			return false
		}
		if err != nil {
			return s.t.writeText(errorFrame(err.Error()))
		}
		added = true
		if announce {
			if p, ok := s.h.presenceOf(ctx, topic); ok && !s.t.writeText(presenceFrame(s.h.Format, p)) {
				return false
			}
		}
		if b.Reset != "" && !s.t.writeText(encodeFrame(wsFrame{ID: b.Head, Topic: topic, Event: "push.reset", Data: b.Reset})) {
			return false
		}
		return s.t.writeEvents(b.Events) && s.t.writeText(answerFrame("subscribed", topic))
	})
	if added {
		delete(s.dropped, topic)
		s.sub.hub.hookEvent(connectionEvent("subscribe", s.sub.Member(), []string{topic}))
	}
	return ok
}

// unsubscribe takes a topic off the connection (an unsubscribe message)
// and answers {"unsubscribed":"<topic>"}, after which no event of the
// topic comes; the client may no longer publish to it either. A topic
// it does not follow is answered the same.
func (s *wsSession) unsubscribe(topic string) bool {
	if s.sub.follows.Load().holds(topic) {
		s.h.hub.removeTopic(s.sub, topic)
		s.sub.hub.hookEvent(connectionEvent("unsubscribe", s.sub.Member(), []string{topic}))
	}
	if s.dropped == nil {
		s.dropped = make(map[string]struct{})
	}
	s.dropped[topic] = struct{}{}
	return s.answer(answerFrame("unsubscribed", topic))
}

// answerFrame is {"<verb>":"<topic>"}.
func answerFrame(verb, topic string) []byte {
	frame, _ := json.Marshal(map[string]string{verb: topic})
	return frame
}

// publishable are the topics the client may publish to now
// (docs/websocket.md, "Publish rights"): the publish templates' topics
// from its connect, but those it unsubscribed from; and the topics it
// added and follows that a template with {query.*} placeholders gives.
func (s *wsSession) publishable() []string {
	f := s.sub.follows.Load()
	if len(s.dropped) == 0 && len(f.added) == 0 {
		return s.rights.publish
	}
	var out []string
	for _, t := range s.rights.publish {
		if _, gone := s.dropped[t]; !gone {
			out = append(out, t)
		}
	}
	for t := range f.added {
		if !slices.Contains(out, t) && s.h.mayPublish(s.rights.grant, t) &&
			slices.ContainsFunc(s.rights.publishAny, func(q queryTemplate) bool { return q.gives(t) }) {
			out = append(out, t)
		}
	}
	return out
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
