package push

import (
	"context"
	"os"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// heapWatch samples the heap while a run goes on, for its peak: what the
// process really needs, which runtime.GC afterwards does not show.
type heapWatch struct {
	stop chan struct{}
	done sync.WaitGroup
	// peak in-use heap objects (HeapAlloc), heap mapped (HeapSys), heap
	// marked live by a collection, and heap goal
	peakAlloc, peakSys, peakLive, peakGoal uint64
}

func watchHeap() *heapWatch {
	w := &heapWatch{stop: make(chan struct{})}
	samples := []metrics.Sample{
		{Name: "/memory/classes/heap/objects:bytes"},
		{Name: "/memory/classes/heap/unused:bytes"},
		{Name: "/memory/classes/heap/free:bytes"},
		{Name: "/memory/classes/heap/released:bytes"},
		{Name: "/gc/heap/live:bytes"},
		{Name: "/gc/heap/goal:bytes"},
	}
	w.done.Add(1)
	go func() {
		defer w.done.Done()
		t := time.NewTicker(time.Millisecond)
		defer t.Stop()
		for {
			metrics.Read(samples)
			alloc := samples[0].Value.Uint64()
			sys := alloc + samples[1].Value.Uint64() + samples[2].Value.Uint64() + samples[3].Value.Uint64()
			w.peakAlloc, w.peakSys = max(w.peakAlloc, alloc), max(w.peakSys, sys)
			w.peakLive = max(w.peakLive, samples[4].Value.Uint64())
			w.peakGoal = max(w.peakGoal, samples[5].Value.Uint64())
			select {
			case <-w.stop:
				return
			case <-t.C:
			}
		}
	}()
	return w
}

func (w *heapWatch) Stop() {
	close(w.stop)
	w.done.Wait()
}

// liveHeap is the heap that survives a full collection.
func liveHeap() uint64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// publishDistinct publishes n events of size bytes, each to a topic of its
// own, with data of its own as a decoded request body would have.
func publishDistinct(tb testing.TB, h *Hub, n, size, publisher int) {
	ctx := context.Background()
	buf := make([]byte, size)
	for i := range buf {
		buf[i] = 'a' + byte(i%26)
	}
	for i := range n {
		copy(buf, strconv.Itoa(i))
		m := Message{Topics: []string{"topic/" + strconv.Itoa(publisher) + "/" + strconv.Itoa(i)}, Data: string(buf)}
		if _, err := h.Publish(ctx, m); err != nil {
			tb.Error(err)
			return
		}
	}
}

// openEncodingHub is openHub with every event encoded for SSE and
// WebSocket as it is delivered, as subscribers of both would have it.
func openEncodingHub(t testing.TB, limits HistoryLimits) *Hub {
	t.Helper()
	h := newHub("test")
	b, err := MemoryBroker{}.OpenBroker(BrokerOptions{Hub: "test", History: limits, Deliver: func(ev *Event) {
		ev.SSE()
		ev.wsMessage(FormatText, nil)
		h.deliver(ev)
	}})
	if err != nil {
		t.Fatal(err)
	}
	h.broker = b
	t.Cleanup(func() { _ = h.Destruct() })
	return h
}

func defaultLimits() HistoryLimits {
	return HistoryLimits{Events: DefaultHistory, TTL: DefaultHistoryTTL, MaxBytes: DefaultHistoryMaxBytes}
}

// TestHistoryMemoryReport prints the heap of 100,000 publishes of 2 KiB to
// distinct topics under the default limits: on a hub of its own
// (PUSH_MEMORY_REPORT=hub), with the events encoded as subscribers would
// have them (PUSH_MEMORY_ENCODE=1), or on a real Caddy's default hub
// (PUSH_MEMORY_REPORT=caddy); from PUSH_MEMORY_PUBLISHERS goroutines, and
// with an in-use heap profile written to PUSH_MEMORY_PROFILE. Run it alone:
//
//	PUSH_MEMORY_REPORT=hub PUSH_MEMORY_ENCODE=1 go test -run TestHistoryMemoryReport -v .
func TestHistoryMemoryReport(t *testing.T) {
	mode := os.Getenv("PUSH_MEMORY_REPORT")
	if mode == "" {
		t.Skip("set PUSH_MEMORY_REPORT=hub or caddy to run")
	}
	var h *Hub
	if mode == "caddy" {
		startCaddy(t, "http://127.0.0.1:PORT {\n\tpush_publish /publish {\n\t\tanonymous\n\t}\n}")
		h, _ = LookupHub(DefaultHub)
	} else if os.Getenv("PUSH_MEMORY_ENCODE") != "" {
		h = openEncodingHub(t, defaultLimits())
	} else {
		h = openHub(t, defaultLimits())
	}
	publishers, _ := strconv.Atoi(os.Getenv("PUSH_MEMORY_PUBLISHERS"))
	publishers = max(publishers, 1)
	base := liveHeap()
	w := watchHeap()
	start := time.Now()
	var wg sync.WaitGroup
	for p := range publishers {
		wg.Go(func() { publishDistinct(t, h, 100_000/publishers, 2048, p) })
	}
	wg.Wait()
	took := time.Since(start)
	w.Stop()
	live := liveHeap()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	m := h.broker.(*memoryStore)
	m.mu.Lock()
	retained, accounted, topics := m.live, m.bytes, len(m.topics)
	m.mu.Unlock()
	t.Logf("took %v, %d GCs, memory limit %d", took, ms.NumGC, debug.SetMemoryLimit(-1))
	t.Logf("retained %d events, %d topics, accounted %.1f MB", retained, topics, float64(accounted)/1e6)
	t.Logf("live heap after GC %.1f MB (%.1f MB above the start)", float64(live)/1e6, float64(int64(live)-int64(base))/1e6)
	t.Logf("peak HeapAlloc %.1f MB, peak HeapSys %.1f MB, total allocated %.1f MB",
		float64(w.peakAlloc)/1e6, float64(w.peakSys)/1e6, float64(ms.TotalAlloc)/1e6)
	t.Logf("peak marked live %.1f MB, peak heap goal %.1f MB", float64(w.peakLive)/1e6, float64(w.peakGoal)/1e6)
	if b, err := os.ReadFile("/proc/self/status"); err == nil {
		for l := range strings.Lines(string(b)) {
			if strings.HasPrefix(l, "VmRSS") || strings.HasPrefix(l, "VmHWM") {
				t.Log(strings.TrimSpace(l))
			}
		}
	}
	if path := os.Getenv("PUSH_MEMORY_PROFILE"); path != "" {
		f, err := os.Create(path)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if err := pprof.Lookup("heap").WriteTo(f, 0); err != nil {
			t.Fatal(err)
		}
	}
	runtime.KeepAlive(h)
}

// BenchmarkPublishDistinct publishes 2 KiB events, each to a topic of its
// own, under the default history limits.
func BenchmarkPublishDistinct(b *testing.B) {
	h := openHub(b, defaultLimits())
	b.ReportAllocs()
	b.ResetTimer()
	publishDistinct(b, h, b.N, 2048, 0)
}

// A topic whose history empties is forgotten at once, so entries never
// outnumber retained events; a client resuming on it from before what it
// dropped still gets a reset, even after the topic comes back.
func TestHistoryForgetsEmptiedTopics(t *testing.T) {
	h := openHub(t, HistoryLimits{Events: 10, MaxBytes: 100 << 10})
	m := h.broker.(*memoryStore)
	data := string(make([]byte, 1000))
	ids := make([]string, 200)
	for i := range ids {
		ids[i] = mustPublish(t, h, data, "topic/"+strconv.Itoa(i))
	}
	if len(m.topics) != m.live || m.bytes > m.limits.MaxBytes || m.live < 10 {
		t.Fatalf("%d topics for %d events, %d bytes", len(m.topics), m.live, m.bytes)
	}
	oldest := len(ids) - m.live // topic/oldest holds the oldest retained event
	if s := mustSubscribe(t, h, ids[oldest-2], "topic/"+strconv.Itoa(oldest-1)); s.Backlog.Reset == "" {
		t.Fatal("no reset for an evicted topic's event")
	}
	if s := mustSubscribe(t, h, ids[oldest-1], "topic/"+strconv.Itoa(oldest)); s.Backlog.Reset != "" || len(s.Backlog.Events) != 1 {
		t.Fatalf("retained topic: %+v", s.Backlog)
	}
	// an evicted topic published to again keeps what it dropped
	mustPublish(t, h, "again", "topic/0")
	if s := mustSubscribe(t, h, FormatID(m.epoch, 0), "topic/0"); s.Backlog.Reset == "" {
		t.Fatal("no reset for a topic that came back")
	}
	// history 0 keeps no entry per topic
	h.broker.SetHistory(HistoryLimits{Events: 0})
	for i := range 100 {
		mustPublish(t, h, "x", "other/"+strconv.Itoa(i))
	}
	if len(m.topics) != 0 || m.live != 0 || m.bytes != 0 || len(m.log) > 64 {
		t.Fatalf("history 0 keeps %d topics, %d events, %d bytes, log %d", len(m.topics), m.live, m.bytes, len(m.log))
	}
}

// history_max_bytes bounds the real memory of the history, encodings
// included, however many distinct topics it has seen.
func TestHistoryMemoryBounded(t *testing.T) {
	if testing.Short() {
		t.Skip("publishes 100 MB")
	}
	limits := defaultLimits()
	limits.MaxBytes = 16 << 20
	h := openEncodingHub(t, limits)
	base := liveHeap()
	publishDistinct(t, h, 20_000, 2048, 0)
	grew := int64(liveHeap()) - int64(base)
	m := h.broker.(*memoryStore)
	t.Logf("%d events, %d topics, accounted %d bytes, hold %d bytes of heap", m.live, len(m.topics), m.bytes, grew)
	if grew > limits.MaxBytes {
		t.Errorf("history holds %d bytes of heap, over history_max_bytes %d", grew, limits.MaxBytes)
	}
}
