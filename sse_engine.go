package push

import (
	"net/http"
	"os"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/caddy-push/push/internal/engine"
)

// engineOff keeps every SSE stream on a goroutine of its own, as on
// platforms without the engine: CADDY_PUSH_ENGINE=off, for comparison and
// as a way out should the engine misbehave.
var engineOff = os.Getenv("CADDY_PUSH_ENGINE") == "off"

// sseEngine is a handler's connection engine, made at its first stream
// (Provision stays cheap) and shut down with the handler.
type sseEngine struct {
	mu  sync.Mutex
	eng *engine.Engine
}

// engineServes reports whether the engine can own this request's stream:
// a cleartext HTTP/1.x connection, which can be hijacked and written raw.
// HTTP/2 and HTTP/3 streams cannot be hijacked, and a TLS connection
// cannot be written without blocking; those keep a goroutine.
func (h *SSEHandler) engineServes(r *http.Request) bool {
	return engine.Supported && !engineOff && r.ProtoMajor == 1 && r.TLS == nil
}

// engine returns the handler's engine, starting it if need be; nil when
// the handler is stopping or the engine cannot start.
func (h *SSEHandler) engine() *engine.Engine {
	h.engines.mu.Lock()
	defer h.engines.mu.Unlock()
	if h.engines.eng != nil {
		return h.engines.eng
	}
	select {
	case <-h.stopping():
		return nil
	default:
	}
	eng, err := engine.New(engine.Options{
		MaxQueue:       maxPending,
		WriteTimeout:   writeTimeout,
		Heartbeat:      []byte(": keepalive\n\n"),
		HeartbeatEvery: time.Duration(h.Keepalive),
	})
	if err != nil {
		h.logger.Warn("connection engine unavailable; streams keep a goroutine each", zap.Error(err))
		return nil
	}
	h.engines.eng = eng
	go func() {
		<-h.stopping()
		eng.Shutdown(goodbye, closeGrace)
	}()
	return eng
}

// handOff gives the stream, its opening written, to the engine, and
// reports whether the engine took it; the handler then returns, and the
// stream holds no goroutine and no request state. release frees its place
// under the connection limits when it ends.
func (h *SSEHandler) handOff(w http.ResponseWriter, sub *Subscription, release func()) bool {
	eng := h.engine()
	if eng == nil {
		return false
	}
	nc, _, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return false
	}
	st := &sseStream{h: h, sub: sub, release: release}
	conn, err := eng.Add(nc, st.closed)
	if err != nil {
		// the engine is shutting down (a reload): come back soon
		_ = nc.SetWriteDeadline(time.Now().Add(closeGrace))
		_, _ = nc.Write(goodbye())
		_ = nc.Close()
		sub.Close()
		release()
		return true
	}
	st.conn = conn
	if h.MaxDuration > 0 {
		st.mu.Lock()
		if !st.gone {
			st.timer = time.AfterFunc(jittered(time.Duration(h.MaxDuration)), st.expire)
		}
		st.mu.Unlock()
	}
	sub.Attach(st)
	return true
}

// sseStream is a stream the engine owns: the hub's fan-out writes each
// event's shared encoding straight to its socket.
type sseStream struct {
	h       *SSEHandler
	sub     *Subscription
	release func()
	conn    *engine.Conn // set before Attach

	mu    sync.Mutex
	timer *time.Timer // max_duration
	gone  bool
}

// Deliver writes a live event; a failed write ends the connection, and
// closed then ends the stream.
func (st *sseStream) Deliver(ev *Event) {
	if st.conn.Write(ev.SSE()) == nil {
		st.sub.Delivered(1)
	}
}

// Ended closes the connection the way the hub's reason asks: at once for
// a slow consumer, after a pause block for a pause, after a short retry
// otherwise.
func (st *sseStream) Ended() {
	if st.sub.FellBehind() {
		st.conn.Close()
		return
	}
	if until, ok := st.sub.PausedUntil(); ok {
		st.conn.CloseAfter(appendPause(nil, time.Now(), until), closeGrace)
		return
	}
	st.conn.CloseAfter(goodbye(), closeGrace)
}

// expire ends the stream at max_duration.
func (st *sseStream) expire() {
	if !st.h.expire(st.sub) {
		st.conn.CloseAfter(goodbye(), closeGrace)
	}
}

// closed runs once the connection has ended, for whatever reason.
func (st *sseStream) closed(why error) {
	st.mu.Lock()
	st.gone = true
	if st.timer != nil {
		st.timer.Stop()
	}
	st.mu.Unlock()
	if why == engine.ErrSlow {
		st.sub.CutOff()
	}
	st.sub.Close()
	st.release()
}
