// Package engine holds long-lived connections that an HTTP server has let
// go of (hijacked), without a goroutine per connection.
//
// A push server spends its life holding idle connections and, now and
// then, writing the same bytes to thousands of them. Go's usual shape, one
// goroutine per connection parked in a select, costs a stack per idle
// connection and a scheduler wake-up per delivery. Here a connection is a
// small struct instead, and the three things a connection needs are done
// without a goroutine of its own:
//
//   - Writing. Write is called by whoever has the bytes (the hub's fan-out)
//     and writes them to the socket at once with a non-blocking write(2).
//     The bytes are never copied: callers share one immutable encoding of
//     an event among every connection. Only when the socket's buffer is
//     full is the rest queued (a reference, not a copy), and one
//     short-lived goroutine drains the queue through Go's own poller, then
//     ends. A connection whose queue passes MaxQueue, or that takes
//     nothing for WriteTimeout, is closed with ErrSlow; with Overflow set,
//     the first is told so first, in place of the queued bytes not begun.
//
//     A Batch does the same for many connections at once (one event's
//     fan-out): on Linux it hands up to 256 non-blocking sends to the
//     kernel in one io_uring system call, where a system call costs more
//     than the send itself on a virtual machine with page-table
//     isolation. Each connection is held under its lock until the kernel
//     has answered, so its descriptor cannot be closed and reused under a
//     send in flight; without io_uring a Batch is one Write each.
//
//   - Input and hang-up. One epoll instance per Engine watches every
//     connection, and one goroutine waits on it, parked in Go's own
//     poller (where the epoll descriptor is registered) rather than
//     blocked in epoll_wait(2), so that what it starts runs at once. A
//     connection without an OnInput handler (a Server-Sent Events
//     stream, whose client never sends after its request) ends at its
//     first input or hang-up. One with OnInput (a WebSocket) is read
//     when it is readable: OnInput runs on a goroutine that lives only
//     while there is input to read, and the connection is armed again
//     (EPOLLONESHOT) once it returns, so one connection's input is
//     never read by two goroutines at once.
//
//   - Heartbeat and liveness. The same goroutine wakes every
//     HeartbeatEvery and writes Heartbeat to each connection that wrote
//     nothing since the last wake-up (to all of them with
//     HeartbeatAlways, as WebSocket pings need), and ends with ErrTimeout
//     a connection with OnInput that has read nothing for ReadTimeout.
//
// Go's runtime poller keeps its own registration of each socket (its
// descriptor stays non-blocking); epoll interest lists are per instance,
// so both watch the same socket without interfering. A connection is
// removed from the engine's epoll before its socket is closed, and epoll
// events carry a connection number that is never reused, so an event
// that raced a close cannot reach the connection that reuses the
// descriptor.
//
// The engine knows nothing of HTTP, SSE or hubs: its owner hands it a
// connection and bytes. It runs on Linux (Supported); elsewhere New fails
// and callers keep a goroutine per connection.
//
// # Usage
//
// The owner (here an SSE handler) starts one engine, hands it each
// connection once its response has begun, and writes one shared
// encoding to many connections at once:
//
//	eng, err := engine.New(engine.Options{
//		Heartbeat:      []byte(": keepalive\n\n"),
//		HeartbeatEvery: 30 * time.Second,
//	})
//	if err != nil {
//		// not Linux: keep a goroutine per connection
//	}
//	defer eng.Close()
//
//	// once the stream's headers and opening are written
//	nc, _, err := http.NewResponseController(w).Hijack()
//	if err != nil {
//		return err
//	}
//	c, err := eng.Add(nc, engine.Handlers{
//		OnClose: func(why error) { sub.Close() }, // ErrHangup, ErrSlow, ...
//	})
//
//	// an event's fan-out: one encoding, shared, never copied
//	var b engine.Batch
//	for _, c := range conns {
//		b.Add(c, ev.SSE(), nil)
//	}
//	b.Flush()
//
// A connection whose input matters (a WebSocket) reads it in OnInput
// until there is no more:
//
//	c, err := eng.Add(nc, engine.Handlers{
//		OnInput: func(c *engine.Conn) {
//			var buf [4096]byte
//			for {
//				n, err := c.Read(buf[:])
//				if err == engine.ErrWouldBlock {
//					return // called again at the next input
//				}
//				if err != nil {
//					c.Close()
//					return
//				}
//				frames.feed(buf[:n])
//			}
//		},
//		OnClose: closed,
//	})
package engine
