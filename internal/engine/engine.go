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
	// passed MaxQueue, or it took nothing for WriteTimeout.
	ErrSlow = errors.New("engine: slow consumer")
	// ErrHangup ends a connection whose peer hung up or sent input.
	ErrHangup = errors.New("engine: peer hung up")
	// ErrTimeout ends a connection that read nothing for ReadTimeout.
	ErrTimeout = errors.New("engine: peer silent for too long")
	// ErrWouldBlock is Read's answer when no input is waiting.
	ErrWouldBlock = errors.New("engine: no input waiting")
	// ErrNoDescriptor refuses OnInput for a connection that has no
	// descriptor to poll.
	ErrNoDescriptor = errors.New("engine: connection has no descriptor to poll")
)

// Options configure an Engine.
type Options struct {
	// MaxQueue is how many writes a connection may have waiting while its
	// socket is full; one more ends it with ErrSlow. Default: 1024.
	MaxQueue int
	// WriteTimeout bounds the time a backed-up connection may go without
	// taking any of its queue. Default: 10s.
	WriteTimeout time.Duration
	// Heartbeat is written to each connection that has written nothing
	// for HeartbeatEvery, or to every connection with HeartbeatAlways.
	// Both must be set for heartbeats.
	Heartbeat       []byte
	HeartbeatEvery  time.Duration
	HeartbeatAlways bool
	// ReadTimeout ends, with ErrTimeout, a connection with OnInput that
	// has read nothing for this long. Default: 0 (never).
	ReadTimeout time.Duration
	// Overflow, if set, is what a connection whose queue overflows is
	// told: the queued bytes not yet begun are dropped, Overflow is
	// written in their place (after the rest of those begun, so no
	// message is cut), and the connection ends with ErrSlow once it is
	// sent, or after OverflowGrace (default: 1s). Without it, an
	// overflowing connection ends at once. (A WebSocket close frame.)
	Overflow      []byte
	OverflowGrace time.Duration
}

// Handlers are a connection owner's callbacks.
type Handlers struct {
	// OnInput, if set, is called when the connection is readable, on a
	// goroutine of its own, never twice at once; it reads with Read until
	// ErrWouldBlock. Without it, input or hang-up ends the connection.
	OnInput func(*Conn)
	// OnClose, if set, is called once, on a goroutine of its own, when
	// the connection ends, with the reason: ErrHangup, ErrSlow,
	// ErrTimeout, ErrClosed (Close or the engine's Close), or an I/O error.
	OnClose func(error)
}

// Engine owns connections. Its zero value is not usable: call New.
type Engine struct {
	opts  Options
	p     *poller
	done  chan struct{} // closed when the poller's goroutine has ended
	beats Batch         // a tick's heartbeats (used by the poller's goroutine only)

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
	if opts.OverflowGrace <= 0 {
		opts.OverflowGrace = time.Second
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
	e  *Engine
	id uint64
	nc net.Conn
	fd int // -1: no descriptor to write to directly; every write queues
	h  Handlers

	mu       sync.Mutex
	queue    net.Buffers // waiting bytes, oldest first
	begun    bool        // the first in queue is the rest of a partly written one
	draining bool        // a goroutine is writing the queue
	closeBy  time.Time   // when set: close once the queue is drained, by this time
	closeErr error       // the reason it then ends with: ErrClosed, or ErrSlow after Overflow
	sealed   bool        // Seal was called: no more writes
	wrote    bool        // since the last heartbeat tick
	read     time.Time   // when input last arrived (with OnInput)
	err      error       // why the connection ended; set once
}

// Add takes over nc, which the caller must no longer use.
func (e *Engine) Add(nc net.Conn, h Handlers) (*Conn, error) {
	c := &Conn{e: e, nc: nc, fd: -1, h: h, read: time.Now()}
	if sc, ok := nc.(syscall.Conn); ok {
		if rc, err := sc.SyscallConn(); err == nil {
			_ = rc.Control(func(fd uintptr) { c.fd = int(fd) })
		}
	}
	if h.OnInput != nil && (c.fd < 0 || !Supported) {
		return nil, ErrNoDescriptor
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
	if err := e.p.add(c.fd, c.id, h.OnInput != nil); err != nil {
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
	return c.after(err)
}

// after ends the connection if a write failed, and says how it did.
func (c *Conn) after(err error) error {
	switch err {
	case nil, ErrClosed:
	case errOverflowed:
		err = ErrSlow // the drainer ends it
	default:
		c.end(err)
	}
	return err
}

func (c *Conn) writeLocked(p []byte) error {
	if done, err := c.admitLocked(p); done {
		return err
	}
	return c.writeAdmittedLocked(p)
}

// admitLocked is a write's first half: done when p is refused (the
// connection is ending) or queued behind a drain under way; otherwise p
// is for the socket now.
func (c *Conn) admitLocked(p []byte) (done bool, err error) {
	if c.err != nil || !c.closeBy.IsZero() || c.sealed {
		return true, ErrClosed
	}
	c.wrote = true
	if c.draining {
		if len(c.queue) >= c.e.opts.MaxQueue {
			return true, c.overflowLocked()
		}
		c.queue = append(c.queue, p)
		return true, nil
	}
	return false, nil
}

// writeAdmittedLocked writes an admitted p to the socket, and queues what
// it does not take.
func (c *Conn) writeAdmittedLocked(p []byte) error {
	n, err := c.writeNow(p)
	if err != nil {
		return err
	}
	c.restLocked(p, n)
	return nil
}

// restLocked queues what the socket did not take of p (n bytes of it
// written), and starts the drainer for it.
func (c *Conn) restLocked(p []byte, n int) {
	if n == len(p) {
		return
	}
	c.queue = append(c.queue, p[n:])
	c.begun = n > 0 // the rest of a partial write must go out whole
	c.draining = true
	go c.drain()
}

// overflowLocked ends a connection whose queue is full: at once, or with
// Overflow written in place of what has not begun to go out.
func (c *Conn) overflowLocked() error {
	last := c.e.opts.Overflow
	if last == nil {
		return ErrSlow
	}
	keep := 0
	if c.begun {
		keep = 1
	}
	clear(c.queue[keep:])
	c.queue = append(c.queue[:keep], last)
	c.sealed = true
	c.closeBy = time.Now().Add(c.e.opts.OverflowGrace)
	c.closeErr = ErrSlow
	_ = c.nc.SetWriteDeadline(c.closeBy) // for the write under way
	return errOverflowed
}

// errOverflowed is writeLocked's answer when the connection is ending
// with Overflow: Write reports ErrSlow without ending it yet.
var errOverflowed = errors.New("engine: overflowed")

// maxBatch bounds what the drainer takes from the queue for one write:
// what is left in the queue can still be dropped for Overflow.
const maxBatch = 128 << 10

// batchLen is how many of the queue's first buffers make one write.
func batchLen(q net.Buffers) int {
	k, size := 0, 0
	for k < len(q) && k < 1024 && (k == 0 || size+len(q[k]) <= maxBatch) {
		size += len(q[k])
		k++
	}
	return k
}

// drain writes the queue through Go's poller (which parks this goroutine
// until the socket is writable), a batch at a time, then ends. A client
// that takes its bytes slowly is given the time it needs as long as it
// takes some within each WriteTimeout (MaxQueue bounds how far it may
// fall behind); one that takes nothing for WriteTimeout ends with ErrSlow.
func (c *Conn) drain() {
	var batch, bufs net.Buffers // taken from the queue; bufs is what is left of it to write
	for {
		c.mu.Lock()
		if len(bufs) == 0 {
			clear(batch) // written: let the bytes go
		}
		if c.err != nil || len(bufs) == 0 && len(c.queue) == 0 {
			c.draining = false
			closing, why := !c.closeBy.IsZero(), c.closeErr
			c.mu.Unlock()
			if closing {
				if why == nil {
					why = ErrClosed
				}
				c.end(why)
			}
			return
		}
		if len(bufs) == 0 {
			k := batchLen(c.queue)
			batch, c.queue, c.begun = c.queue[:k:k], c.queue[k:], false
			bufs = batch
		}
		deadline := time.Now().Add(c.e.opts.WriteTimeout)
		closeBy := c.closeBy
		if !closeBy.IsZero() && closeBy.Before(deadline) {
			deadline = closeBy
		}
		// under the lock, so that it cannot undo a closeBy set meanwhile
		_ = c.nc.SetWriteDeadline(deadline)
		c.mu.Unlock()
		n, err := bufs.WriteTo(c.nc) // consumes what it wrote
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				if n > 0 && (closeBy.IsZero() || time.Now().Before(closeBy)) {
					continue // slow, not stalled
				}
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
	if (err == ErrClosed || err == errOverflowed) && c.err == nil {
		err = nil // sealed or closing already: close as asked
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
		c.mu.Lock()
		if c.err == nil {
			_ = c.nc.SetWriteDeadline(c.closeBy)
		}
		c.mu.Unlock()
	}
}

// Seal writes p as the connection's last bytes: later writes are refused.
// The connection stays open, its input read, until Close (a WebSocket
// close frame, sent while waiting for the peer's). It reports false if
// the connection was already sealed or closing.
func (c *Conn) Seal(p []byte) bool {
	c.mu.Lock()
	if c.err != nil || c.sealed || !c.closeBy.IsZero() {
		c.mu.Unlock()
		return false
	}
	err := c.writeLocked(p)
	c.sealed = true
	c.mu.Unlock()
	if err != nil && err != errOverflowed { // overflowed: the drainer ends it
		c.end(err)
	}
	return true
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
		// before the close, and under the lock that writes and reads
		// take: the descriptor's number may be reused at once
		c.e.p.del(c.fd)
		_ = c.nc.Close()
	} else {
		// a conn of its own kind (TLS) may write as it closes
		// (close_notify), and block doing so: never under the lock, nor
		// on the caller's goroutine, which may be the hub's fan-out
		go c.nc.Close()
	}
	c.mu.Unlock()
	c.e.forget(c)
	if c.h.OnClose != nil {
		// its own goroutine: the owner may hold locks the caller of a
		// failing Write holds too
		go c.h.OnClose(why)
	}
}

// Read reads input waiting on the connection, without blocking: it
// returns ErrWouldBlock when there is none, io.EOF when the peer closed.
// Call it from OnInput.
func (c *Conn) Read(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		return 0, ErrClosed
	}
	n, err := c.readNow(p)
	if n > 0 {
		c.read = time.Now()
	}
	return n, err
}

// input runs OnInput, then arms the connection for its next input.
func (c *Conn) input() {
	c.h.OnInput(c)
	c.mu.Lock()
	var err error
	if c.err == nil {
		err = c.e.p.rearm(c.fd, c.id)
	}
	c.mu.Unlock()
	if err != nil {
		c.end(err)
	}
}

// beatSlots spreads heartbeats: each tick beats the connections of one
// slot (by connection number), so a connection still gets one every
// HeartbeatEvery, but 10,000 WebSocket pings (and their 10,000 pongs) do
// not all come in one instant, where they would hold up deliveries.
const beatSlots = 8

// tickEvery is how often the engine's goroutine wakes for heartbeats (of
// one slot) and read timeouts; 0: never.
func (e *Engine) tickEvery() time.Duration {
	var every time.Duration
	if e.beating() {
		every = max(e.opts.HeartbeatEvery/beatSlots, time.Millisecond)
	}
	if rt := e.opts.ReadTimeout / 4; rt > 0 && (every == 0 || rt < every) {
		every = rt
	}
	return every
}

func (e *Engine) beating() bool { return e.opts.HeartbeatEvery > 0 && len(e.opts.Heartbeat) > 0 }

// event handles the poller's news of a connection: input or hang-up.
func (e *Engine) event(id uint64) {
	e.mu.Lock()
	c := e.conns[id]
	e.mu.Unlock()
	switch {
	case c == nil:
	case c.h.OnInput != nil:
		go c.input()
	default:
		c.end(ErrHangup)
	}
}

// tick writes heartbeats to the connections of slot (none when slot is
// negative), and ends connections that have been silent for longer than
// ReadTimeout.
func (e *Engine) tick(slot int) {
	now := time.Now()
	for _, c := range e.snapshot(false) {
		beat := slot >= 0 && c.id%beatSlots == uint64(slot)
		c.mu.Lock()
		idle := !c.wrote || e.opts.HeartbeatAlways
		if beat {
			c.wrote = false
		}
		silent := e.opts.ReadTimeout > 0 && c.h.OnInput != nil && now.Sub(c.read) > e.opts.ReadTimeout
		c.mu.Unlock()
		switch {
		case silent:
			c.end(ErrTimeout)
		case beat && idle:
			e.beats.Add(c, e.opts.Heartbeat, nil)
		}
	}
	e.beats.Flush()
}

// snapshot lists the connections, to act on outside the engine's lock;
// with refuse, the engine takes no new ones from now on.
func (e *Engine) snapshot(refuse bool) []*Conn {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.closed = e.closed || refuse
	conns := make([]*Conn, 0, len(e.conns))
	for _, c := range e.conns {
		conns = append(conns, c)
	}
	return conns
}

// Shutdown ends every connection: each gets last() written, then closes
// once it is sent, or after grace. New connections are refused from now
// on. It returns when all have ended or grace has passed, and stops the
// engine.
func (e *Engine) Shutdown(last func() []byte, grace time.Duration) {
	for _, c := range e.snapshot(true) {
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
	for _, c := range e.snapshot(true) {
		c.Close()
	}
	if e.p.stop() {
		<-e.done
		e.p.close()
	}
}
