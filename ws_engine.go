package push

import (
	"net/http"
	"sync"
	"time"

	"github.com/gorilla/websocket"

	"github.com/caddy-push/push/internal/engine"
)

var (
	pingFrame         = appendServerFrame(nil, opPing, nil)
	slowConsumerFrame = closeFrame(CloseSlowConsumer, reasonSlowConsumer)
)

func goingAwayFrame() []byte {
	return closeFrame(websocket.CloseGoingAway, reasonGoingAway)
}

// handOff gives an upgraded connection to the engine, and reports whether
// the engine took it; if not, the connection goes on on goroutines.
func (h *WSHandler) handOff(conn *websocket.Conn, sub *Subscription, a *admission, r *http.Request) bool {
	if h.Compression {
		return false // the engine's frames are never compressed
	}
	eng := h.engines.get(engine.Options{
		MaxQueue:        maxPending,
		WriteTimeout:    writeTimeout(),
		Heartbeat:       pingFrame,
		HeartbeatEvery:  time.Duration(h.PingInterval),
		HeartbeatAlways: true, // a ping asks for the pong that proves the client alive
		ReadTimeout:     time.Duration(h.PingInterval + h.PongTimeout),
		// a client too slow for its queue gets 4008 after the frames
		// under way, in place of those not begun: it resumes from there
		Overflow:      slowConsumerFrame,
		OverflowGrace: closeGrace,
	}, h.stopping(), goingAwayFrame, h.logger)
	if eng == nil {
		return false
	}
	st := &wsStream{engineStream: engineStream{sub: sub, release: a.Release}}
	st.session = newWSSession(h, sub, h.rights(r, a), st)
	st.in.max = h.MaxMessageSize
	st.opened.Add(1)
	c, err := eng.Add(conn.NetConn().(*batchConn).Conn, engine.Handlers{OnInput: st.input, OnClose: st.finished})
	if err != nil {
		return false
	}
	st.conn = c
	st.session.open() // a failed write has ended the connection
	st.expireAfter(h.MaxDuration, func() { st.session.expire() })
	sub.Attach(st)
	st.opened.Done()
	return true
}

// wsStream is a WebSocket connection the engine owns: the hub's fan-out
// writes each event's shared frame straight to its socket, and its input
// is read when there is some. It is its session's transport.
type wsStream struct {
	engineStream
	session wsSession
	// done once the connection is open (conn set, the opening written,
	// the sink attached): input may come before Add has returned, and a
	// client message may add a topic, whose backlog must not race the
	// opening's
	opened sync.WaitGroup

	in frameReader // read by one input goroutine at a time
}

func (st *wsStream) Deliver(ev *Event) bool {
	switch st.conn.Write(ev.wsFrame(st.session.h.Format, st.sub.topics())) {
	case nil:
		return true
	case engine.ErrSlow:
		st.sub.CutOff() // its 4008 is on the way
	}
	return false
}

// DeliverInto is Deliver as part of the fan-out's batch of writes; a
// slow consumer is cut off once its close frame is sent (closed).
func (st *wsStream) DeliverInto(b *engine.Batch, ev *Event, count *uint64) {
	b.Add(st.conn, ev.wsFrame(st.session.h.Format, st.sub.topics()), count)
}

// finished runs once the connection has ended: the session's work ends
// before the subscription is given back.
func (st *wsStream) finished(why error) {
	st.session.closed()
	st.closed(why)
}

// Ended closes with the code the hub's reason asks for.
func (st *wsStream) Ended() { st.session.ended() }

func (st *wsStream) writeText(payload []byte) bool {
	return st.conn.Write(appendServerFrame(nil, opText, payload)) == nil
}

func (st *wsStream) writeEvents(events []*Event) bool {
	n := 0
	for _, ev := range events {
		if st.Deliver(ev) {
			n++
		}
	}
	st.sub.Delivered(n)
	return n == len(events)
}

// reply writes the error frame at once: nothing queues it but the
// engine, which bounds the queue.
func (st *wsStream) reply(frame []byte) bool {
	st.writeText(frame)
	return true
}

func (st *wsStream) close(code int, reason string) { closeWith(st.conn, code, reason) }

// held detaches the stream from the fan-out while fn runs: the events
// offered meanwhile wait in the subscription's queue, and Attach writes
// them after fn's writes.
func (st *wsStream) held(fn func() bool) bool {
	st.sub.hold()
	defer st.sub.Attach(st)
	return fn()
}

// closeWith sends a close frame, after which nothing more is written, and
// waits for the client's close frame (closing with unread input would
// reset the connection and lose ours), for a second at most.
func closeWith(c *engine.Conn, code int, reason string) {
	if c.Seal(closeFrame(code, reason)) {
		time.AfterFunc(closeGrace, c.Close)
	}
}

// inputBufs are read buffers, held only while input is read.
var inputBufs = sync.Pool{New: func() any { b := make([]byte, 4096); return &b }}

// input reads what the client sent: pings, pongs, close, messages.
func (st *wsStream) input(c *engine.Conn) {
	st.opened.Wait()
	bp := inputBufs.Get().(*[]byte)
	defer inputBufs.Put(bp)
	for {
		n, err := c.Read(*bp)
		if err == engine.ErrWouldBlock {
			return
		}
		if err != nil {
			c.Close() // the client went away
			return
		}
		more := true
		if perr := st.in.feed((*bp)[:n], func(op byte, payload []byte) bool {
			more = st.frame(c, op, payload)
			return more
		}); perr != nil {
			st.sub.endedFor(hookPolicy)
			closeWith(c, perr.code, perr.reason)
			return
		}
		if !more {
			return
		}
	}
}

// frame handles one client frame; false ends reading. Control frames are
// the transport's (gorilla's, on goroutines); messages the session's.
func (st *wsStream) frame(c *engine.Conn, op byte, payload []byte) bool {
	switch op {
	case opPing:
		_ = c.Write(appendServerFrame(nil, opPong, payload))
	case opPong:
		// the engine's ReadTimeout counts any input as a sign of life
	case opClose:
		// answer with the same code, then close (RFC 6455 §5.5.1)
		c.CloseAfter(appendServerFrame(nil, opClose, payload[:min(len(payload), 2)]), closeGrace)
		return false
	case opText, opBinary:
		return st.session.message(op == opText, payload)
	}
	return true
}
