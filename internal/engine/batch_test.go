package engine

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"
)

// eachWay runs a test with batches through io_uring and one write at a
// time, the way a kernel without io_uring has them.
func eachWay(t *testing.T, test func(t *testing.T)) {
	for _, ring := range []bool{true, false} {
		name := map[bool]string{true: "ring", false: "writes"}[ring]
		t.Run(name, func(t *testing.T) {
			if ring && Supported {
				if !RingAvailable() {
					if os.Getenv("CI") == "true" {
						t.Fatal("io_uring is not available")
					}
					t.Skip("io_uring is not available")
				}
			}
			SetRing(ring)
			t.Cleanup(func() { SetRing(true) })
			test(t)
		})
	}
}

// Batches to connections that stall, then drain: every byte arrives once,
// in order, however each write was split between the socket and the
// queue (the readers take odd sizes, so writes stop at every kind of
// boundary), also for a connection added twice to one batch.
func TestBatchPartialWritesArriveInOrder(t *testing.T) {
	eachWay(t, func(t *testing.T) {
		e := newEngine(t, Options{MaxQueue: 100000})
		ln := listen(t)
		const n = 4
		conns := make([]*Conn, n)
		clients := make([]net.Conn, n)
		for i := range conns {
			server, client := pair(t, ln)
			smallBuffers(t, server, client)
			var err error
			if conns[i], err = e.Add(server, Handlers{}); err != nil {
				t.Fatal(err)
			}
			clients[i] = client
		}
		var want bytes.Buffer
		var b Batch
		var count uint64
		for i := range 3000 {
			p := []byte(fmt.Sprintf("id: %d\ndata: %s\n\n", i, strings.Repeat("x", i%97)))
			want.Write(p)
			for _, c := range conns {
				b.Add(c, p, &count)
			}
			if i%3 == 2 { // three events per batch: each connection is in it three times
				b.Flush()
			}
		}
		b.Flush()
		if count != 3000*n {
			t.Fatalf("counted %d writes, want %d", count, 3000*n)
		}
		time.Sleep(50 * time.Millisecond) // stalled
		var wg sync.WaitGroup
		for i, client := range clients {
			wg.Add(1)
			go func() {
				defer wg.Done()
				got := make([]byte, 0, want.Len())
				buf := make([]byte, 1500)
				for k := i + 1; len(got) < want.Len(); k++ {
					_ = client.SetReadDeadline(time.Now().Add(5 * time.Second))
					m, err := client.Read(buf[:1+k%len(buf)])
					if err != nil {
						t.Errorf("client %d: read after %d of %d bytes: %v", i, len(got), want.Len(), err)
						return
					}
					got = append(got, buf[:m]...)
				}
				if !bytes.Equal(got, want.Bytes()) {
					t.Errorf("client %d: bytes arrived out of order or changed", i)
				}
			}()
		}
		wg.Wait()
	})
}

// A peer that resets mid-batch ends its own connection only; writes to
// an ended connection are not counted.
func TestBatchPeerReset(t *testing.T) {
	eachWay(t, func(t *testing.T) {
		e := newEngine(t, Options{MaxQueue: 1 << 20, WriteTimeout: time.Minute})
		ln := listen(t)
		s1, reset := pair(t, ln)
		s2, good := pair(t, ln)
		smallBuffers(t, s1, reset)
		onClose, why := ended()
		c1, err := e.Add(s1, Handlers{OnClose: onClose})
		if err != nil {
			t.Fatal(err)
		}
		c2, err := e.Add(s2, Handlers{})
		if err != nil {
			t.Fatal(err)
		}
		var got bytes.Buffer
		done := make(chan struct{})
		go func() { defer close(done); _, _ = io.Copy(&got, good) }()
		chunk := bytes.Repeat([]byte("y"), 1024)
		var b Batch
		var count uint64
		for range 50 {
			b.Add(c1, chunk, nil)
			b.Add(c2, chunk, nil)
			b.Flush()
		}
		_ = reset.(*net.TCPConn).SetLinger(0) // close sends RST
		reset.Close()
		for range 50 {
			b.Add(c1, chunk, &count)
			b.Add(c2, chunk, nil)
			b.Flush()
			time.Sleep(time.Millisecond)
		}
		if err := waitEnd(t, why, time.Second); err == nil || err == ErrClosed {
			t.Fatalf("ended with %v, want a hang-up or write error", err)
		}
		b.Add(c1, chunk, &count)
		b.Flush()
		if count == 51 {
			t.Fatal("writes to the ended connection were all counted")
		}
		c2.CloseAfter(nil, time.Second)
		<-done
		if got.Len() != 100*len(chunk) {
			t.Fatalf("the other connection got %d bytes, want %d", got.Len(), 100*len(chunk))
		}
	})
}

// BenchmarkBatch is BenchmarkWrite through batches of the fan-out's size:
// ns/op is per delivery, and a delivery allocates nothing.
func BenchmarkBatch(b *testing.B) {
	for _, ring := range []bool{true, false} {
		b.Run(map[bool]string{true: "ring", false: "writes"}[ring], func(b *testing.B) {
			SetRing(ring)
			defer SetRing(true)
			conns := benchConns(b, 1000)
			event := []byte("id: 1-1\ndata: " + strings.Repeat("x", 240) + "\n\n")
			var batch Batch
			var count uint64
			b.ReportAllocs()
			b.SetBytes(int64(len(event)))
			b.ResetTimer()
			for i := range b.N {
				batch.Add(conns[i%len(conns)], event, &count)
				if i%len(conns) == len(conns)-1 {
					batch.Flush()
				}
			}
			batch.Flush()
		})
	}
}
