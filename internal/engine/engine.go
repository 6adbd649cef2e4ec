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
//     ends. A connection whose queue passes MaxQueue, or that cannot drain
//     it within WriteTimeout, is closed with ErrSlow.
//
//   - Hang-up. One epoll instance per Engine watches every connection for
//     input and hang-up, and one goroutine waits on it. The connections
//     this package was made for (Server-Sent Events streams) never send
//     after their request, so input or hang-up ends the connection.
//
//   - Heartbeat. The same goroutine wakes every HeartbeatEvery and writes
//     Heartbeat to each connection that wrote nothing since the last
//     wake-up, so idle streams are seen alive by proxies and clients.
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
package engine

import (
	"errors"
	"net"
	"os"
	"sync"
	"syscall"
	"time"
)

var (
	// ErrClosed is returned by writes to a closed connection.
	ErrClosed = errors.New("engine: connection closed")
	// ErrSlow ends a connection that does not take its bytes: its queue
	// passed MaxQueue, or it could not drain it within WriteTimeout.
	ErrSlow = errors.New("engine: slow consumer")
	// ErrHangup ends a connection whose peer hung up or sent input.
	ErrHangup = errors.New("engine: peer hung up")
)

// Options configure an Engine.
type Options struct {
	// MaxQueue is how many writes a connection may have waiting while its
	// socket is full; one more ends it with ErrSlow. Default: 1024.
	MaxQueue int
	// WriteTimeout bounds the time a backed-up connection may take to
	// drain its queue. Default: 10s.
	WriteTimeout time.Duration
	// Heartbeat is written to each connection that has written nothing
	// for HeartbeatEvery. Both must be set for heartbeats.
	Heartbeat      []byte
	HeartbeatEvery time.Duration
}

// Engine owns connections. Its zero value is not usable: call New.
type Engine struct {
	opts Options
	p    *poller
	done chan struct{} // closed when the poller's goroutine has ended

	mu     sync.Mutex
	conns  map[uint64]*Conn
	nextID uint64
	closed bool
}

// New starts an engine and its one goroutine. Close stops both.
func New(opts Options) (*Engine, error) {
	if opts.MaxQueue <= 0 {
		opts.MaxQueue = 1024
	}
	if opts.WriteTimeout <= 0 {
		opts.WriteTimeout = 10 * time.Second
	}
	p, err := newPoller()
	if err != nil {
		return nil, err
	}
	e := &Engine{opts: opts, p: p, done: make(chan struct{}), conns: make(map[uint64]*Conn)}
	go e.run()
	return e, nil
}

// Conn is a connection owned by an engine.
type Conn struct {
	e       *Engine
	id      uint64
	nc      net.Conn
	fd      int // -1: no descriptor to write to directly; every write queues
	onClose func(error)

	mu       sync.Mutex
	queue    net.Buffers // waiting bytes, oldest first; the first may be partly written
	draining bool        // a goroutine is writing the queue
	closeBy  time.Time   // when set: close once the queue is drained, by this time
	wrote    bool        // since the last heartbeat tick
	err      error       // why the connection ended; set once
}

// Add takes over nc, which the caller must no longer use. onClose, if not
// nil, is called once, on a goroutine of its own, when the connection
// ends, with the reason: ErrHangup, ErrSlow, ErrClosed (Close or the
// engine's Close) or a write error.
func (e *Engine) Add(nc net.Conn, onClose func(error)) (*Conn, error) {
	c := &Conn{e: e, nc: nc, fd: -1, onClose: onClose}
	if sc, ok := nc.(syscall.Conn); ok {
		if rc, err := sc.SyscallConn(); err == nil {
			_ = rc.Control(func(fd uintptr) { c.fd = int(fd) })
		}
	}
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return nil, ErrClosed
	}
	e.nextID++
	c.id = e.nextID
	e.conns[c.id] = c
	e.mu.Unlock()
	if c.fd < 0 {
		// nothing to watch with epoll (a net.Pipe, a wrapped conn): a
		// reader goroutine sees the hang-up instead
		go c.watch()
		return c, nil
	}
	if err := e.p.add(c.fd, c.id); err != nil {
		e.forget(c)
		return nil, err
	}
	return c, nil
}

// watch reads until the peer sends or hangs up, for a conn with no
// descriptor to poll.
func (c *Conn) watch() {
	var b [1]byte
	_, _ = c.nc.Read(b[:])
	c.end(ErrHangup)
}

// Len is the number of connections the engine holds.
func (e *Engine) Len() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return len(e.conns)
}

func (e *Engine) forget(c *Conn) {
	e.mu.Lock()
	delete(e.conns, c.id)
	e.mu.Unlock()
}

// Write sends p now, as far as the socket takes it without blocking, and
// queues the rest. p must not change afterwards: the queue holds it, not
// a copy. An error means the connection has ended (or is ending).
func (c *Conn) Write(p []byte) error {
	c.mu.Lock()
	err := c.writeLocked(p)
	c.mu.Unlock()
	if err != nil && err != ErrClosed {
		c.end(err)
	}
	return err
}

func (c *Conn) writeLocked(p []byte) error {
	if c.err != nil || !c.closeBy.IsZero() {
		return ErrClosed
	}
	c.wrote = true
	if !c.draining {
		n, err := c.writeNow(p)
		if err != nil {
			return err
		}
		if n == len(p) {
			return nil
		}
		p = p[n:]
	} else if len(c.queue) >= c.e.opts.MaxQueue {
		return ErrSlow
	}
	c.queue = append(c.queue, p)
	if !c.draining {
		c.draining = true
		go c.drain()
	}
	return nil
}

// drain writes the queue through Go's poller (which parks this goroutine
// until the socket is writable), then ends.
func (c *Conn) drain() {
	for {
		c.mu.Lock()
		if len(c.queue) == 0 || c.err != nil {
			c.draining = false
			closing := !c.closeBy.IsZero()
			c.mu.Unlock()
			if closing {
				c.end(ErrClosed)
			}
			return
		}
		bufs := c.queue
		c.queue = nil
		deadline := time.Now().Add(c.e.opts.WriteTimeout)
		if !c.closeBy.IsZero() && c.closeBy.Before(deadline) {
			deadline = c.closeBy
		}
		c.mu.Unlock()
		_ = c.nc.SetWriteDeadline(deadline)
		if _, err := bufs.WriteTo(c.nc); err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				err = ErrSlow
			}
			c.end(err)
			return
		}
	}
}

// CloseAfter writes p, if not nil, then closes the connection once
// everything queued is written, or at the latest after within.
func (c *Conn) CloseAfter(p []byte, within time.Duration) {
	c.mu.Lock()
	var err error
	if p != nil {
		err = c.writeLocked(p)
	}
	if c.err == nil && c.closeBy.IsZero() {
		c.closeBy = time.Now().Add(within)
	}
	draining := c.draining
	c.mu.Unlock()
	switch {
	case err != nil && err != ErrClosed:
		c.end(err)
	case !draining:
		c.end(ErrClosed)
	default:
		// the drainer closes it; its write deadline is closeBy at the latest
		_ = c.nc.SetWriteDeadline(time.Now().Add(within))
	}
}

// Close ends the connection now, dropping what is queued.
func (c *Conn) Close() { c.end(ErrClosed) }

// end closes the connection once, with why, and tells its owner.
func (c *Conn) end(why error) {
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return
	}
	c.err = why
	c.queue = nil
	if c.fd >= 0 {
		// before the close: the descriptor's number may be reused at once
		c.e.p.del(c.fd)
	}
	_ = c.nc.Close()
	c.mu.Unlock()
	c.e.forget(c)
	if c.onClose != nil {
		// its own goroutine: the owner may hold locks the caller of a
		// failing Write holds too
		go c.onClose(why)
	}
}

// event handles the poller's news of a connection: input or hang-up.
func (e *Engine) event(id uint64) {
	e.mu.Lock()
	c := e.conns[id]
	e.mu.Unlock()
	if c != nil {
		c.end(ErrHangup)
	}
}

// heartbeat writes the heartbeat to every connection that wrote nothing
// since the last tick.
func (e *Engine) heartbeat() {
	e.mu.Lock()
	conns := make([]*Conn, 0, len(e.conns))
	for _, c := range e.conns {
		conns = append(conns, c)
	}
	e.mu.Unlock()
	for _, c := range conns {
		c.mu.Lock()
		idle := !c.wrote
		c.wrote = false
		c.mu.Unlock()
		if idle {
			_ = c.Write(e.opts.Heartbeat)
		}
	}
}

// Shutdown ends every connection: each gets last() written, then closes
// once it is sent, or after grace. New connections are refused from now
// on. It returns when all have ended or grace has passed, and stops the
// engine.
func (e *Engine) Shutdown(last func() []byte, grace time.Duration) {
	e.mu.Lock()
	e.closed = true
	conns := make([]*Conn, 0, len(e.conns))
	for _, c := range e.conns {
		conns = append(conns, c)
	}
	e.mu.Unlock()
	for _, c := range conns {
		c.CloseAfter(last(), grace)
	}
	deadline := time.Now().Add(grace)
	for e.Len() > 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	e.Close()
}

// Close ends every connection at once and stops the engine's goroutine.
// It is safe to call more than once.
func (e *Engine) Close() {
	e.mu.Lock()
	e.closed = true
	conns := make([]*Conn, 0, len(e.conns))
	for _, c := range e.conns {
		conns = append(conns, c)
	}
	e.mu.Unlock()
	for _, c := range conns {
		c.Close()
	}
	if e.p.stop() {
		<-e.done
		e.p.close()
	}
}
