package engine

import (
	"errors"
	"io"
	"os"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Supported reports whether this platform has the engine.
const Supported = true

// poller is one epoll instance, and an eventfd that wakes its goroutine
// to stop. The engine's goroutine does not wait in epoll_wait(2): the
// epoll descriptor is itself registered with Go's own poller (an epoll
// instance is readable while it has events), and the goroutine parks
// there, as a goroutine reading a socket does. A goroutine blocked in a
// system call keeps its processor, and what it starts on waking (a
// connection's input handler) sits on that processor's queue until
// another processor comes free or the runtime's monitor takes this one
// back, which can be 10 ms later when the process is quiet; a goroutine
// parked in Go's poller gives its processor up at once.
type poller struct {
	epfd, wake int
	file       *os.File // epfd, in Go's poller
	stopOnce   sync.Once
}

// wakeID marks the eventfd's events; connections are numbered from 1.
const wakeID = 0

func newPoller() (*poller, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, err
	}
	wake, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		unix.Close(epfd)
		return nil, err
	}
	p := &poller{epfd: epfd, wake: wake}
	if err := p.add(wake, wakeID, false); err != nil {
		p.close()
		return nil, err
	}
	// non-blocking, so that os.NewFile hands it to Go's poller
	if err := unix.SetNonblock(epfd, true); err != nil {
		p.close()
		return nil, err
	}
	p.file = os.NewFile(uintptr(epfd), "engine-epoll")
	return p, nil
}

// add watches fd for input and hang-up, level-triggered: a connection
// without an input handler ends at its first event, so none is left
// unhandled; one with a handler (oneshot) is armed again after reading.
func (p *poller) add(fd int, id uint64, oneshot bool) error {
	ev := epollEvent(id, oneshot)
	return unix.EpollCtl(p.epfd, unix.EPOLL_CTL_ADD, fd, &ev)
}

// rearm watches a oneshot fd for its next input.
func (p *poller) rearm(fd int, id uint64) error {
	ev := epollEvent(id, true)
	return unix.EpollCtl(p.epfd, unix.EPOLL_CTL_MOD, fd, &ev)
}

func epollEvent(id uint64, oneshot bool) unix.EpollEvent {
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP, Fd: int32(uint32(id)), Pad: int32(uint32(id >> 32))}
	if oneshot {
		ev.Events |= unix.EPOLLONESHOT
	}
	return ev
}

func (p *poller) del(fd int) {
	_ = unix.EpollCtl(p.epfd, unix.EPOLL_CTL_DEL, fd, nil)
}

// stop wakes the goroutine for good; it reports false if it was stopped.
func (p *poller) stop() bool {
	stopped := false
	p.stopOnce.Do(func() {
		var one = [8]byte{1}
		_, _ = unix.Write(p.wake, one[:])
		stopped = true
	})
	return stopped
}

func (p *poller) close() {
	unix.Close(p.wake)
	if p.file != nil {
		p.file.Close() // takes it out of Go's poller, and closes epfd
		return
	}
	unix.Close(p.epfd)
}

// wait waits for connection events until deadline (none if zero), and
// returns how many it put in events: 0 at the deadline. Events already
// waiting are returned even when the deadline has passed (Go's poller
// would report the deadline without looking), so that heartbeat ticks
// longer than their interval cannot starve input and hang-ups.
func (p *poller) wait(rc syscall.RawConn, events []unix.EpollEvent, deadline time.Time) (int, error) {
	var n int
	var werr error
	ready := func(uintptr) bool {
		for {
			n, werr = unix.EpollWait(p.epfd, events, 0)
			if werr != unix.EINTR {
				break
			}
		}
		return n > 0 || werr != nil
	}
	if ready(0) || (!deadline.IsZero() && !time.Now().Before(deadline)) {
		return max(n, 0), werr
	}
	if err := p.file.SetReadDeadline(deadline); err != nil {
		return 0, err
	}
	// nothing yet: park in Go's poller until epfd is readable
	err := rc.Read(ready)
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return 0, nil
	}
	if err == nil {
		err = werr
	}
	return max(n, 0), err
}

// run is the engine's one goroutine: it waits for connection events and
// for heartbeat ticks, until stop.
func (e *Engine) run() {
	defer close(e.done)
	events := make([]unix.EpollEvent, 256)
	every := e.tickEvery()
	nextTick := time.Now().Add(every)
	slotEvery := e.opts.HeartbeatEvery / beatSlots
	nextBeat, slot := time.Now().Add(slotEvery), 0
	rc, err := e.p.file.SyscallConn()
	if err != nil {
		return
	}
	for {
		var deadline time.Time
		if every > 0 {
			deadline = nextTick
		}
		n, err := e.p.wait(rc, events, deadline)
		if err != nil {
			return
		}
		for _, ev := range events[:n] {
			id := uint64(uint32(ev.Fd)) | uint64(uint32(ev.Pad))<<32
			if id == wakeID {
				return
			}
			e.event(id)
		}
		if now := time.Now(); every > 0 && !now.Before(nextTick) {
			beat := -1
			if e.beating() && !now.Before(nextBeat) {
				beat, slot = slot, (slot+1)%beatSlots
				nextBeat = now.Add(slotEvery)
			}
			e.tick(beat)
			nextTick = now.Add(every)
		}
	}
}

// writeNow writes what the socket takes without blocking.
func (c *Conn) writeNow(p []byte) (int, error) {
	if c.fd < 0 {
		return 0, nil
	}
	n := 0
	for n < len(p) {
		m, err := unix.Write(c.fd, p[n:])
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			return n, nil
		case err != nil:
			return n, err
		}
		n += m
	}
	return n, nil
}

// readNow reads what is waiting, without blocking.
func (c *Conn) readNow(p []byte) (int, error) {
	for {
		n, err := unix.Read(c.fd, p)
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			return 0, ErrWouldBlock
		case err != nil:
			return 0, err
		case n == 0 && len(p) > 0:
			return 0, io.EOF
		}
		return n, nil
	}
}
