//go:build !linux

package engine

// Without io_uring, a Batch writes one connection at a time.

const ringEntries = 256

type uring struct{}

func takeRing() *uring                    { return nil }
func giveRing(*uring, bool)               {}
func (*uring) sendAll(sends []send) error { return nil }
