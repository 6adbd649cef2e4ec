package main

import (
	"context"
	"io"
	"math/bits"
	"sync"
	"sync/atomic"
	"time"
)

// maxSeq bounds the sequence numbers a subscriber tracks (8 MiB of bitmap
// at most), so a garbled payload cannot make it allocate without end.
const maxSeq = 1 << 26

// shard is the counters a group of subscribers share. Subscribers write
// with atomics and spread over shards, so two cores rarely touch the same
// cache line.
type shard struct {
	hist      atomicHist
	unique    atomic.Uint64
	dups      atomic.Uint64
	malformed atomic.Uint64
	_         [64]byte
}

const nShards = 16

// recorder gathers what the steady subscribers receive.
type recorder struct {
	shards      [nShards]shard
	stopping    atomic.Bool
	disconnects reasons // streams that ended before the run did
}

type totals struct {
	hist                    *Hist
	unique, dups, malformed uint64
}

func (r *recorder) totals() totals {
	t := totals{hist: newHist()}
	for i := range r.shards {
		s := &r.shards[i]
		s.hist.addTo(t.hist)
		t.unique += s.unique.Load()
		t.dups += s.dups.Load()
		t.malformed += s.malformed.Load()
	}
	return t
}

// unique is the distinct deliveries so far; cheaper than totals.
func (r *recorder) unique() uint64 {
	var n uint64
	for i := range r.shards {
		n += r.shards[i].unique.Load()
	}
	return n
}

// bitmap is a growable set of sequence numbers.
type bitmap []uint64

// set adds seq and reports whether it was new.
func (b *bitmap) set(seq uint64) bool {
	w := int(seq / 64)
	if w >= len(*b) {
		*b = append(*b, make([]uint64, w+1-len(*b)+len(*b)/2)...)
	}
	bit := uint64(1) << (seq % 64)
	if (*b)[w]&bit != 0 {
		return false
	}
	(*b)[w] |= bit
	return true
}

// missingFrom counts the members of want that b lacks.
func (b bitmap) missingFrom(want bitmap) int {
	n := 0
	for i, w := range want {
		if i < len(b) {
			w &^= b[i]
		}
		n += bits.OnesCount64(w)
	}
	return n
}

// subscriber is one steady connection; only its goroutine touches it
// until the pool has stopped.
type subscriber struct {
	topic int
	conn  io.Closer
	seen  bitmap
}

func (s *subscriber) read(src source, sh *shard, r *recorder) {
	for {
		p, err := src.next()
		if err != nil {
			if !r.stopping.Load() {
				r.disconnects.add(err)
			}
			return
		}
		seq, sent, ok := parsePayload(p)
		if !ok || seq >= maxSeq {
			sh.malformed.Add(1)
			continue
		}
		if s.seen.set(seq) {
			sh.unique.Add(1)
		} else {
			sh.dups.Add(1)
		}
		sh.hist.Record(time.Now().UnixNano() - sent)
	}
}

// pool is the steady subscribers.
type pool struct {
	subs     []*subscriber // nil where the connection failed
	failures reasons
	readers  sync.WaitGroup
	rec      recorder
}

// connect opens n subscribers, subscriber i to topic i mod topics (for a
// -pattern-share of them, through a URI template), at rate per second, and
// returns once every one is open or has failed.
func connect(ctx context.Context, d *dialer, t *target, c *config, topics []string) *pool {
	p := &pool{subs: make([]*subscriber, c.n)}
	var opened sync.WaitGroup
	pace(ctx, c.connectRate, c.n, func(i int) {
		opened.Add(1)
		p.readers.Add(1)
		go func() {
			defer p.readers.Done()
			s := &subscriber{topic: i % len(topics)}
			conn, src, err := open(ctx, d, t, c.transport, selector(topics, i, c.patternShare))
			if err != nil {
				p.failures.add(err)
				opened.Done()
				return
			}
			s.conn = conn
			p.subs[i] = s
			opened.Done()
			s.read(src, &p.rec.shards[i%nShards], &p.rec)
		}()
	})
	opened.Wait()
	return p
}

// perTopic counts the open subscribers of each topic.
func (p *pool) perTopic(topics int) []int {
	n := make([]int, topics)
	for _, s := range p.subs {
		if s != nil {
			n[s.topic]++
		}
	}
	return n
}

func (p *pool) connected() int {
	n := 0
	for _, s := range p.subs {
		if s != nil {
			n++
		}
	}
	return n
}

// stop closes every connection and waits for the readers to end.
func (p *pool) stop() {
	p.rec.stopping.Store(true)
	for _, s := range p.subs {
		if s != nil {
			s.conn.Close()
		}
	}
	p.readers.Wait()
}

// missing counts, after stop, the acknowledged publishes each subscriber
// did not receive.
func (p *pool) missing(acked []bitmap) uint64 {
	var n uint64
	for _, s := range p.subs {
		if s != nil {
			n += uint64(s.seen.missingFrom(acked[s.topic]))
		}
	}
	return n
}

// pace calls fn(i) for i = 0..n-1, spread evenly at rate per second. Each
// tick releases every call that is due, so a late tick (or a slow fn)
// catches up instead of lowering the rate. It returns how many it called.
func pace(ctx context.Context, rate float64, n int, fn func(i int)) int {
	start := time.Now()
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	i := 0
	for {
		due := min(n, int(time.Since(start).Seconds()*rate)+1)
		for ; i < due; i++ {
			fn(i)
		}
		if i >= n {
			return i
		}
		select {
		case <-ctx.Done():
			return i
		case <-tick.C:
		}
	}
}
