package push

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/gorilla/websocket"
)

// clientFrame builds a masked frame as a client sends it.
func maskedFrame(fin bool, op byte, payload []byte) []byte {
	b0 := op
	if fin {
		b0 |= 0x80
	}
	b := []byte{b0}
	switch n := len(payload); {
	case n < 126:
		b = append(b, 0x80|byte(n))
	case n <= 0xFFFF:
		b = append(b, 0x80|126)
		b = binary.BigEndian.AppendUint16(b, uint16(n))
	default:
		b = append(b, 0x80|127)
		b = binary.BigEndian.AppendUint64(b, uint64(n))
	}
	key := []byte{0x12, 0x34, 0x56, 0x78}
	b = append(b, key...)
	for i, c := range payload {
		b = append(b, c^key[i&3])
	}
	return b
}

// readAll feeds input in pieces of the given size and returns what the
// reader emitted, one "op:payload" per message, and its error if any.
func readAll(input []byte, piece int, max int64) ([]string, *protocolError) {
	r := frameReader{max: max}
	var got []string
	for len(input) > 0 {
		n := min(piece, len(input))
		chunk := append([]byte(nil), input[:n]...) // the reader may change its input
		input = input[n:]
		if perr := r.feed(chunk, func(op byte, p []byte) bool {
			got = append(got, fmt.Sprintf("%d:%s", op, p))
			return true
		}); perr != nil {
			return got, perr
		}
	}
	return got, nil
}

func TestFrameReader(t *testing.T) {
	cat := func(frames ...[]byte) []byte { return bytes.Join(frames, nil) }
	big := bytes.Repeat([]byte("b"), 70000)
	for _, tc := range []struct {
		name  string
		input []byte
		want  []string
		code  int
	}{
		{"text", maskedFrame(true, opText, []byte("hello")), []string{"1:hello"}, 0},
		{"empty text", maskedFrame(true, opText, nil), []string{"1:"}, 0},
		{"16-bit length", maskedFrame(true, opText, bytes.Repeat([]byte("a"), 300)), []string{"1:" + string(bytes.Repeat([]byte("a"), 300))}, 0},
		{"binary", maskedFrame(true, opBinary, []byte{0, 1}), []string{"2:\x00\x01"}, 0},
		{"fragments with a ping between", cat(
			maskedFrame(false, opText, []byte("he")),
			maskedFrame(true, opPing, []byte("p")),
			maskedFrame(false, opContinuation, []byte("ll")),
			maskedFrame(true, opContinuation, []byte("o")),
		), []string{"9:p", "1:hello"}, 0},
		{"two messages", cat(maskedFrame(true, opText, []byte("a")), maskedFrame(true, opPong, nil), maskedFrame(true, opText, []byte("b"))),
			[]string{"1:a", "10:", "1:b"}, 0},
		{"close with code", maskedFrame(true, opClose, websocket.FormatCloseMessage(1000, "bye")), []string{"8:\x03\xe8bye"}, 0},
		{"close without code", maskedFrame(true, opClose, nil), []string{"8:"}, 0},

		{"unmasked", appendServerFrame(nil, opText, []byte("x")), nil, websocket.CloseProtocolError},
		{"reserved bit", append([]byte{0xC1}, maskedFrame(true, opText, []byte("x"))[1:]...), nil, websocket.CloseProtocolError},
		{"unknown opcode", maskedFrame(true, 0x3, nil), nil, websocket.CloseProtocolError},
		{"unknown control opcode", maskedFrame(true, 0xB, nil), nil, websocket.CloseProtocolError},
		{"fragmented ping", maskedFrame(false, opPing, nil), nil, websocket.CloseProtocolError},
		{"long ping", maskedFrame(true, opPing, bytes.Repeat([]byte("p"), 126)), nil, websocket.CloseProtocolError},
		{"continuation first", maskedFrame(true, opContinuation, []byte("x")), nil, websocket.CloseProtocolError},
		{"new message mid-message", cat(maskedFrame(false, opText, []byte("a")), maskedFrame(true, opText, []byte("b"))), nil, websocket.CloseProtocolError},
		{"too big", maskedFrame(true, opText, big), nil, websocket.CloseMessageTooBig},
		{"too big in fragments", cat(maskedFrame(false, opText, big[:40000]), maskedFrame(true, opContinuation, big[:40000])), nil, websocket.CloseMessageTooBig},
		{"too big from its header alone", []byte{0x81, 0xFF, 0, 0, 0, 0, 1, 0, 0, 0}, nil, websocket.CloseMessageTooBig},
		{"length top bit", []byte{0x81, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 0}, nil, websocket.CloseProtocolError},
		{"invalid UTF-8", maskedFrame(true, opText, []byte{0xff, 0xfe}), nil, websocket.CloseInvalidFramePayloadData},
		{"invalid UTF-8 across fragments", cat(maskedFrame(false, opText, []byte{0xe2, 0x82}), maskedFrame(true, opContinuation, []byte{0x28})), nil, websocket.CloseInvalidFramePayloadData},
		{"UTF-8 split across fragments", cat(maskedFrame(false, opText, []byte{0xe2, 0x82}), maskedFrame(true, opContinuation, []byte{0xac})), []string{"1:€"}, 0},
		{"close with one byte", maskedFrame(true, opClose, []byte{3}), nil, websocket.CloseProtocolError},
		{"close with a reserved code", maskedFrame(true, opClose, []byte{0x03, 0xED}), nil, websocket.CloseProtocolError},
		{"close reason not UTF-8", maskedFrame(true, opClose, append(websocket.FormatCloseMessage(1000, ""), 0xff)), nil, websocket.CloseInvalidFramePayloadData},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// whole, and cut at every byte boundary
			for _, piece := range []int{len(tc.input) + 1, 1, 2, 3, 7} {
				got, perr := readAll(tc.input, piece, 65536)
				code := 0
				if perr != nil {
					code = perr.code
				}
				if code != tc.code || (tc.code == 0 && fmt.Sprint(got) != fmt.Sprint(tc.want)) {
					t.Fatalf("in pieces of %d: got %q, close %d; want %q, close %d", piece, got, code, tc.want, tc.code)
				}
			}
		})
	}
}

func TestFrameReaderHoldsNothingWhenIdle(t *testing.T) {
	r := frameReader{max: 1 << 16}
	frame := maskedFrame(true, opText, []byte("hello"))
	_ = r.feed(frame[:3], func(byte, []byte) bool { return true })
	if r.partial == nil {
		t.Fatal("a partial frame was not kept")
	}
	_ = r.feed(frame[3:], func(byte, []byte) bool { return true })
	if r.partial != nil || r.msg != nil {
		t.Fatal("the reader holds memory after a whole frame")
	}
}

func TestServerFrameLengths(t *testing.T) {
	for _, n := range []int{0, 125, 126, 65535, 65536} {
		f := appendServerFrame(nil, opText, bytes.Repeat([]byte("x"), n))
		hdr := map[bool]int{true: 2, false: 4}[n < 126]
		if n > 65535 {
			hdr = 10
		}
		if len(f) != hdr+n || f[0] != 0x81 || f[1]&0x80 != 0 {
			t.Errorf("%d bytes: frame of %d with header % x", n, len(f), f[:2])
		}
	}
}

// FuzzFrameReader: no input panics the reader; whatever it emits obeys
// the limits (text is UTF-8, messages within max, control payloads within
// 125 bytes); and input cut in two gives what it gives whole.
func FuzzFrameReader(f *testing.F) {
	f.Add(maskedFrame(true, opText, []byte("hello")), 3)
	f.Add(append(maskedFrame(false, opText, []byte("he")), maskedFrame(true, opContinuation, []byte("llo"))...), 5)
	f.Add(maskedFrame(true, opClose, websocket.FormatCloseMessage(1000, "bye")), 1)
	f.Add([]byte{0x81, 0xFF, 0, 0, 0, 0, 0, 1, 0, 0}, 4)
	f.Fuzz(func(t *testing.T, input []byte, cut int) {
		const max = 1024
		check := func(op byte, p []byte) {
			switch {
			case op == opText && !utf8.Valid(p):
				t.Fatalf("emitted text that is not UTF-8: %q", p)
			case op < opClose && len(p) > max:
				t.Fatalf("emitted a message of %d bytes, over %d", len(p), max)
			case op >= opClose && len(p) > 125:
				t.Fatalf("emitted a control frame of %d bytes", len(p))
			}
		}
		whole, werr := readAll(input, len(input)+1, max)
		if cut <= 0 {
			cut = 1
		}
		split, serr := readAll(input, cut, max)
		if fmt.Sprint(whole) != fmt.Sprint(split) || (werr == nil) != (serr == nil) || werr != nil && werr.code != serr.code {
			t.Fatalf("whole: %q %v; in pieces of %d: %q %v", whole, werr, cut, split, serr)
		}
		r := frameReader{max: max}
		_ = r.feed(append([]byte(nil), input...), func(op byte, p []byte) bool { check(op, p); return true })
	})
}

// FuzzFrameJSON: the hand-written json frame is byte for byte what
// encoding/json writes with SetEscapeHTML(false), for any strings, valid
// UTF-8 or not; and the event's WebSocket frame carries it whole.
func FuzzFrameJSON(f *testing.F) {
	for _, s := range [][4]string{
		{"k3x-1", "t", "", "hello"},
		{"k3x-2", "chat/lobby", "update", `{"a":"<b>&</b>"}`},
		{"", "", "", ""},
		{"x", "\"quoted\"\\", "\b\f\n\r\t", "\x00\x01\x1f\x7f"},
		{"x", "bad \xff utf-8 \xe2\x80", "\u2028\u2029", "é\uFEFF😀"},
		// a topic named as a format: its json frame is not the text one
		{"k3x-3", "text", "", "plain"},
	} {
		f.Add(s[0], s[1], s[2], s[3])
	}
	f.Fuzz(func(t *testing.T, id, topic, typ, data string) {
		fr := wsFrame{ID: id, Topic: topic, Event: typ, Data: data}
		var want bytes.Buffer
		enc := json.NewEncoder(&want)
		enc.SetEscapeHTML(false)
		if err := enc.Encode(fr); err != nil {
			t.Fatal(err)
		}
		got := appendFrameJSON([]byte("prefix"), fr)
		if !bytes.Equal(got[len("prefix"):], bytes.TrimSuffix(want.Bytes(), []byte("\n"))) {
			t.Fatalf("appendFrameJSON(%+v) = %q, encoding/json writes %q", fr, got[len("prefix"):], want.Bytes())
		}
		if topic == "" {
			return
		}
		ev := &Event{Message: Message{Topics: []string{topic}, Type: typ, Data: data}, ID: id}
		fr.Topic = topic
		frame := ev.wsFrame(FormatJSON, []string{topic})
		payload := encodeFrame(fr)
		if !bytes.Equal(frame, appendServerFrame(nil, opText, payload)) || cap(frame) != len(frame) {
			t.Fatalf("wsFrame = %q (cap %d), want the frame of %q, exactly sized", frame, cap(frame), payload)
		}
		if text := ev.wsFrame(FormatText, nil); !bytes.Equal(text, appendServerFrame(nil, opText, []byte(data))) {
			t.Fatalf("text wsFrame = %q, want the frame of %q", text, data)
		}
	})
}

// BenchmarkWSFrame is what an event pays once to become the frame every
// engine-owned WebSocket connection is written.
func BenchmarkWSFrame(b *testing.B) {
	subscribed := []string{"t"}
	data := strings.Repeat("x", 256)
	b.ReportAllocs()
	for range b.N {
		ev := &Event{Message: Message{Topics: []string{"t"}, Data: data}, ID: "abc-1"}
		_ = ev.wsFrame(FormatJSON, subscribed)
	}
}

// BenchmarkWSMessage is what each WebSocket connection pays per delivery
// to get the event's shared, prepared frame (after the first, which
// encodes it): a lock-free lookup, from many writers at once.
func BenchmarkWSMessage(b *testing.B) {
	ev := &Event{Message: Message{Topics: []string{"t"}, Data: "payload"}, ID: "abc-1"}
	subscribed := []string{"t"}
	ev.wsMessage(FormatJSON, subscribed)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			_ = ev.wsMessage(FormatJSON, subscribed)
		}
	})
}
