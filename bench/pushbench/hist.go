package main

import (
	"math"
	"math/bits"
	"sync/atomic"
)

// The histogram is log-linear, as HdrHistogram's: values below 2^subBits
// nanoseconds have a bucket each, and every power of two above is cut into
// 2^subBits equal buckets, so a bucket's width is at most 1/128 of its
// values: that is the error bound of every percentile. Values are
// nanoseconds; anything from 2^maxBits (about 18 minutes) up shares the
// last bucket.
const (
	subBits  = 7
	subCount = 1 << subBits
	maxBits  = 40
	nBuckets = (maxBits-subBits+1)*subCount + subCount
)

// relError is the largest relative error of a value read back from the
// histogram.
const relError = 1.0 / subCount

func bucketIndex(v int64) int {
	if v < subCount {
		return int(max(v, 0))
	}
	msb := bits.Len64(uint64(v)) - 1
	if msb >= maxBits+1 {
		return nBuckets - 1
	}
	mantissa := int(uint64(v) >> (msb - subBits))
	return (msb-subBits+1)*subCount + mantissa - subCount
}

// bucketLow and bucketHigh are the smallest and largest values that fall
// in bucket i.
func bucketLow(i int) int64 {
	if i < subCount {
		return int64(i)
	}
	group, mantissa := i/subCount, i%subCount+subCount
	return int64(mantissa) << (group - 1)
}

func bucketHigh(i int) int64 {
	if i < subCount {
		return int64(i)
	}
	return bucketLow(i) + int64(1)<<(i/subCount-1) - 1
}

// Hist is a plain histogram: for one goroutine, for snapshots and merges.
type Hist struct {
	Counts []uint64
	Total  uint64
	Sum    int64 // for the mean
	Max    int64
}

func newHist() *Hist { return &Hist{Counts: make([]uint64, nBuckets)} }

// Record adds one value.
func (h *Hist) Record(v int64) {
	h.Counts[bucketIndex(v)]++
	h.Total++
	h.Sum += v
	h.Max = max(h.Max, v)
}

// Merge adds o into h.
func (h *Hist) Merge(o *Hist) {
	for i, c := range o.Counts {
		h.Counts[i] += c
	}
	h.Total += o.Total
	h.Sum += o.Sum
	h.Max = max(h.Max, o.Max)
}

// Since returns what was recorded after the snapshot old of the same
// histogram. Its Max is the top of its highest bucket, as the exact value
// is not known (never above the running maximum).
func (h *Hist) Since(old *Hist) *Hist {
	d := newHist()
	for i := range h.Counts {
		d.Counts[i] = h.Counts[i] - old.Counts[i]
		if d.Counts[i] > 0 {
			d.Max = min(bucketHigh(i), h.Max)
		}
	}
	d.Total = h.Total - old.Total
	d.Sum = h.Sum - old.Sum
	return d
}

// Quantile returns the value at or below which a fraction q of the values
// lie, as the top of its bucket (so never below the true value, and above
// it by less than relError), capped by the maximum.
func (h *Hist) Quantile(q float64) int64 {
	if h.Total == 0 {
		return 0
	}
	rank := uint64(math.Ceil(q * float64(h.Total)))
	rank = min(max(rank, 1), h.Total)
	var seen uint64
	for i, c := range h.Counts {
		seen += c
		if seen >= rank {
			return min(bucketHigh(i), h.Max)
		}
	}
	return h.Max
}

// Mean is the exact mean.
func (h *Hist) Mean() float64 {
	if h.Total == 0 {
		return 0
	}
	return float64(h.Sum) / float64(h.Total)
}

// atomicHist is written by many goroutines at once, without locks.
type atomicHist struct {
	counts [nBuckets]atomic.Uint64
	total  atomic.Uint64
	sum    atomic.Int64
	max    atomic.Int64
}

func (a *atomicHist) Record(v int64) {
	a.counts[bucketIndex(v)].Add(1)
	a.total.Add(1)
	a.sum.Add(v)
	for {
		m := a.max.Load()
		if v <= m || a.max.CompareAndSwap(m, v) {
			return
		}
	}
}

// addTo adds a snapshot of a into h. Concurrent records may be half in,
// which only matters while deliveries still arrive.
func (a *atomicHist) addTo(h *Hist) {
	for i := range a.counts {
		h.Counts[i] += a.counts[i].Load()
	}
	h.Total += a.total.Load()
	h.Sum += a.sum.Load()
	h.Max = max(h.Max, a.max.Load())
}
