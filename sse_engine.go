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
func (h *SSEHandler) handOff(w http.ResponseWriter, s sseSession, release func()) bool {
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
	st := &sseStream{engineStream: engineStream{sub: s.sub, release: release}, session: s}
	st.session.t = st
	conn, err := eng.Add(nc, engine.Handlers{OnClose: st.closed})
	if err != nil {
		// the engine is shutting down (a reload): come back soon
		_ = nc.SetWriteDeadline(time.Now().Add(closeGrace))
		_, _ = nc.Write(goodbye())
		_ = nc.Close()
		s.sub.Close()
		release()
		return true
	}
	st.conn = conn
	st.expireAfter(h.MaxDuration, func() { st.session.expire() })
	s.sub.Attach(st)
	return true
}

// sseStream is a stream the engine owns: the hub's fan-out writes each
// event's shared encoding straight to its socket. It is its session's
// transport.
type sseStream struct {
	engineStream
	session sseSession
}

// Deliver writes a live event; a failed write ends the connection, and
// closed then ends the stream.
func (st *sseStream) Deliver(ev *Event) bool {
	return st.conn.Write(ev.sseFor(st.session.h.hashIDs)) == nil
}

// DeliverInto is Deliver as part of the fan-out's batch of writes.
func (st *sseStream) DeliverInto(b *engine.Batch, ev *Event, count *uint64) {
	b.Add(st.conn, ev.sseFor(st.session.h.hashIDs), count)
}

// Ended ends the stream the way the hub's reason asks.
func (st *sseStream) Ended() { st.session.ended() }

// end closes the connection: at once without last words (a slow
// consumer), once they are sent otherwise.
func (st *sseStream) end(last []byte) {
	if last == nil {
		st.conn.Close()
		return
	}
	st.conn.CloseAfter(last, closeGrace)
}
