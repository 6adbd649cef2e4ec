package push

import (
	"sync/atomic"
	"time"
)

// A connection is a session over a transport. The session is what the
// protocol says (session_ws.go, session_sse.go): the opening, client
// messages, why and how the connection ends. The transport carries its
// bytes, one of two ways:
//
//   - the connection engine (ws_engine.go, sse_engine.go): cleartext
//     HTTP/1.1 connections on Linux, which leave net/http after their
//     opening; the hub's fan-out writes each event's shared encoding
//     straight to the socket (Sink), and client input is read when there
//     is some.
//   - goroutines of the connection's own (ws_handler.go, sse_handler.go):
//     everywhere else, and with CADDY_PUSH_ENGINE=off; a writer loop
//     takes events in batches (Ready, Take), keeps the heartbeat and
//     max_duration, and selects on the request's and the module's ends.
//
// Live events go from the hub to each transport directly, never through
// these interfaces: what a session says is written once, how each
// transport delivers is kept on its hot path.

// wsTransport carries a WebSocket session's messages.
type wsTransport interface {
	// writeText sends one text message, and reports whether it went.
	writeText(payload []byte) bool
	// writeEvents sends events, each as its shared encoding, counts
	// those delivered, and reports whether all went.
	writeEvents(events []*Event) bool
	// reply sends an answer or an error frame on behalf of the reader of
	// client messages; it reports false when the frame cannot even be
	// queued (a client provoking them faster than they go out).
	reply(frame []byte) bool
	// close sends a close frame, after which nothing more is written, and
	// ends the connection once the client answers, or after closeGrace.
	close(code int, reason string)
	// held runs fn, on behalf of the reader of client messages, where fn
	// may write (writeText, writeEvents), with the subscription's live
	// events held back meanwhile: those offered while fn runs go out
	// after what it wrote. It reports false when the connection is
	// closing or fn did.
	held(fn func() bool) bool
}

// sseTransport carries an SSE session's stream once it is open (the
// opening goes out through net/http either way: sseWriter).
type sseTransport interface {
	// end writes last, if not nil, and ends the stream.
	end(last []byte)
}

// writeTimeout bounds one write to a client: a client that does not read
// for this long is cut off instead of holding a goroutine, or a queue,
// forever.
func writeTimeout() time.Duration {
	if d := writeTimeoutSet.Load(); d > 0 {
		return time.Duration(d)
	}
	return 10 * time.Second
}

// writeTimeoutSet overrides writeTimeout's default, for tests: they cut
// stalled clients off in half a second, not ten. No option sets it (the
// handlers have none for it), and the process-wide value reaches every
// transport, including the engines a handler starts at its first
// connection.
var writeTimeoutSet atomic.Int64

// closeGrace is how long a closing connection waits for the client to
// answer the close frame, or to take its last words.
const closeGrace = time.Second
