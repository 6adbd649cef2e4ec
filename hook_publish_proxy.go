package push

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"sync"

	"github.com/caddyserver/caddy/v2"
	"github.com/gorilla/websocket"
	"go.uber.org/zap"
)

// publish_proxy: a push_ws endpoint hands each client message to the app
// before it is published, and publishes only what the app confirms.
//
// The call is made off the connection's reader (and so off the engine),
// by a goroutine that lives while the connection has messages waiting for
// the app: one call at a time, so a connection's messages are published
// in the order it sent them, with at most maxProxyWaiting more waiting.
// The hub's fan-out never meets it.

// maxProxyWaiting is how many of a connection's messages may wait for the
// app behind the one it is answering; beyond, they are refused.
const maxProxyWaiting = 8

// The error frames a client gets from publish_proxy, besides the app's own
// reasons and the checks every client message meets.
const (
	replyProxyQueueFull    = "publish queue full: wait for the app, then send again"
	replyProxyNotConfirmed = "publish not confirmed by the app: try again"
	replyProxyBadAnswer    = "publish not confirmed: the app's answer is not a message envelope"
)

// proxyEnvelope is what the app gets, and answers with: the client's
// envelope, and who sent it. The answer's connection and user are
// ignored: the publisher stays the connection's.
type proxyEnvelope struct {
	clientFrame
	Connection string `json:"connection"`
	User       string `json:"user"`
	// allowed are the topics the client could publish to when it sent
	// the message, which the app's answer is checked against
	allowed []string
}

// provisionPublishProxy readies the app's hook, which needs publish.
func (h *WSHandler) provisionPublishProxy(ctx caddy.Context) error {
	if h.PublishProxy == nil {
		return nil
	}
	if len(h.Publish) == 0 {
		return errors.New("publish_proxy needs publish: without it, clients may not publish")
	}
	return h.PublishProxy.provision(ctx, "publish_proxy")
}

// proxyQueue holds a connection's messages waiting for the app, and runs
// the goroutine that hands them over.
type proxyQueue struct {
	mu      sync.Mutex
	waiting []proxyEnvelope
	running bool // a goroutine is taking the waiting messages
	stopped bool
	ctx     context.Context // the connection's, once it has sent a message
	cancel  context.CancelFunc
	done    sync.WaitGroup
}

// newProxyQueue returns the queue of a connection whose messages go to the
// app, or nil when they go straight to the hub.
func newProxyQueue(h *WSHandler) *proxyQueue {
	if h.PublishProxy == nil {
		return nil
	}
	return new(proxyQueue)
}

// proxy checks a client message as publishFrame would, against the
// topics the connection may publish to now, and queues it for the app;
// it returns the problem the client is told of, if any.
func (s *wsSession) proxy(frame []byte, allowed []string) string {
	// the checks come first: the app is asked only about a message that
	// could be published
	m, err := parseClientFrame(frame, allowed)
	if err == nil {
		err = s.sub.hub.Validate(m)
	}
	if err != nil {
		return err.Error()
	}
	var f clientFrame
	if decodeStrict(frame, &f) != nil {
		// a text message to the one topic: the data of an envelope
		f = clientFrame{Topic: allowed[0]}
		f.Data, _ = json.Marshal(m.Data)
	}
	if f.Topic == "" {
		f.Topic = m.Topics[0]
	}
	if len(f.Data) == 0 {
		f.Data = json.RawMessage(`""`) // as the hub would have it; null is data "null"
	}
	who := s.sub.Member()
	if !s.toApp.add(s, proxyEnvelope{clientFrame: f, Connection: who.Connection, User: who.User, allowed: allowed}) {
		return replyProxyQueueFull
	}
	return ""
}

// add queues env, and starts the goroutine that hands the queue to the app
// if none runs; it reports false when the queue is full.
func (q *proxyQueue) add(s *wsSession, env proxyEnvelope) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.stopped {
		return true // the connection is ending: there is no one to tell
	}
	if len(q.waiting) >= maxProxyWaiting {
		return false
	}
	q.waiting = append(q.waiting, env)
	if !q.running {
		if q.ctx == nil {
			q.ctx, q.cancel = context.WithCancel(s.h.ctx)
		}
		q.running = true
		q.done.Add(1)
		go q.run(s)
	}
	return true
}

// run hands the waiting messages to the app, one at a time, until none is
// left or the connection ends.
func (q *proxyQueue) run(s *wsSession) {
	defer q.done.Done()
	for {
		q.mu.Lock()
		if q.stopped || len(q.waiting) == 0 {
			q.running = false
			q.waiting = nil
			q.mu.Unlock()
			return
		}
		env := q.waiting[0]
		q.waiting[0] = proxyEnvelope{}
		q.waiting = q.waiting[1:]
		q.mu.Unlock()
		if !s.relay(q.ctx, env) {
			q.mu.Lock()
			q.stopped = true
			q.mu.Unlock()
		}
	}
}

// stop ends the connection's calls: a message the app has not answered
// yet is not published. It returns once the goroutine has ended.
func (q *proxyQueue) stop() {
	if q == nil {
		return
	}
	q.mu.Lock()
	q.stopped = true
	q.waiting = nil
	cancel := q.cancel
	q.mu.Unlock()
	if cancel != nil {
		cancel()
	}
	q.done.Wait()
}

// relay asks the app about one message, and publishes what it confirms,
// or tells the client why not. It reports false once the connection is
// closing.
func (s *wsSession) relay(ctx context.Context, env proxyEnvelope) bool {
	body, err := json.Marshal(env)
	if err != nil {
		return true // cannot be: the envelope was decoded from JSON
	}
	answer, err := s.h.PublishProxy.post(ctx, body, nil)
	if err != nil && ctx.Err() != nil {
		return false // the connection, or the config, has ended
	}
	problem := ""
	switch {
	case err != nil:
		s.h.logger.Warn("publish_proxy: no answer from the app; message refused",
			zap.String("connection", env.Connection), zap.Error(err))
		problem = replyProxyNotConfirmed
	case answer.Status == http.StatusOK:
		var edited proxyEnvelope
		if err := decodeStrict(answer.Body, &edited); err != nil {
			s.h.logger.Warn("publish_proxy: the app's answer is not a message envelope; message refused",
				zap.String("connection", env.Connection), zap.Error(err))
			problem = replyProxyBadAnswer
			break
		}
		// checked as a client's message is: the app may edit it, never
		// send it where the client may not publish
		m, err := edited.message(env.allowed)
		if err == nil {
			// confirmed: published even if the client leaves meanwhile
			err = publishMessage(s.h.ctx, s.sub, m)
		}
		if err != nil {
			problem = err.Error()
		}
	case answer.Status == http.StatusNoContent:
		// the app took the message itself: nothing to publish, nothing to say
	case answer.Status >= 400 && answer.Status < 500:
		problem = hookReason(answer)
	default:
		s.h.logger.Warn("publish_proxy: unexpected answer from the app; message refused",
			zap.String("connection", env.Connection), zap.Int("status", answer.Status))
		problem = replyProxyNotConfirmed
	}
	if problem != "" && !s.t.reply(errorFrame(problem)) {
		s.t.close(websocket.ClosePolicyViolation, reasonTooManyErrors)
		return false
	}
	return true
}
