package push

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"net"
	"net/http"
	"reflect"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

func init() {
	caddy.RegisterModule(SSEHandler{})
}

// Defaults of an SSE stream.
const (
	DefaultRetry     = 3 * time.Second
	DefaultKeepalive = 15 * time.Second
)

// SSEHandler serves Server-Sent Events streams (text/event-stream) of a
// hub's topics, with replay from Last-Event-ID.
//
// When a request carries a JWT that verifies (jwt_key or jwks_url), and
// when the app's authorize answer names the user, the handler sets these
// placeholders, which its topics templates (and, for push_ws, its publish
// templates) may use; {http.push.user} is set after the topics are asked
// of the app, so only publish templates and log_append (access logs) see it:
//
//	Placeholder       | Description
//	------------------|------------------------------------------------
//	{http.push.jwt.*} | each string claim of the token: {http.push.jwt.sub}
//	{http.push.user}  | the user the app's authorize answer names
type SSEHandler struct {
	Endpoint

	// The reconnection delay sent to clients as `retry:` when the stream
	// opens. Default: 3s.
	Retry caddy.Duration `json:"retry,omitempty"`

	// How long a stream may be idle before a `: keepalive`
	// comment is sent, so proxies and clients see it is alive.
	// Default: 15s.
	Keepalive caddy.Duration `json:"keepalive,omitempty"`

	engines *handlerEngine
	// hashIDs shows the hub's own event ids as "#<id>", a fragment, as
	// the Mercure protocol has them (push_mercure); publishers' ids as
	// they are
	hashIDs bool
}

// CaddyModule returns the Caddy module information.
func (SSEHandler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.push_sse",
		New: func() caddy.Module { return new(SSEHandler) },
	}
}

// Provision resolves the hub and applies defaults.
func (h *SSEHandler) Provision(ctx caddy.Context) error {
	if h.Retry == 0 {
		h.Retry = caddy.Duration(DefaultRetry)
	}
	if h.Keepalive == 0 {
		h.Keepalive = caddy.Duration(DefaultKeepalive)
	}
	h.overLimit = h.pauseOverLimit
	h.engines = new(handlerEngine)
	return h.provision(ctx, ctx.Logger())
}

// Validate checks the durations.
func (h *SSEHandler) Validate() error {
	if h.Retry < 0 || h.Keepalive < 0 {
		return fmt.Errorf("retry and keepalive must not be negative")
	}
	return nil
}

// ServeHTTP subscribes the client and streams events until the client
// leaves, the stream reaches max_duration, or the server shuts down.
func (h *SSEHandler) ServeHTTP(w http.ResponseWriter, r *http.Request, _ caddyhttp.Handler) error {
	if r.Method != http.MethodGet {
		w.Header().Set("Allow", http.MethodGet)
		return writeError(w, r, http.StatusMethodNotAllowed, errors.New("method not allowed: subscribe with GET"))
	}
	a, err := h.accept(w, r, TransportSSE)
	if a == nil {
		return err
	}
	return h.serve(w, r, a)
}

// serve subscribes an admitted client and streams its events until it
// leaves, the stream reaches max_duration, or the server shuts down.
func (h *SSEHandler) serve(w http.ResponseWriter, r *http.Request, a *admission) error {
	sub, err := h.subscribe(r.Context(), a, a.member(r, TransportSSE))
	if err != nil {
		a.Release()
		if errors.Is(err, ErrUnavailable) && acceptsEventStream(r) {
			return h.pauseOverLimit(w, r, http.StatusServiceUnavailable, err)
		}
		return subscribeError(w, r, err)
	}
	if a.opened != nil {
		a.opened(w.Header(), sub)
	}
	handOff := engineServes(r, false)
	if handOff {
		// the engine writes the body raw, so net/http must not chunk it:
		// it ends when the connection closes
		w.Header().Set("Transfer-Encoding", "identity")
	}
	sw := h.openStream(w)
	s := sseSession{h: h, sub: sub}
	ok := s.open(sw, a.LastEventID)
	if handOff {
		sw.lift() // the engine keeps its own
	}
	if ok && handOff && h.handOff(w, s, a.Release) {
		return nil // the engine owns the stream now, and ends it
	}
	defer a.Release()
	defer sub.Close()
	if ok {
		sw.underIdleTimeout()
		s.t = sw
		h.stream(r, sw, &s)
	}
	return nil
}

// pauseOverLimit answers an EventSource that is over a connection limit,
// or that the hub backend cannot serve now, with a pause for as long as
// Retry-After would have said: EventSource gives up for good on any status
// but 200, and comes back by itself after a pause. Other clients get the
// status with Retry-After.
func (h *SSEHandler) pauseOverLimit(w http.ResponseWriter, r *http.Request, status int, err error) error {
	if !acceptsEventStream(r) {
		w.Header().Set("Retry-After", strconv.Itoa(int(limitRetryAfter.Seconds())))
		return writeError(w, r, status, err)
	}
	h.hub.stats.of(TransportSSE).paused.Add(1)
	sw := h.openStream(w)
	msg := make([]byte, 0, 128)
	msg = append(msg, "retry: "...)
	msg = strconv.AppendInt(msg, time.Duration(h.Retry).Milliseconds(), 10)
	msg = append(msg, "\n: "...)
	msg = append(msg, strings.ReplaceAll(err.Error(), "\n", " ")...)
	msg = append(msg, "\n\n"...)
	now := time.Now()
	msg = appendPause(msg, now, now.Add(jittered(limitRetryAfter)))
	sw.write(msg)
	sw.lift()
	return nil
}

// openStream writes the stream's status and headers.
func (h *SSEHandler) openStream(w http.ResponseWriter) *sseWriter {
	hdr := w.Header()
	hdr.Set("Content-Type", "text/event-stream; charset=utf-8")
	// no-transform keeps encode (and any proxy) from compressing, which
	// would buffer the stream
	hdr.Set("Cache-Control", "no-cache, no-transform")
	hdr.Set("X-Accel-Buffering", "no")
	hdr.Del("Content-Length")
	w.WriteHeader(http.StatusOK)
	return &sseWriter{w: w, rc: http.NewResponseController(w), hashIDs: h.hashIDs}
}

// stream writes live events on this goroutine, after the opening, where
// the engine cannot take the stream over; sw is s's transport.
func (h *SSEHandler) stream(r *http.Request, sw *sseWriter, s *sseSession) {
	defer sw.lift()
	sub := s.sub
	// one timer, and as few select cases as can be, since a stream goes
	// round this loop once per delivery: the timer wakes the stream for
	// its keepalive, for max_duration, and to lift the write deadline of
	// a stream gone quiet (see sseWriter); Ready also tells of the end
	keepalive := time.Duration(h.Keepalive)
	expires := h.expiresAt()
	lastWrite := time.Now()
	next := func(now time.Time) time.Duration {
		d := lastWrite.Add(keepalive).Sub(now)
		if !sw.until.IsZero() {
			d = min(d, lastWrite.Add(sw.liftAfter()).Sub(now))
		}
		if !expires.IsZero() {
			d = min(d, expires.Sub(now))
		}
		return max(d, 0)
	}
	wake := time.NewTimer(next(lastWrite))
	defer wake.Stop()
	wrote := func() {
		lastWrite = time.Now()
		wake.Reset(next(lastWrite))
	}
	stopping, gone := h.stopping(), r.Context().Done()
	var batch []*Event
	for {
		select {
		case <-sub.Ready():
			if sub.isEnded() {
				s.ended()
				return
			}
			batch = sub.Take(batch)
			if len(batch) == 0 {
				continue
			}
			if !sw.writeEvents(sub, batch) {
				return
			}
			wrote()
		case now := <-wake.C:
			switch {
			case !expires.IsZero() && !now.Before(expires):
				expires = time.Time{}
				if !s.expire() {
					return
				}
				// ends as paused, through Ready
			case now.Sub(lastWrite) >= keepalive:
				if !sw.write([]byte(": keepalive\n\n")) {
					return
				}
				lastWrite = time.Now()
			default:
				sw.lift()
			}
			wake.Reset(next(time.Now()))
		case <-stopping:
			sw.write(goodbye())
			return
		case <-gone:
			return
		}
	}
}

// sseWriter writes a stream that stays on its goroutine (HTTP/2, HTTP/3,
// or the engine off), and keeps its write deadline.
//
// Setting a deadline on an HTTP/2 stream is a message to the connection's
// serve goroutine, as costly as the write's own hand-off, so a deadline set
// before and lifted after each write tripled the hand-offs per delivery.
// Instead the deadline is set 1.5×writeTimeout ahead and renewed only when
// less than writeTimeout is left: every write still has writeTimeout at
// least, and a client that takes nothing is cut off within 1.5× of it.
// HTTP/2 also resets a stream whose deadline passes while no write is
// under way, so a stream quiet for liftAfter lifts its deadline, which then
// still lies writeTimeout/2 ahead at least.
type sseWriter struct {
	w     http.ResponseWriter
	rc    *http.ResponseController
	until time.Time // the deadline set; zero when none is
	// hashIDs writes the hub's ids as "#<id>" (push_mercure)
	hashIDs bool
}

// underIdleTimeout moves the stream's writes, once its opening is out,
// under Caddy's write idle timeout (caddyhttp.IdleTimeoutWriter, on by
// default): that wrapper sets a write deadline before and clears it after
// every Write and every Flush, which over HTTP/2 is four more messages to
// the connection's serve goroutine per event. The stream keeps its own
// deadline, which bounds a stall more tightly (writeTimeout). Only
// wrappers of Caddy's own HTTP package are stepped over, and only when
// none buffers the response: elsewhere the stream keeps writing through
// every wrapper. What is written past the wrapper is not in the access
// log's size, as with streams the engine owns.
func (sw *sseWriter) underIdleTimeout() {
	for cur := sw.w; ; {
		if t := reflect.TypeOf(cur); t.Kind() != reflect.Pointer || t.Elem().PkgPath() != caddyhttpPkg {
			return
		}
		switch x := cur.(type) {
		case *caddyhttp.IdleTimeoutWriter:
			sw.w = x.ResponseWriterWrapper
			sw.rc = http.NewResponseController(sw.w)
			// over HTTP/1 and HTTP/3 the wrapper leaves its own idle
			// deadline armed, which may come before sw.until
			sw.until = time.Time{}
			sw.arm()
			return
		case caddyhttp.ResponseRecorder:
			if x.Buffered() {
				return
			}
		}
		u, ok := cur.(interface{ Unwrap() http.ResponseWriter })
		if !ok {
			return
		}
		cur = u.Unwrap()
	}
}

var caddyhttpPkg = reflect.TypeFor[caddyhttp.IdleTimeoutWriter]().PkgPath()

// arm makes sure the next write has writeTimeout at least.
func (sw *sseWriter) arm() {
	wt := writeTimeout()
	now := time.Now()
	if !sw.until.IsZero() && sw.until.Sub(now) >= wt {
		return
	}
	sw.until = now.Add(wt + wt/2)
	_ = sw.rc.SetWriteDeadline(sw.until)
}

// lift removes the deadline, if one is set.
func (sw *sseWriter) lift() {
	if sw.until.IsZero() {
		return
	}
	sw.until = time.Time{}
	_ = sw.rc.SetWriteDeadline(time.Time{})
}

// liftAfter is how long after its last write a quiet stream lifts its
// deadline: the deadline, renewed at most writeTimeout/2 before that
// write, still lies 3/4 writeTimeout ahead.
func (sw *sseWriter) liftAfter() time.Duration {
	if sw.until.IsZero() {
		return time.Duration(math.MaxInt64)
	}
	return writeTimeout() / 4
}

func (sw *sseWriter) writeEvents(sub *Subscription, events []*Event) bool {
	if len(events) == 0 {
		return true
	}
	sw.arm()
	for _, ev := range events {
		if _, err := sw.w.Write(ev.sseFor(sw.hashIDs)); err != nil {
			return writeFailed(sub, err)
		}
	}
	if err := sw.rc.Flush(); err != nil {
		return writeFailed(sub, err)
	}
	sub.Delivered(len(events))
	return true
}

// end writes last, if any; the stream ends as the handler returns.
func (sw *sseWriter) end(last []byte) {
	if last != nil {
		sw.write(last)
	}
}

func (sw *sseWriter) write(p []byte) bool {
	sw.arm()
	if _, err := sw.w.Write(p); err != nil {
		return false
	}
	return sw.rc.Flush() == nil
}

// writeFailed counts a client that stopped reading as a slow consumer.
// (A timeout, not os.ErrDeadlineExceeded: gorilla hides the error chain.)
func writeFailed(sub *Subscription, err error) bool {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		sub.CutOff()
	}
	return false
}

// goodbye is a short retry, spread over a second so a reload does not
// bring every client back in the same instant.
func goodbye() []byte {
	return []byte("retry: " + strconv.Itoa(100+rand.IntN(900)) + "\n\n")
}

// Interface guards
var (
	_ caddy.Provisioner           = (*SSEHandler)(nil)
	_ caddy.Validator             = (*SSEHandler)(nil)
	_ caddyhttp.MiddlewareHandler = (*SSEHandler)(nil)
)
