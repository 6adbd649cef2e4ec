package push

import (
	"encoding/json"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/gorilla/websocket"

	"github.com/caddy-push/push/internal/engine"
)

var (
	pingFrame         = appendServerFrame(nil, opPing, nil)
	slowConsumerFrame = closeFrame(CloseSlowConsumer, slowConsumerReason)
)

const slowConsumerReason = "slow consumer: reconnect and resume"

func goingAwayFrame() []byte {
	return closeFrame(websocket.CloseGoingAway, "server is reloading or stopping")
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
	st := &wsStream{engineStream: engineStream{sub: sub, release: a.Release}, h: h,
		publish: h.publishTopics(r, a.Grant), id: sub.Member().Connection, limit: newRateLimit(h.PublishRate, h.PublishBurst)}
	st.in.max = h.MaxMessageSize
	c, err := eng.Add(conn.NetConn().(*batchConn).Conn, engine.Handlers{OnInput: st.input, OnClose: st.closed})
	if err != nil {
		return false
	}
	st.conn = c
	for _, frame := range sub.presenceFrames(h.Format) {
		_ = c.Write(appendServerFrame(nil, opText, frame))
	}
	b := sub.Backlog
	sub.Backlog.Events = nil
	if b.Reset != "" {
		_ = c.Write(appendServerFrame(nil, opText, encodeFrame(wsFrame{ID: b.Head, Event: "push.reset", Data: b.Reset})))
	}
	n := 0
	for _, ev := range b.Events {
		if st.Deliver(ev) {
			n++
		}
	}
	sub.Delivered(n)
	st.expireAfter(h.MaxDuration, st.expire)
	sub.Attach(st)
	return true
}

// wsStream is a WebSocket connection the engine owns: the hub's fan-out
// writes each event's shared frame straight to its socket, and its input
// is read when there is some.
type wsStream struct {
	engineStream
	h       *WSHandler
	publish []string
	id      string

	// read by one input goroutine at a time
	in    frameReader
	limit *rateLimit
}

func (st *wsStream) Deliver(ev *Event) bool {
	switch st.conn.Write(ev.wsFrame(st.h.Format, st.sub.Topics)) {
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
	b.Add(st.conn, ev.wsFrame(st.h.Format, st.sub.Topics), count)
}

// Ended closes with the code the hub's reason asks for; a paused client
// first gets the pause frame.
func (st *wsStream) Ended() {
	code, reason, frame := endedWith(st.sub)
	if frame != nil {
		_ = st.conn.Write(appendServerFrame(nil, opText, frame))
	}
	closeWith(st.conn, code, reason)
}

func (st *wsStream) expire() {
	if !st.h.expire(st.sub) {
		closeWith(st.conn, websocket.CloseGoingAway, "max_duration reached: reconnect and resume")
	}
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

// input reads what the client sent: pings, pongs, close, messages. It
// may run before handOff has set st.conn, so it reads c.
func (st *wsStream) input(c *engine.Conn) {
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
			more = st.message(c, op, payload)
			return more
		}); perr != nil {
			closeWith(c, perr.code, perr.reason)
			return
		}
		if !more {
			return
		}
	}
}

// message handles one client frame; false ends reading.
func (st *wsStream) message(c *engine.Conn, op byte, payload []byte) bool {
	switch op {
	case opPing:
		_ = c.Write(appendServerFrame(nil, opPong, payload))
	case opPong:
		// the engine's ReadTimeout counts any input as a sign of life
	case opClose:
		// answer with the same code, then close (RFC 6455 §5.5.1)
		c.CloseAfter(appendServerFrame(nil, opClose, payload[:min(len(payload), 2)]), closeGrace)
		return false
	case opBinary:
		reply(c, "binary messages are not supported")
	case opText:
		switch st.limit.take(time.Now()) {
		case rateExceeded:
			reply(c, "publish rate exceeded: slow down")
		case rateAbused:
			closeWith(c, websocket.ClosePolicyViolation, "publish rate exceeded")
			return false
		default:
			if err := publishFrame(st.h.ctx, st.sub, st.publish, payload); err != nil {
				reply(c, err.Error())
			}
		}
	}
	return true
}

// reply sends an error frame; the connection stays open.
func reply(c *engine.Conn, msg string) {
	frame, _ := json.Marshal(map[string]string{"error": msg})
	_ = c.Write(appendServerFrame(nil, opText, frame))
}

// endedWith says how to close when the hub ended the subscription: the
// close code and reason, and for a pause the frame to send first.
func endedWith(sub *Subscription) (code int, reason string, frame []byte) {
	if sub.Disconnected() {
		return websocket.ClosePolicyViolation, disconnectedReason, nil
	}
	if sub.FellBehind() {
		return CloseSlowConsumer, slowConsumerReason, nil
	}
	if until, ok := sub.PausedUntil(); ok {
		ms := strconv.FormatInt(until.UnixMilli(), 10)
		// the same frame in either format: a pause is not an event, so it has no id
		return CloseTryAgainLater, "paused: come back at " + ms + " (" + until.UTC().Format(time.RFC3339) + ")",
			[]byte(`{"event":"pause","data":"` + ms + `"}`)
	}
	return websocket.CloseServiceRestart, "the hub lost events: reconnect and resume", nil
}
