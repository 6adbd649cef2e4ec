package engine

import (
	"math"
	"sync/atomic"
)

// Batch gathers writes to many connections (one event's fan-out) and
// hands them to the kernel together: on Linux, up to 256 non-blocking
// sends in one io_uring system call, where Write makes one write(2) per
// connection. On a machine where a system call costs microseconds (a
// virtual machine with page-table isolation), that call is most of what
// a delivery costs.
//
// A Batch keeps Write's promises: each connection gets its bytes in the
// order they were added, what the socket does not take is queued and
// drained as Write does, and a connection that fails ends the same way.
// Its zero value is ready to use; it is not safe for concurrent use.
type Batch struct {
	entries []entry
	sends   []send
	later   []int // entries written one by one, after the batch
	// deferred has the connections of later, once there are any: their
	// next entries must follow them there
	deferred map[*Conn]struct{}
}

type entry struct {
	c     *Conn
	p     []byte
	count *uint64
}

// send is one entry as the ring sees it; res is what the kernel answered.
type send struct {
	fd    int
	p     []byte
	res   int32 // bytes written (0: the socket is full), a negative errno, or notSent
	entry int   // of the batch
}

const notSent = math.MinInt32

// ringOff makes batches write one connection at a time (SetRing).
var ringOff atomic.Bool

// SetRing turns batches' use of io_uring on (the default, where the
// kernel allows it) or off, for the whole process.
func SetRing(on bool) { ringOff.Store(!on) }

// RingAvailable reports whether batches go through io_uring: it is on,
// and the kernel allows it (Linux 5.6 and up, not turned off by
// kernel.io_uring_disabled or a seccomp filter).
func RingAvailable() bool {
	if ringOff.Load() {
		return false
	}
	r := takeRing()
	if r == nil {
		return false
	}
	giveRing(r, false)
	return true
}

// Add writes p to c with the batch's other writes, when the batch is
// flushed (Flush, or Add once the batch is full); p must not change
// afterwards. If count is not nil, it is incremented once p is written
// or queued.
func (b *Batch) Add(c *Conn, p []byte, count *uint64) {
	b.entries = append(b.entries, entry{c: c, p: p, count: count})
	if len(b.entries) >= ringEntries {
		b.Flush()
	}
}

// Flush writes what was added.
func (b *Batch) Flush() {
	if len(b.entries) == 0 {
		return
	}
	var r *uring
	if !ringOff.Load() {
		r = takeRing()
	}
	if r == nil {
		for i := range b.entries {
			e := &b.entries[i]
			e.settle(e.c.Write(e.p))
		}
		b.reset()
		return
	}
	for i := range b.entries {
		e := &b.entries[i]
		c := e.c
		// a connection locked elsewhere (or added twice) is written
		// after the batch, as are its entries after that one: a batch
		// never waits for a lock while it holds others
		if c.fd < 0 || b.isDeferred(c) || !c.mu.TryLock() {
			b.putOff(i)
			continue
		}
		if done, err := c.admitLocked(e.p); done {
			c.mu.Unlock()
			e.settle(c.after(err))
			continue
		}
		// held under its lock until the kernel has answered: its
		// descriptor cannot be closed (and reused) meanwhile
		b.sends = append(b.sends, send{fd: c.fd, p: e.p, entry: i})
	}
	failed := len(b.sends) > 0 && r.sendAll(b.sends) != nil
	giveRing(r, failed)
	for _, sent := range b.sends {
		e := &b.entries[sent.entry]
		c := e.c
		var err error
		if res := sent.res; res >= 0 {
			c.restLocked(e.p, int(res))
		} else {
			// failed or not sent: write(2) tells why, or writes it
			err = c.writeAdmittedLocked(e.p)
		}
		c.mu.Unlock()
		e.settle(c.after(err))
	}
	for _, i := range b.later {
		e := &b.entries[i]
		e.settle(e.c.Write(e.p))
	}
	b.reset()
}

func (b *Batch) reset() {
	clear(b.entries) // let the bytes and connections go
	clear(b.sends)
	clear(b.deferred)
	b.entries, b.sends, b.later = b.entries[:0], b.sends[:0], b.later[:0]
}

func (b *Batch) putOff(i int) {
	b.later = append(b.later, i)
	if b.deferred == nil {
		b.deferred = make(map[*Conn]struct{})
	}
	b.deferred[b.entries[i].c] = struct{}{}
}

func (b *Batch) isDeferred(c *Conn) bool {
	if len(b.later) == 0 {
		return false
	}
	_, ok := b.deferred[c]
	return ok
}

func (e *entry) settle(err error) {
	if err == nil && e.count != nil {
		*e.count++
	}
}
