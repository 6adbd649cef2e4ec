package main

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"testing/iotest"
	"time"
)

func TestPayloadRoundTrip(t *testing.T) {
	for _, size := range []int{0, 10, 64, 256, 1000} {
		p := appendPayload(nil, 42, 1700000000123456789, size, ' ')
		if len(p) < size || size > 40 && len(p) != size {
			t.Errorf("size %d: got %d bytes", size, len(p))
		}
		seq, nanos, ok := parsePayload(p)
		if !ok || seq != 42 || nanos != 1700000000123456789 {
			t.Errorf("size %d: parsed %d %d %v from %q", size, seq, nanos, ok, p)
		}
	}
	// in a form, '+' is the separator and decodes to a space
	form := appendPayload([]byte("data="), 7, 123, 64, '+')
	v, err := url.ParseQuery(string(form))
	if err != nil {
		t.Fatal(err)
	}
	if seq, nanos, ok := parsePayload([]byte(v.Get("data"))); !ok || seq != 7 || nanos != 123 {
		t.Errorf("form payload %q parsed as %d %d %v", v.Get("data"), seq, nanos, ok)
	}
}

func TestParsePayloadRejects(t *testing.T) {
	for _, p := range []string{"", "x", "1", "1 ", "1 x", " 1 2", "1 2x", "1  2", "12345678901234567890 1"} {
		if _, _, ok := parsePayload([]byte(p)); ok {
			t.Errorf("%q parsed", p)
		}
	}
	if seq, nanos, ok := parsePayload([]byte("3 4")); !ok || seq != 3 || nanos != 4 {
		t.Errorf(`"3 4": %d %d %v`, seq, nanos, ok)
	}
}

func TestJSONData(t *testing.T) {
	frame := []byte(`{"id":"abc-1","topic":"t","data":"1 2 xyz"}`)
	if d, ok := jsonData(frame); !ok || string(d) != "1 2 xyz" {
		t.Errorf("got %q %v", d, ok)
	}
	for _, f := range []string{`{"id":"1"}`, `{"data":"unterminated`} {
		if _, ok := jsonData([]byte(f)); ok {
			t.Errorf("%s: found data", f)
		}
	}
}

// readAll collects what an sseReader dispatches.
func readAll(t *testing.T, r *sseReader) []sseEvent {
	t.Helper()
	var evs []sseEvent
	for {
		ev, err := r.event()
		if err == io.EOF {
			return evs
		}
		if err != nil {
			t.Fatal(err)
		}
		evs = append(evs, sseEvent{ID: bytes.Clone(ev.ID), Type: bytes.Clone(ev.Type), Data: bytes.Clone(ev.Data)})
	}
}

func TestSSEReader(t *testing.T) {
	long := strings.Repeat("x", 300)
	stream := "retry: 3000\nid: 0\n: ok\n\n" + // no data: not dispatched
		"id: 1\nevent: greet\ndata: hello\n\n" +
		"data: a\r\ndata:b\r\rdata: c\r\n\r\n" + // CRLF and CR line ends; no space after the colon
		": comment\nid: 2\ndata: two\ndata: lines\n\n" +
		"data\n\n" + // a field with no colon: empty data
		"id: 3\ndata: " + long + "\n\n" + // longer than the buffer
		"data: unterminated" // dropped at EOF, as a browser does
	want := []sseEvent{
		{ID: []byte("1"), Type: []byte("greet"), Data: []byte("hello")},
		{ID: []byte("1"), Data: []byte("a\nb")},
		{ID: []byte("1"), Data: []byte("c")},
		{ID: []byte("2"), Data: []byte("two\nlines")},
		{ID: []byte("2"), Data: []byte("")},
		{ID: []byte("3"), Data: []byte(long)},
	}
	readers := map[string]func() io.Reader{
		"whole":    func() io.Reader { return strings.NewReader(stream) },
		"one byte": func() io.Reader { return iotest.OneByteReader(strings.NewReader(stream)) },
		"halves":   func() io.Reader { return iotest.HalfReader(strings.NewReader(stream)) },
	}
	for name, rd := range readers {
		t.Run(name, func(t *testing.T) {
			got := readAll(t, newSSEReader(rd(), 64))
			if len(got) != len(want) {
				t.Fatalf("got %d events, want %d: %q", len(got), len(want), got)
			}
			for i := range want {
				if !bytes.Equal(got[i].ID, want[i].ID) || !bytes.Equal(got[i].Type, want[i].Type) || !bytes.Equal(got[i].Data, want[i].Data) {
					t.Errorf("event %d: got id %q type %q data %q, want %q %q %q", i,
						got[i].ID, got[i].Type, got[i].Data, want[i].ID, want[i].Type, want[i].Data)
				}
			}
		})
	}
}

// A steady stream must not allocate per event: 19,000 readers share the
// machine with the server they measure.
func TestSSEReaderDoesNotAllocate(t *testing.T) {
	ev := "id: 1\ndata: " + string(appendPayload(nil, 1, 2, 256, ' ')) + "\n\n"
	r := newSSEReader(&repeatReader{s: ev}, 4096)
	r.event() // grow the data buffer once
	if n := testing.AllocsPerRun(1000, func() {
		if _, err := r.event(); err != nil {
			t.Fatal(err)
		}
	}); n != 0 {
		t.Errorf("%v allocations per event", n)
	}
}

type repeatReader struct {
	s string
	i int
}

func (r *repeatReader) Read(p []byte) (int, error) {
	n := 0
	for n < len(p) {
		c := copy(p[n:], r.s[r.i:])
		n += c
		r.i = (r.i + c) % len(r.s)
	}
	return n, nil
}

// wsFrame builds an unmasked server frame.
func wsFrame(fin bool, op byte, payload []byte) []byte {
	b := []byte{op}
	if fin {
		b[0] |= 0x80
	}
	switch n := len(payload); {
	case n < 126:
		b = append(b, byte(n))
	case n < 1<<16:
		b = append(b, 126, 0, 0)
		binary.BigEndian.PutUint16(b[2:], uint16(n))
	default:
		b = append(b, 127, 0, 0, 0, 0, 0, 0, 0, 0)
		binary.BigEndian.PutUint64(b[2:], uint64(n))
	}
	return append(b, payload...)
}

// writeConn records what the reader writes back (pongs, close).
type writeConn struct {
	net.Conn
	out bytes.Buffer
}

func (c *writeConn) Write(p []byte) (int, error) { return c.out.Write(p) }

func TestWSReader(t *testing.T) {
	mid := bytes.Repeat([]byte("m"), 300)   // 16-bit length
	big := bytes.Repeat([]byte("b"), 70000) // 64-bit length, larger than the buffer
	var in bytes.Buffer
	in.Write(wsFrame(true, 0x1, []byte("small")))
	in.Write(wsFrame(true, 0x9, []byte("ping!"))) // answered, not returned
	in.Write(wsFrame(true, 0x1, mid))
	in.Write(wsFrame(false, 0x1, []byte("frag")))
	in.Write(wsFrame(true, 0xA, nil)) // a control frame between fragments
	in.Write(wsFrame(true, 0x0, []byte("mented")))
	in.Write(wsFrame(true, 0x2, big))
	in.Write(wsFrame(true, 0x8, []byte{0x0f, 0xa8, 'b', 'y', 'e'})) // 4008

	out := new(writeConn)
	r := &wsReader{br: newBufReader(iotest.HalfReader(&in)), conn: out}
	for i, want := range [][]byte{[]byte("small"), mid, []byte("fragmented"), big} {
		got, err := r.next()
		if err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("message %d: got %d bytes %.20q, want %d bytes", i, len(got), got, len(want))
		}
	}
	_, err := r.next()
	var ce wsCloseError
	if !errors.As(err, &ce) || ce.code != 4008 || reason(err) != "ws close 4008" {
		t.Fatalf("got %v, want a 4008 close", err)
	}
	// a masked pong with the ping's payload, then a masked close echoing the code
	want := append([]byte{0x8A, 0x80 | 5, 0, 0, 0, 0}, "ping!"...)
	want = append(want, 0x88, 0x80|2, 0, 0, 0, 0, 0x0f, 0xa8)
	if !bytes.Equal(out.out.Bytes(), want) {
		t.Errorf("wrote %x, want %x", out.out.Bytes(), want)
	}
}

func TestWSReaderRefuses(t *testing.T) {
	for name, frame := range map[string][]byte{
		"masked":    {0x81, 0x80 | 1, 1, 2, 3, 4, 'x'},
		"too large": {0x82, 127, 0, 0, 0, 0, 0x7f, 0, 0, 0},
		"truncated": {0x81, 10, 'x'},
	} {
		r := &wsReader{br: newBufReader(bytes.NewReader(frame)), conn: new(writeConn)}
		if _, err := r.next(); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

func TestWSKey(t *testing.T) {
	key, accept := wsKey()
	if len(key) != 24 || len(accept) != 28 {
		t.Fatalf("key %q accept %q", key, accept)
	}
}

func TestReason(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want string
	}{
		{statusError(503), "503"},
		{stageError{"dial", &net.OpError{Op: "dial", Err: errConnRefused}}, "dial: connection refused"},
		{stageError{"handshake", io.ErrUnexpectedEOF}, "handshake: eof"},
		{io.EOF, "read: eof"},
		{stageError{"handshake", errors.New("bad Sec-WebSocket-Accept")}, "handshake: bad Sec-WebSocket-Accept"},
		{&net.OpError{Op: "read", Err: timeoutError{}}, "timeout"},
	} {
		if got := reason(tc.err); got != tc.want {
			t.Errorf("reason(%v) = %q, want %q", tc.err, got, tc.want)
		}
	}
}

type timeoutError struct{}

func (timeoutError) Error() string { return "i/o timeout" }
func (timeoutError) Timeout() bool { return true }

func TestHistBuckets(t *testing.T) {
	for i := range nBuckets {
		lo, hi := bucketLow(i), bucketHigh(i)
		if bucketIndex(lo) != i || bucketIndex(hi) != i || lo > hi {
			t.Fatalf("bucket %d: [%d, %d] maps to %d and %d", i, lo, hi, bucketIndex(lo), bucketIndex(hi))
		}
		if i > 0 && bucketLow(i) != bucketHigh(i-1)+1 {
			t.Fatalf("bucket %d starts at %d, after %d", i, bucketLow(i), bucketHigh(i-1))
		}
		if i >= subCount && float64(hi-lo+1)/float64(lo) > relError {
			t.Fatalf("bucket %d: [%d, %d] is wider than %v of its values", i, lo, hi, relError)
		}
	}
	if bucketIndex(-5) != 0 || bucketIndex(1<<62) != nBuckets-1 {
		t.Error("out-of-range values are not clamped")
	}
}

func TestHistQuantiles(t *testing.T) {
	h := newHist()
	if h.Quantile(0.5) != 0 || h.Mean() != 0 {
		t.Error("empty histogram")
	}
	// 1 µs .. 1 s, shuffled: the true q-quantile is q × 1e6 µs
	vals := make([]int64, 1_000_000)
	for i := range vals {
		vals[i] = int64(i+1) * 1000
	}
	rand.Shuffle(len(vals), func(i, j int) { vals[i], vals[j] = vals[j], vals[i] })
	var a atomicHist
	for _, v := range vals {
		h.Record(v)
		a.Record(v)
	}
	for _, q := range []float64{0.001, 0.5, 0.9, 0.99, 0.999, 1} {
		exact := int64(q*1e6) * 1000
		got := h.Quantile(q)
		if got < exact || float64(got-exact) > relError*float64(exact) {
			t.Errorf("q %v: got %d, exact %d", q, got, exact)
		}
	}
	if h.Max != 1e9 || h.Quantile(1) != 1e9 || h.Mean() != 500000.5*1000 {
		t.Errorf("max %d, q(1) %d, mean %v", h.Max, h.Quantile(1), h.Mean())
	}

	// the atomic histogram records the same
	b := newHist()
	a.addTo(b)
	if b.Total != h.Total || b.Sum != h.Sum || b.Max != h.Max || !equal(b.Counts, h.Counts) {
		t.Error("atomicHist differs")
	}

	// what came after a snapshot
	old := newHist()
	old.Merge(h)
	h.Record(5 * 1e9)
	h.Record(5 * 1e9)
	d := h.Since(old)
	if d.Total != 2 || d.Quantile(0.5) < 5e9 || float64(d.Quantile(0.5)-5e9) > relError*5e9 || d.Max < 5e9 {
		t.Errorf("since: total %d, p50 %d, max %d", d.Total, d.Quantile(0.5), d.Max)
	}
}

func equal(a, b []uint64) bool { return bytes.Equal(u64bytes(a), u64bytes(b)) }

func u64bytes(v []uint64) []byte {
	b := make([]byte, 0, 8*len(v))
	for _, x := range v {
		b = binary.LittleEndian.AppendUint64(b, x)
	}
	return b
}

func TestBitmap(t *testing.T) {
	var got, want bitmap
	for _, s := range []uint64{1, 2, 3, 64, 65, 1000} {
		want.set(s)
	}
	for _, s := range []uint64{1, 3, 65} {
		if !got.set(s) {
			t.Fatalf("%d not new", s)
		}
	}
	if got.set(3) {
		t.Error("3 new twice")
	}
	if n := got.missingFrom(want); n != 3 {
		t.Errorf("missing %d, want 3", n)
	}
}

func TestPace(t *testing.T) {
	start := time.Now()
	var calls []int
	n := pace(t.Context(), 200, 50, func(i int) { calls = append(calls, i) })
	took := time.Since(start)
	if n != 50 || len(calls) != 50 || calls[49] != 49 {
		t.Fatalf("called %d times: %v", n, calls)
	}
	if took < 200*time.Millisecond || took > 10*time.Second {
		t.Errorf("50 calls at 200/s took %v", took)
	}
}

func TestCentrifugoPush(t *testing.T) {
	for _, tc := range []struct {
		msg   string
		kind  pushKind
		value string
	}{
		{`{"channel":"pb-a-1","pub":{"data":"1 2 xyz","offset":3}}`, pushPub, "1 2 xyz"},
		// spaces, members in another order, nested values before data
		{` { "channel" : "c" , "pub" : { "offset" : 1, "info" : {"user":"u","chan_info":{"a":[1,"}"]}}, "tags":{"k":"v"}, "data" : "1 2 x" } } `, pushPub, "1 2 x"},
		// a channel that looks like a push does not fool it
		{`{"channel":"a\",\"pub\":{\"data\":\"9 9","pub":{"data":"5 6"}}`, pushPub, "5 6"},
		// data that is not a string, or none: malformed deliveries
		{`{"channel":"c","pub":{"data":{"seq":1}}}`, pushPub, `{"seq":1}`},
		{`{"channel":"c","pub":{"offset":2}}`, pushPub, ""},
		{`{}`, pushOther, ""},
		{" {\n} ", pushOther, ""},
		{`{"channel":"c","join":{"info":{"client":"x"}}}`, pushOther, ""},
		{`{"channel":"c","unsubscribe":{"code":2500}}`, pushOther, ""},
		{`{"connect":{"client":"x","subs":{"c":{}},"ping":25}}`, pushConnect, `{"client":"x","subs":{"c":{}},"ping":25}`},
		{`{"disconnect":{"code":3001,"reason":"shutdown"}}`, pushDisconnect, `{"code":3001,"reason":"shutdown"}`},
		{``, pushMalformed, ""},
		{`1 2 xyz`, pushMalformed, ""},
		{`[{}]`, pushMalformed, ""},
		{`{`, pushMalformed, ""},
		{`{"channel":"c"`, pushMalformed, ""},
		{`{"channel":"c",`, pushMalformed, ""},
		{`{"channel" "c"}`, pushMalformed, ""},
		{`{"channel":"c","pub":{"data":"unterminated}}`, pushMalformed, ""},
	} {
		kind, value := parseCentrifugoPush([]byte(tc.msg))
		if kind != tc.kind || string(value) != tc.value {
			t.Errorf("%s: got %d %q, want %d %q", tc.msg, kind, value, tc.kind, tc.value)
		}
	}
	for obj, want := range map[string]int{`{"code":3001,"reason":"shutdown"}`: 3001, `{"reason":"x"}`: 0, `{"code":"3001"}`: 0, `{"code":-1}`: 0} {
		if got := disconnectCode([]byte(obj)); got != want {
			t.Errorf("disconnectCode(%s) = %d, want %d", obj, got, want)
		}
	}
}

func TestAppendJSONString(t *testing.T) {
	for _, s := range []string{"", "pb-abc-1", `a"b\c`, "tab\there\x01\x1f", "ünï"} {
		b := appendJSONString([]byte("x"), s)
		var got string
		if err := json.Unmarshal(b[1:], &got); err != nil || got != s || b[0] != 'x' {
			t.Errorf("%q: %s decodes to %q, %v", s, b, got, err)
		}
	}
}

// centrifugoStreams are the same pushes on uni_sse and on uni_websocket:
// a connect, a ping, publications with a join between them (two pushes on
// the lines of one message, as join_push_messages sends them), a
// publication that is not a payload, then the server shutting down.
func centrifugoStreams(topic string) map[string]func() source {
	connect := `{"connect":{"client":"7e","version":"6.9.1 OSS","subs":{"` + topic + `":{}},"ping":25,"session":"s"}}`
	pub := func(p string) string { return `{"channel":"` + topic + `","pub":{"data":"` + p + `"}}` }
	msgs := []string{
		connect,
		`{}`,
		pub("1 10 abc"),
		pub("2 20 abc") + "\n" + `{"channel":"` + topic + `","join":{"info":{"client":"x"}}}`,
		pub("3 30 abc") + "\n" + pub("4 40 abc"),
		`{"channel":"` + topic + `","pub":{"data":{"not":"a payload"}}}`,
		`{"disconnect":{"code":3001,"reason":"shutdown"}}`,
	}
	var sse strings.Builder
	var ws bytes.Buffer
	sse.WriteString("\r\n") // what uni_sse sends first
	for _, m := range msgs {
		// uni_sse sends every push as an event of its own
		for _, line := range strings.Split(m, "\n") {
			sse.WriteString("data: " + line + "\n\n")
		}
		ws.Write(wsFrame(true, 0x1, []byte(m)))
	}
	return map[string]func() source{
		"sse": func() source {
			return sseSource{newSSEReader(iotest.HalfReader(strings.NewReader(sse.String())), 64)}
		},
		"ws": func() source {
			return &wsReader{br: newBufReader(iotest.HalfReader(bytes.NewReader(ws.Bytes()))), conn: new(writeConn)}
		},
	}
}

func TestCentrifugoSource(t *testing.T) {
	for name, stream := range centrifugoStreams("pb-x-1") {
		t.Run(name, func(t *testing.T) {
			s, err := centrifugoStream(stream(), "pb-x-1")
			if err != nil {
				t.Fatal(err)
			}
			for i := 1; i <= 5; i++ {
				p, err := s.next()
				if err != nil {
					t.Fatalf("payload %d: %v", i, err)
				}
				seq, nanos, ok := parsePayload(p)
				if i == 5 {
					if ok || string(p) != `{"not":"a payload"}` {
						t.Errorf("payload 5: %q parsed %v", p, ok)
					}
					continue
				}
				if !ok || seq != uint64(i) || nanos != int64(10*i) {
					t.Errorf("payload %d: %q parsed as %d %d %v", i, p, seq, nanos, ok)
				}
			}
			_, err = s.next()
			if err != centrifugoDisconnect(3001) || reason(err) != "centrifugo disconnect 3001" {
				t.Errorf("got %v (%q), want the disconnect", err, reason(err))
			}
		})
	}
}

func TestCentrifugoConnect(t *testing.T) {
	// the stream must open with a connect that subscribed the topic
	for name, stream := range centrifugoStreams("pb-x-1") {
		if _, err := centrifugoStream(stream(), "pb-x-2"); err != errNotSubscribed {
			t.Errorf("%s, another topic: got %v", name, err)
		}
	}
	for msg, want := range map[string]string{
		`{"disconnect":{"code":3501,"reason":"bad request"}}`: "centrifugo disconnect 3501",
		`{"channel":"t","pub":{"data":"1 2"}}`:                "handshake: no connect push",
		`{"connect":{"client":"x"}}`:                          "handshake: connected but not subscribed",
	} {
		_, err := centrifugoStream(sseSource{newSSEReader(strings.NewReader("data: "+msg+"\n\n"), 64)}, "t")
		if got := reason(stageError{"handshake", err}); got != want {
			t.Errorf("%s: %q, want %q", msg, got, want)
		}
	}
	if _, err := centrifugoStream(sseSource{newSSEReader(strings.NewReader("\r\n"), 64)}, "t"); err != io.EOF {
		t.Errorf("an empty stream: %v", err)
	}
}

// As with caddy-push and nchan, a steady stream must not allocate.
func TestCentrifugoSourceDoesNotAllocate(t *testing.T) {
	ev := `data: {"channel":"pb-x-1","pub":{"data":"` + string(appendPayload(nil, 1, 2, 256, ' ')) + `","offset":7}}` + "\n\n"
	s := &centrifugoSource{src: sseSource{newSSEReader(&repeatReader{s: ev}, 4096)}}
	s.next()
	if n := testing.AllocsPerRun(1000, func() {
		if p, err := s.next(); err != nil || len(p) != 256 {
			t.Fatal(p, err)
		}
	}); n != 0 {
		t.Errorf("%v allocations per event", n)
	}
}

func TestCentrifugoTarget(t *testing.T) {
	for _, transport := range []string{"sse", "ws"} {
		c, _, err := parseFlags([]string{"-target", "centrifugo", "-addr", "127.0.0.1:8092", "-transport", transport}, io.Discard)
		if err != nil {
			t.Fatal(err)
		}
		tg, err := newTarget(c)
		if err != nil {
			t.Fatal(err)
		}
		ep, err := tg.endpoint(tg.subURL, "pb-x-1", false)
		if err != nil {
			t.Fatal(err)
		}
		u, err := url.ParseRequestURI(ep.requestURI)
		if err != nil {
			t.Fatal(err)
		}
		path := map[string]string{"sse": "/connection/uni_sse", "ws": "/connection/uni_websocket"}[transport]
		if u.Path != path || u.Query().Get("cf_connect") != `{"subs":{"pb-x-1":{}}}` {
			t.Errorf("%s: subscribes with %s", transport, ep.requestURI)
		}
	}
}

// A publish is a server API call with the channel and the payload as JSON.
func TestCentrifugoPublishRequest(t *testing.T) {
	t.Setenv("CENTRIFUGO_API_KEY", "k")
	c, _, err := parseFlags([]string{"-target", "centrifugo", "-addr", "127.0.0.1:8092"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	tg, err := newTarget(c)
	if err != nil {
		t.Fatal(err)
	}
	ep, err := tg.endpoint(tg.pubURL, "pb-x-1", false)
	if err != nil {
		t.Fatal(err)
	}
	var pc pubConn
	pc.request(tg, ep, "pb-x-1", 12, 34, 64)
	req, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(pc.req)))
	if err != nil {
		t.Fatal(err)
	}
	var body struct{ Channel, Data string }
	if err := json.NewDecoder(req.Body).Decode(&body); err != nil {
		t.Fatal(err)
	}
	seq, nanos, ok := parsePayload([]byte(body.Data))
	if req.URL.Path != "/api/publish" || req.Header.Get("Content-Type") != "application/json" ||
		req.Header.Get("X-Centrifugo-Error-Mode") != "transport" || req.Header.Get("X-API-Key") != "k" ||
		body.Channel != "pb-x-1" || len(body.Data) != 64 || !ok || seq != 12 || nanos != 34 {
		t.Errorf("request:\n%s", pc.req)
	}
}
