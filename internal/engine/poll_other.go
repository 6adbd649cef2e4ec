//go:build !linux

package engine

import "errors"

// Supported reports whether this platform has the engine.
const Supported = false

type poller struct{}

func newPoller() (*poller, error) {
	return nil, errors.New("engine: not supported on this platform")
}

func (*poller) add(int, uint64, bool) error {
	return errors.New("engine: not supported on this platform")
}
func (*poller) rearm(int, uint64) error { return errors.New("engine: not supported on this platform") }
func (*poller) del(int)                 {}
func (*poller) stop() bool              { return false }
func (*poller) close()                  {}
func (*Engine) run()                    {}

// writeNow leaves every write to the queue's goroutine.
func (*Conn) writeNow([]byte) (int, error) { return 0, nil }

func (*Conn) readNow([]byte) (int, error) { return 0, ErrWouldBlock }
