package push

import (
	"runtime/debug"
	"runtime/metrics"
	"sync"
	"time"
)

// A push server's memory is mostly connections that sit idle for hours.
// Go's heap grows to about twice its live size between collections
// (GOGC=100), and what a burst of work leaves free (a wave of TLS
// handshakes as thousands of browsers connect, a flood of publishes)
// stays with the process: the runtime gives it back to the OS only
// slowly, and only down to the next collection's goal, twice the live
// heap. So after a burst, the process holds about twice what its idle
// connections need, for as long as they stay idle.
//
// The trimmer watches the heap while any hub lives and, when the process
// is quiet and holds much more than it is about to use, collects and
// hands the free heap back (debug.FreeOSMemory). A busy process is
// left alone: what it allocates would take the memory back at once, and
// the collection would cost CPU for nothing.

const (
	// trimEvery is how often the trimmer looks.
	trimEvery = 5 * time.Second
	// trimAtLeast is the least free heap worth a collection to hand back.
	trimAtLeast = 64 << 20
)

// memTrim is the process's trimmer, running while any hub is open.
var memTrim trimmer

type trimmer struct {
	mu    sync.Mutex
	users int
	stop  chan struct{}
	done  chan struct{}
}

// acquire starts the trimmer with its first user.
func (t *trimmer) acquire() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.users++
	if t.users == 1 {
		t.stop, t.done = make(chan struct{}), make(chan struct{})
		go t.run(t.stop, t.done)
	}
}

// release stops the trimmer when its last user is gone, and waits for it.
func (t *trimmer) release() {
	t.mu.Lock()
	t.users--
	if t.users > 0 {
		t.mu.Unlock()
		return
	}
	stop, done := t.stop, t.done
	t.mu.Unlock()
	close(stop)
	<-done
}

func (t *trimmer) run(stop, done chan struct{}) {
	defer close(done)
	tick := time.NewTicker(trimEvery)
	defer tick.Stop()
	samples := []metrics.Sample{
		{Name: "/memory/classes/heap/free:bytes"},    // free, not yet handed back
		{Name: "/memory/classes/heap/objects:bytes"}, // live, and garbage not yet collected
		{Name: "/gc/heap/live:bytes"},                // live at the last collection
		{Name: "/memory/classes/heap/stacks:bytes"},  // goroutine stacks
		{Name: "/gc/scan/stack:bytes"},               // of which in use at the last collection
		{Name: "/gc/heap/allocs:bytes"},              // allocated so far
	}
	v := make([]uint64, len(samples))
	var allocated, floor uint64
	for {
		select {
		case <-stop:
			return
		case <-tick.C:
		}
		metrics.Read(samples)
		for i, s := range samples {
			if s.Value.Kind() == metrics.KindUint64 {
				v[i] = s.Value.Uint64()
			}
		}
		free, objects, live, stacks, stackUsed, total := v[0], v[1], v[2], v[3], v[4], v[5]
		// garbage, free heap, and stacks a collection would shrink (a
		// stack that uses under a quarter of its size is halved; a
		// guess low rather than high: only if all of them do)
		waste := free + objects - min(live, objects) + stacks - min(4*stackUsed, stacks)
		recent := total - allocated
		allocated = total
		if shouldTrim(waste, live, recent) && waste >= floor+trimAtLeast {
			debug.FreeOSMemory()
			metrics.Read(samples[len(samples)-1:])
			allocated = samples[len(samples)-1].Value.Uint64()
			// what a trim could not give back does not call for another
			// until as much again is wasted
			floor = waste
			continue
		}
		floor = min(floor, waste)
	}
}

// shouldTrim decides whether a collection and hand-back pays: the process
// holds much more than its live heap needs (waste), at least a quarter of
// the live heap again, and the last trimEvery allocated less than a
// quarter of it (the process is quiet).
func shouldTrim(waste, live, recent uint64) bool {
	return waste >= trimAtLeast && waste >= live/4 && recent < waste/4
}
