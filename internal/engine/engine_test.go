package engine

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

func newEngine(t testing.TB, opts Options) *Engine {
	t.Helper()
	if !Supported {
		t.Skip("the engine runs on Linux only")
	}
	e, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	return e
}

// pair returns both ends of a loopback TCP connection; the server end's
// send buffer is made small, so tests fill it quickly.
func pair(t testing.TB, ln net.Listener) (server, client net.Conn) {
	t.Helper()
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	server, err = ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	return server, client
}

func listen(t testing.TB) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

func smallBuffers(t testing.TB, server, client net.Conn) {
	t.Helper()
	if err := server.(*net.TCPConn).SetWriteBuffer(4096); err != nil {
		t.Fatal(err)
	}
	if err := client.(*net.TCPConn).SetReadBuffer(4096); err != nil {
		t.Fatal(err)
	}
}

// ended collects the reason a connection ended.
func ended() (func(error), chan error) {
	ch := make(chan error, 1)
	return func(err error) { ch <- err }, ch
}

func waitEnd(t testing.TB, ch chan error, within time.Duration) error {
	t.Helper()
	select {
	case err := <-ch:
		return err
	case <-time.After(within):
		t.Fatalf("connection did not end within %v", within)
		return nil
	}
}

func TestWriteThenHangup(t *testing.T) {
	e := newEngine(t, Options{})
	server, client := pair(t, listen(t))
	onClose, why := ended()
	c, err := e.Add(server, Handlers{OnClose: onClose})
	if err != nil {
		t.Fatal(err)
	}
	msg := []byte("data: hello\n\n")
	if err := c.Write(msg); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(client, got); err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("read %q, %v", got, err)
	}
	client.Close()
	if err := waitEnd(t, why, time.Second); err != ErrHangup {
		t.Fatalf("ended with %v, want ErrHangup", err)
	}
	if err := c.Write(msg); err != ErrClosed {
		t.Fatalf("write after the end: %v, want ErrClosed", err)
	}
	if e.Len() != 0 {
		t.Fatalf("engine still holds %d connections", e.Len())
	}
}

// Input also ends a connection: its peers never send after the request.
func TestInputEndsConnection(t *testing.T) {
	e := newEngine(t, Options{})
	server, client := pair(t, listen(t))
	onClose, why := ended()
	if _, err := e.Add(server, Handlers{OnClose: onClose}); err != nil {
		t.Fatal(err)
	}
	_, _ = client.Write([]byte("GET / HTTP/1.1\r\n\r\n"))
	if err := waitEnd(t, why, time.Second); err != ErrHangup {
		t.Fatalf("ended with %v, want ErrHangup", err)
	}
}

// A reader that stalls, then drains: every byte arrives once, in order,
// however the writes were split between the socket and the queue (the
// reader takes odd sizes, so writes stop at every kind of boundary).
func TestPartialWritesArriveInOrder(t *testing.T) {
	for _, name := range []string{"tcp", "pipe"} {
		t.Run(name, func(t *testing.T) {
			e := newEngine(t, Options{MaxQueue: 100000})
			var server, client net.Conn
			if name == "tcp" {
				server, client = pair(t, listen(t))
				smallBuffers(t, server, client)
			} else {
				server, client = net.Pipe() // no descriptor: every write queues
			}
			c, err := e.Add(server, Handlers{})
			if err != nil {
				t.Fatal(err)
			}
			var want bytes.Buffer
			for i := range 5000 {
				p := []byte(fmt.Sprintf("id: %d\ndata: %s\n\n", i, strings.Repeat("x", i%97)))
				want.Write(p)
				if err := c.Write(p); err != nil {
					t.Fatalf("write %d: %v", i, err)
				}
			}
			if name == "tcp" {
				c.mu.Lock()
				queued := len(c.queue)
				c.mu.Unlock()
				if queued == 0 {
					t.Fatal("nothing was queued: the test did not fill the socket")
				}
			}
			time.Sleep(50 * time.Millisecond) // stalled
			got := make([]byte, 0, want.Len())
			buf := make([]byte, 1500)
			for i := 1; len(got) < want.Len(); i++ {
				_ = client.SetReadDeadline(time.Now().Add(5 * time.Second))
				n, err := client.Read(buf[:1+i%len(buf)])
				if err != nil {
					t.Fatalf("read after %d of %d bytes: %v", len(got), want.Len(), err)
				}
				got = append(got, buf[:n]...)
			}
			if !bytes.Equal(got, want.Bytes()) {
				t.Fatal("bytes arrived out of order or changed")
			}
		})
	}
}

// A client that does not read is cut off when its queue passes MaxQueue,
// and, with a short queue bound out of the way, when it cannot drain
// within WriteTimeout.
func TestSlowConsumerIsCutOff(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts Options
	}{
		{"queue bound", Options{MaxQueue: 8, WriteTimeout: time.Minute}},
		{"write timeout", Options{MaxQueue: 1 << 20, WriteTimeout: 200 * time.Millisecond}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEngine(t, tc.opts)
			server, client := pair(t, listen(t))
			smallBuffers(t, server, client)
			onClose, why := ended()
			c, err := e.Add(server, Handlers{OnClose: onClose})
			if err != nil {
				t.Fatal(err)
			}
			chunk := bytes.Repeat([]byte("x"), 1024)
			start := time.Now()
			for i := 0; i < 10000 && c.Write(chunk) == nil; i++ {
			}
			if err := waitEnd(t, why, 3*time.Second); err != ErrSlow {
				t.Fatalf("ended with %v, want ErrSlow", err)
			}
			if tc.opts.WriteTimeout < time.Second && time.Since(start) < tc.opts.WriteTimeout {
				t.Fatalf("cut off after %v, before the write timeout", time.Since(start))
			}
		})
	}
}

// A connection whose queue overflows is told so with Overflow, written
// after the whole messages that went out (never inside one), then ends
// with ErrSlow; one that takes nothing at all ends after OverflowGrace.
func TestOverflowSendsLastWords(t *testing.T) {
	for _, reads := range []bool{true, false} {
		t.Run(fmt.Sprintf("reads=%v", reads), func(t *testing.T) {
			e := newEngine(t, Options{MaxQueue: 16, WriteTimeout: time.Minute,
				Overflow: []byte("bye\n"), OverflowGrace: 300 * time.Millisecond})
			server, client := pair(t, listen(t))
			smallBuffers(t, server, client)
			onClose, why := ended()
			c, err := e.Add(server, Handlers{OnClose: onClose})
			if err != nil {
				t.Fatal(err)
			}
			n := 0
			for ; n < 100000; n++ {
				// messages of many sizes, so that writes stop mid-message
				msg := fmt.Sprintf("m %d %s\n", n, strings.Repeat("x", 100+n*37%3000))
				if err := c.Write([]byte(msg)); err != nil {
					if err != ErrSlow {
						t.Fatalf("write %d: %v, want ErrSlow", n, err)
					}
					break
				}
			}
			if err := c.Write([]byte("after\n")); err != ErrClosed {
				t.Fatalf("a write after the overflow: %v, want ErrClosed", err)
			}
			start := time.Now()
			if !reads {
				if err := waitEnd(t, why, 3*time.Second); err != ErrSlow {
					t.Fatalf("ended with %v, want ErrSlow", err)
				}
				if d := time.Since(start); d > 2*time.Second {
					t.Fatalf("ended after %v, want about OverflowGrace", d)
				}
				return
			}
			br := bufio.NewReader(client)
			next := 0
			for {
				_ = client.SetReadDeadline(time.Now().Add(5 * time.Second))
				line, err := br.ReadString('\n')
				if err != nil {
					t.Fatalf("after %d messages: %v (no last words)", next, err)
				}
				if line == "bye\n" {
					break
				}
				var i int
				var body string
				if _, err := fmt.Sscanf(line, "m %d %s\n", &i, &body); err != nil || i != next || len(body) != 100+i*37%3000 {
					t.Fatalf("message %d arrived as %.40q...: cut or out of order", next, line)
				}
				next++
			}
			if _, err := br.ReadByte(); err != io.EOF {
				t.Fatalf("after the last words: %v, want EOF", err)
			}
			if err := waitEnd(t, why, time.Second); err != ErrSlow {
				t.Fatalf("ended with %v, want ErrSlow", err)
			}
			if next == 0 || next >= n {
				t.Fatalf("%d of %d messages arrived; want some dropped for the last words", next, n)
			}
		})
	}
}

// A peer that resets the connection while writes are queued ends it with
// an error, and nothing is left behind.
func TestPeerResetMidWrite(t *testing.T) {
	e := newEngine(t, Options{MaxQueue: 1 << 20, WriteTimeout: time.Minute})
	server, client := pair(t, listen(t))
	smallBuffers(t, server, client)
	onClose, why := ended()
	c, err := e.Add(server, Handlers{OnClose: onClose})
	if err != nil {
		t.Fatal(err)
	}
	chunk := bytes.Repeat([]byte("y"), 1024)
	for range 200 {
		_ = c.Write(chunk)
	}
	_ = client.(*net.TCPConn).SetLinger(0) // close sends RST
	client.Close()
	if err := waitEnd(t, why, time.Second); err == nil || err == ErrClosed {
		t.Fatalf("ended with %v, want a hang-up or write error", err)
	}
	if e.Len() != 0 {
		t.Fatalf("engine still holds %d connections", e.Len())
	}
}

func TestHeartbeatOnlyWhenIdle(t *testing.T) {
	e := newEngine(t, Options{Heartbeat: []byte(":\n"), HeartbeatEvery: 100 * time.Millisecond})
	ln := listen(t)
	idleS, idle := pair(t, ln)
	busyS, busy := pair(t, ln)
	_, _ = e.Add(idleS, Handlers{})
	cb, _ := e.Add(busyS, Handlers{})
	stop := time.After(350 * time.Millisecond)
	for loop := true; loop; {
		select {
		case <-stop:
			loop = false
		case <-time.After(20 * time.Millisecond):
			_ = cb.Write([]byte("d\n"))
		}
	}
	read := func(c net.Conn) string {
		_ = c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		b, _ := io.ReadAll(c)
		return string(b)
	}
	if got := read(idle); !strings.HasPrefix(got, ":\n:\n") {
		t.Fatalf("idle connection got %q, want heartbeats", got)
	}
	// once the writes stop it is idle too: look only while it was busy
	if got := read(busy); strings.Contains(got[:strings.LastIndex(got, "d")], ":") {
		t.Fatalf("busy connection got heartbeats: %q", got)
	}
}

// Heartbeats to every connection (WebSocket pings) are spread over the
// interval, a slot of connections at a time, and each connection still
// gets one every HeartbeatEvery.
func TestHeartbeatsSpread(t *testing.T) {
	const every = 800 * time.Millisecond
	e := newEngine(t, Options{Heartbeat: []byte("p"), HeartbeatEvery: every, HeartbeatAlways: true})
	ln := listen(t)
	const n = 2 * beatSlots
	clients := make([]net.Conn, n)
	for i := range clients {
		s, c := pair(t, ln)
		if _, err := e.Add(s, Handlers{}); err != nil {
			t.Fatal(err)
		}
		clients[i] = c
	}
	start := time.Now()
	first := make([]time.Duration, n)
	var wg sync.WaitGroup
	for i, c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = c.SetReadDeadline(time.Now().Add(3 * every))
			b := make([]byte, 1)
			if _, err := io.ReadFull(c, b); err != nil {
				t.Errorf("connection %d: first beat: %v after %v", i, err, time.Since(start))
				return
			}
			first[i] = time.Since(start)
			if _, err := io.ReadFull(c, b); err != nil {
				t.Errorf("connection %d: second beat: %v after %v", i, err, time.Since(start))
				return
			}
			if gap := time.Since(start) - first[i]; gap < every/2 || gap > 2*every {
				t.Errorf("connection %d: beats %v apart, want about %v", i, gap, every)
			}
		}()
	}
	wg.Wait()
	earliest, latest := slices.Min(first), slices.Max(first)
	if latest-earliest < every/2 {
		t.Fatalf("first heartbeats within %v of each other (%v): not spread over %v", latest-earliest, first, every)
	}
}

// Shutdown ends connections in every state (idle, backed up, mid-write)
// within the grace, each after its last bytes where they can be sent.
func TestShutdownEndsEveryConnection(t *testing.T) {
	e := newEngine(t, Options{MaxQueue: 1 << 20, WriteTimeout: time.Minute})
	ln := listen(t)
	idleS, idle := pair(t, ln)
	stuckS, stuck := pair(t, ln)
	smallBuffers(t, stuckS, stuck)
	var whys []chan error
	for _, s := range []net.Conn{idleS, stuckS} {
		onClose, why := ended()
		c, err := e.Add(s, Handlers{OnClose: onClose})
		if err != nil {
			t.Fatal(err)
		}
		whys = append(whys, why)
		if s == stuckS {
			for range 500 {
				_ = c.Write(bytes.Repeat([]byte("z"), 1024))
			}
		}
	}
	start := time.Now()
	e.Shutdown(func() []byte { return []byte("bye\n") }, 300*time.Millisecond)
	if d := time.Since(start); d > time.Second {
		t.Fatalf("shutdown took %v", d)
	}
	for _, why := range whys {
		waitEnd(t, why, time.Second)
	}
	_ = idle.SetReadDeadline(time.Now().Add(time.Second))
	if b, _ := io.ReadAll(idle); string(b) != "bye\n" {
		t.Fatalf("idle connection got %q, want its last bytes then EOF", b)
	}
	if _, err := e.Add(idleS, Handlers{}); err != ErrClosed {
		t.Fatalf("add after shutdown: %v, want ErrClosed", err)
	}
}

// 10,000 connections opened and closed leave no descriptor and no
// goroutine behind: half hang up, half are closed by their owner. The
// clients run in a child process (this test binary again), so both ends
// fit under the per-process limit of open files.
func TestNoLeaks(t *testing.T) {
	if testing.Short() {
		t.Skip("opens 10,000 sockets")
	}
	e := newEngine(t, Options{})
	ln := listen(t)
	runtime.GC()
	fds, goroutines := openFDs(t), runtime.NumGoroutine()
	const n = 10000
	child := exec.Command(os.Args[0], "-test.run=^TestLeakClients$")
	child.Env = append(os.Environ(), "ENGINE_LEAK_ADDR="+ln.Addr().String(), "ENGINE_LEAK_N="+strconv.Itoa(n))
	stdin, _ := child.StdinPipe()
	stdout, _ := child.StdoutPipe()
	child.Stderr = os.Stderr
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	defer child.Process.Kill()
	closed := make(chan error, n)
	conns := make([]*Conn, 0, n)
	for range n {
		s, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		c, err := e.Add(s, Handlers{OnClose: func(err error) { closed <- err }})
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	lines := bufio.NewReader(stdout)
	if l, _ := lines.ReadString('\n'); l != "connected\n" {
		t.Fatalf("child: %q", l)
	}
	if e.Len() != n {
		t.Fatalf("engine holds %d of %d", e.Len(), n)
	}
	_, _ = io.WriteString(stdin, "hangup\n") // the child closes half of its ends
	hungUp := 0
	for hungUp < n/2 {
		if err := waitEnd(t, closed, 5*time.Second); err != ErrHangup {
			t.Fatalf("ended with %v while clients hung up", err)
		}
		hungUp++
	}
	for _, c := range conns {
		c.Close() // the rest, by their owner (a no-op for those gone)
	}
	for range n - hungUp {
		waitEnd(t, closed, 5*time.Second)
	}
	stdin.Close()
	_ = child.Wait()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) && (openFDs(t) > fds || runtime.NumGoroutine() > goroutines) {
		time.Sleep(20 * time.Millisecond)
	}
	if got := openFDs(t); got > fds {
		t.Fatalf("%d descriptors open after, %d before", got, fds)
	}
	if got := runtime.NumGoroutine(); got > goroutines {
		t.Fatalf("%d goroutines after, %d before", got, goroutines)
	}
	if e.Len() != 0 {
		t.Fatalf("engine still holds %d connections", e.Len())
	}
}

// TestLeakClients is TestNoLeaks's child: it dials, says so, closes half
// its connections when told, and the rest when its stdin closes.
func TestLeakClients(t *testing.T) {
	addr := os.Getenv("ENGINE_LEAK_ADDR")
	if addr == "" {
		t.Skip("run by TestNoLeaks")
	}
	n, _ := strconv.Atoi(os.Getenv("ENGINE_LEAK_N"))
	conns := make([]net.Conn, n)
	for i := range conns {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		conns[i] = c
	}
	fmt.Println("connected")
	in := bufio.NewReader(os.Stdin)
	if l, _ := in.ReadString('\n'); l == "hangup\n" {
		for _, c := range conns[:n/2] {
			c.Close()
		}
	}
	_, _ = io.Copy(io.Discard, in)
	for _, c := range conns {
		c.Close()
	}
}

func openFDs(t testing.TB) int {
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skip("no /proc/self/fd")
	}
	return len(entries)
}

// Close stops the engine's goroutine and closes its epoll descriptors.
func TestCloseStopsTheEngine(t *testing.T) {
	if !Supported {
		t.Skip("the engine runs on Linux only")
	}
	fds := openFDs(t)
	e, err := New(Options{Heartbeat: []byte(":\n"), HeartbeatEvery: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	e.Close()
	e.Close()
	select {
	case <-e.done:
	default:
		t.Fatal("the engine's goroutine still runs")
	}
	if got := openFDs(t); got > fds {
		t.Fatalf("%d descriptors open after, %d before", got, fds)
	}
}

// BenchmarkWrite: one event's shared bytes written to N loopback sockets
// whose clients drain them, as the hub's fan-out does; ns/op is per
// delivery, and a delivery allocates nothing.
func BenchmarkWrite(b *testing.B) {
	conns := benchConns(b, 1000)
	event := []byte("id: 1-1\ndata: " + strings.Repeat("x", 240) + "\n\n")
	b.ReportAllocs()
	b.SetBytes(int64(len(event)))
	b.ResetTimer()
	for i := range b.N {
		if err := conns[i%len(conns)].Write(event); err != nil {
			b.Fatal(err)
		}
	}
}

// benchConns gives an engine n loopback connections whose clients drain
// what they get.
func benchConns(b *testing.B, n int) []*Conn {
	e := newEngine(b, Options{MaxQueue: 1 << 20})
	ln := listen(b)
	conns := make([]*Conn, n)
	for i := range conns {
		s, c := pair(b, ln)
		go func() { _, _ = io.Copy(io.Discard, c) }()
		var err error
		if conns[i], err = e.Add(s, Handlers{}); err != nil {
			b.Fatal(err)
		}
	}
	return conns
}

// BenchmarkInputEcho: a client sends a byte, the connection's OnInput
// reads it and writes it back, the client reads it; ns/op is the round
// trip through the engine's input path. In "busy", another goroutine
// keeps a processor busy the whole time, as a fan-out or a collection
// does: what the engine's goroutine starts on an event must still run
// at once.
func BenchmarkInputEcho(b *testing.B) {
	for _, busy := range []bool{false, true} {
		name := "idle"
		if busy {
			name = "busy"
		}
		b.Run(name, func(b *testing.B) {
			e := newEngine(b, Options{MaxQueue: 1 << 20})
			s, c := pair(b, listen(b))
			if _, err := e.Add(s, Handlers{OnInput: func(c *Conn) {
				var buf [64]byte
				for {
					n, err := c.Read(buf[:])
					if err != nil {
						return
					}
					_ = c.Write(buf[:n])
				}
			}}); err != nil {
				b.Fatal(err)
			}
			if busy {
				stop := make(chan struct{})
				done := make(chan struct{})
				go func() {
					defer close(done)
					for x := 0; ; x++ {
						if x%1_000_000 == 0 {
							select {
							case <-stop:
								return
							default:
							}
						}
					}
				}()
				defer func() { close(stop); <-done }()
			}
			var one [1]byte
			b.ResetTimer()
			for range b.N {
				if _, err := c.Write(one[:]); err != nil {
					b.Fatal(err)
				}
				if _, err := io.ReadFull(c, one[:]); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
