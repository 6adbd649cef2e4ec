package engine

import (
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// An event already waiting is returned even when the deadline has passed,
// so that heartbeat ticks that take longer than their interval cannot
// starve input; with nothing waiting, a deadline ends the wait.
func TestWaitPastDeadline(t *testing.T) {
	p, err := newPoller()
	if err != nil {
		t.Fatal(err)
	}
	defer p.close()
	rc, err := p.file.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	events := make([]unix.EpollEvent, 8)

	start := time.Now()
	if n, err := p.wait(rc, events, start.Add(50*time.Millisecond)); n != 0 || err != nil {
		t.Fatalf("nothing waiting: %d events, %v", n, err)
	}
	if waited := time.Since(start); waited < 40*time.Millisecond {
		t.Fatalf("returned after %v, before its deadline", waited)
	}

	var fds [2]int
	if err := unix.Pipe2(fds[:], unix.O_NONBLOCK|unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fds[0])
	defer unix.Close(fds[1])
	if err := p.add(fds[0], 7, false); err != nil {
		t.Fatal(err)
	}
	if _, err := unix.Write(fds[1], []byte{1}); err != nil {
		t.Fatal(err)
	}
	n, err := p.wait(rc, events, time.Now().Add(-time.Second))
	if n != 1 || err != nil || events[0].Fd != 7 {
		t.Fatalf("past its deadline: %d events (%+v), %v", n, events[:max(n, 0)], err)
	}

	// and a wait with no deadline wakes for an event that comes later
	if _, err := unix.Read(fds[0], make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	// (stopped before the pipe closes, should the wait fail first)
	later := time.AfterFunc(20*time.Millisecond, func() { _, _ = unix.Write(fds[1], []byte{1}) })
	defer later.Stop()
	if n, err := p.wait(rc, events, time.Time{}); n != 1 || err != nil {
		t.Fatalf("woken: %d events, %v", n, err)
	}
}
