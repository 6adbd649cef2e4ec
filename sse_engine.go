package push

import (
	"net/http"
	"time"

	"github.com/caddy-push/push/internal/engine"
)

// handOff gives the stream, its opening written, to the engine, and
// reports whether the engine took it; the handler then returns, and the
// stream holds no goroutine and no request state. release frees its place
// under the connection limits when it ends.
func (h *SSEHandler) handOff(w http.ResponseWriter, sub *Subscription, release func()) bool {
	eng := h.engines.get(engine.Options{
		MaxQueue:       maxPending,
		WriteTimeout:   writeTimeout(),
		Heartbeat:      []byte(": keepalive\n\n"),
		HeartbeatEvery: time.Duration(h.Keepalive),
	}, h.stopping(), goodbye, h.logger)
	if eng == nil {
		return false
	}
	nc, _, err := hijack(w)
	if err != nil {
		return false
	}
	st := &sseStream{engineStream: engineStream{sub: sub, release: release}, h: h}
	conn, err := eng.Add(nc, engine.Handlers{OnClose: st.closed})
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
	st.expireAfter(h.MaxDuration, st.expire)
	sub.Attach(st)
	return true
}

// sseStream is a stream the engine owns: the hub's fan-out writes each
// event's shared encoding straight to its socket.
type sseStream struct {
	engineStream
	h *SSEHandler
}

// Deliver writes a live event; a failed write ends the connection, and
// closed then ends the stream.
func (st *sseStream) Deliver(ev *Event) bool {
	return st.conn.Write(ev.SSE()) == nil
}

// DeliverInto is Deliver as part of the fan-out's batch of writes.
func (st *sseStream) DeliverInto(b *engine.Batch, ev *Event, count *uint64) {
	b.Add(st.conn, ev.SSE(), count)
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
	if st.sub.Disconnected() {
		st.conn.CloseAfter(disconnectedComment, closeGrace)
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
