package push

import (
	"bytes"
	"encoding/json"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"
)

// normalizeNewlines is what an SSE client makes of a payload: every line
// terminator (CRLF, LF, CR) becomes LF, as SSE cannot carry a bare CR.
func normalizeNewlines(s string) string {
	return strings.NewReplacer("\r\n", "\n", "\r", "\n").Replace(s)
}

// decodeSSE parses one encoded event as a browser would and returns every
// item the stream carried.
func decodeSSE(t testing.TB, wire []byte) []sseItem {
	t.Helper()
	var items []sseItem
	// the stream ends at EOF, which parseSSE reports; a complete event
	// has already been dispatched by then
	_ = parseSSE(bytes.NewReader(wire), func(it sseItem) bool {
		items = append(items, it)
		return true
	})
	return items
}

// assertRoundTrip checks that wire parses back as exactly one event with
// the given fields, and nothing else but the id and retry fields.
func assertRoundTrip(t testing.TB, wire []byte, id, typ, data string, retry int64) {
	t.Helper()
	wantType := typ
	if wantType == "" {
		wantType = "message"
	}
	want := sseEvent{ID: id, Type: wantType, Data: normalizeNewlines(data), Retry: int(max(retry, 0))}
	var events []sseEvent
	var ids, retries int
	for _, it := range decodeSSE(t, wire) {
		switch {
		case it.Event != nil:
			events = append(events, *it.Event)
		case it.ID != "":
			ids++
		case it.Retry != 0:
			retries++
		default:
			t.Errorf("unexpected item %+v in %q", it, wire)
		}
	}
	if len(events) != 1 {
		t.Fatalf("%q parses as %d events %+v, want 1", wire, len(events), events)
	}
	if events[0] != want {
		t.Errorf("%q parses as\n %+v\nwant\n %+v", wire, events[0], want)
	}
	if wantIDs := min(len(id), 1); ids != wantIDs {
		t.Errorf("%q has %d id fields, want %d", wire, ids, wantIDs)
	}
	if wantRetries := min(max(retry, 0), 1); int64(retries) != wantRetries {
		t.Errorf("%q has %d retry fields, want %d", wire, retries, wantRetries)
	}
}

func TestEventSSERoundTrip(t *testing.T) {
	for _, tc := range []struct {
		name  string
		id    string
		typ   string
		data  string
		retry int64
	}{
		{name: "plain", id: "k3x-1", data: "hello"},
		{name: "with type", id: "k3x-2", typ: "update", data: "hello"},
		{name: "with retry", id: "k3x-3", data: "hello", retry: 1500},
		{name: "no id", typ: "tick", data: "12:00:00"},
		{name: "empty data still dispatches", id: "k3x-4", data: ""},
		{name: "empty data with type", id: "k3x-5", typ: "ping", data: ""},
		{name: "LF", id: "k3x-6", data: "a\nb\nc"},
		{name: "CRLF", id: "k3x-7", data: "a\r\nb\r\nc"},
		{name: "CR", id: "k3x-8", data: "a\rb\rc"},
		{name: "mixed terminators", id: "k3x-9", data: "a\nb\r\nc\rd\n\re"},
		{name: "trailing LF", id: "k3x-10", data: "a\n"},
		{name: "trailing CRLF", id: "k3x-11", data: "a\r\n"},
		{name: "trailing CR", id: "k3x-12", data: "a\r"},
		{name: "only newlines", id: "k3x-13", data: "\n\n\n"},
		{name: "only CRs", id: "k3x-14", data: "\r\r"},
		{name: "CR then LF as separate lines", id: "k3x-15", data: "\n\r"},
		{name: "leading space", id: "k3x-16", data: " a"},
		{name: "leading spaces on every line", id: "k3x-17", data: "  a\n b\n\tc"},
		{name: "only a space", id: "k3x-18", data: " "},
		{name: "colon", id: "k3x-19", data: ":not a comment"},
		{name: "field-like line", id: "k3x-20", data: "data: x"},
		{name: "colons inside", id: "k3x-21", data: "a:b: c"},
		{name: "NUL bytes", id: "k3x-22", data: "a\x00b\x00"},
		{name: "BOM", id: "k3x-23", data: "\uFEFFa"},
		{name: "unicode", id: "k3x-24", typ: "général", data: "日本語 😀\u2028x"},
		{name: "JSON", id: "k3x-25", typ: "json", data: `{"a":[1,2],"b":"c\nd"}`},
		{name: "type with leading space", id: "k3x-26", typ: " spaced", data: "x"},
		{name: "type with colon", id: "k3x-27", typ: "ns:event", data: "x"},

		// a publisher must never start a field or an event of its own
		{name: "injects an event with LF", id: "k3x-30", data: "x\n\nevent: evil\ndata: y"},
		{name: "injects an id with CR", id: "k3x-31", data: "\rid: 9"},
		{name: "injects data with CRLF", id: "k3x-32", data: "\r\n\r\ndata: z"},
		{name: "injects retry", id: "k3x-33", data: "a\nretry: 1\n\nb"},
		{name: "injects a comment", id: "k3x-34", data: "a\r: keepalive\r\rb"},
		{name: "injects a type with CR LF CR", id: "k3x-35", typ: "safe", data: "\r\n\revent: evil\r\n\r\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			wire := appendSSE(nil, tc.id, tc.typ, tc.data, tc.retry)
			assertRoundTrip(t, wire, tc.id, tc.typ, tc.data, tc.retry)

			ev := &Event{Message: Message{Topics: []string{"t"}, Type: tc.typ, Data: tc.data, Retry: tc.retry}, ID: tc.id}
			if got := ev.SSE(); !bytes.Equal(got, wire) {
				t.Errorf("Event.SSE() = %q, appendSSE = %q", got, wire)
			}
		})
	}
}

func TestEventSSEWireFormat(t *testing.T) {
	for _, tc := range []struct {
		id, typ, data string
		retry         int64
		want          string
	}{
		{"e-1", "", "hi", 0, "id: e-1\ndata: hi\n\n"},
		{"e-2", "news", "a\nb", 0, "id: e-2\nevent: news\ndata: a\ndata: b\n\n"},
		{"e-3", "", "a\r\nb\rc", 2500, "id: e-3\nretry: 2500\ndata: a\ndata: b\ndata: c\n\n"},
		{"e-4", "", "", 0, "id: e-4\ndata: \n\n"},
		{"e-5", "", "a\n", 0, "id: e-5\ndata: a\ndata: \n\n"},
		{"", "", "x", -1, "data: x\n\n"},
	} {
		if got := string(appendSSE(nil, tc.id, tc.typ, tc.data, tc.retry)); got != tc.want {
			t.Errorf("appendSSE(%q, %q, %q, %d) = %q, want %q", tc.id, tc.typ, tc.data, tc.retry, got, tc.want)
		}
	}
}

func TestEventSSEAppendsAndEncodesOnce(t *testing.T) {
	prefix := []byte("retry: 3000\n: ok\n\n")
	b := appendSSE(append([]byte(nil), prefix...), "e-1", "push.reset", "why", 0)
	if !bytes.HasPrefix(b, prefix) || string(b[len(prefix):]) != "id: e-1\nevent: push.reset\ndata: why\n\n" {
		t.Errorf("appendSSE did not append to its buffer: %q", b)
	}

	ev := &Event{Message: Message{Topics: []string{"t"}, Data: "x"}, ID: "e-2"}
	first, second := ev.SSE(), ev.SSE()
	if &first[0] != &second[0] {
		t.Error("Event.SSE encoded the event twice; every subscriber should share one encoding")
	}
}

func TestEventFormatParseID(t *testing.T) {
	epoch := strconv.FormatInt(time.Now().UnixNano(), 36)
	for _, seq := range []uint64{0, 1, 42, 1<<64 - 1} {
		id := FormatID(epoch, seq)
		gotEpoch, gotSeq, ok := ParseID(id)
		if !ok || gotEpoch != epoch || gotSeq != seq {
			t.Errorf("ParseID(FormatID(%q, %d) = %q) = %q, %d, %v", epoch, seq, id, gotEpoch, gotSeq, ok)
		}
	}
	if got := FormatID("abc", 7); got != "abc-7" {
		t.Errorf("FormatID(abc, 7) = %q, want abc-7", got)
	}
}

func TestEventParseID(t *testing.T) {
	long := func(n int) string { return strings.Repeat("a", n-2) + "-1" }
	for _, tc := range []struct {
		id    string
		epoch string
		seq   uint64
		ok    bool
	}{
		{id: "abc-1", epoch: "abc", seq: 1, ok: true},
		{id: "dn3hidxcge5b-42", epoch: "dn3hidxcge5b", seq: 42, ok: true},
		{id: "0-0", epoch: "0", seq: 0, ok: true},
		{id: "z9-18446744073709551615", epoch: "z9", seq: 1<<64 - 1, ok: true},
		{id: long(maxIDLength), epoch: strings.Repeat("a", maxIDLength-2), seq: 1, ok: true},

		{id: ""},
		{id: "abc"},                 // missing dash
		{id: "123"},                 // missing dash
		{id: "-1"},                  // missing epoch
		{id: "abc-"},                // missing seq
		{id: "ABC-1"},               // uppercase epoch
		{id: "aBc-1"},               // uppercase epoch
		{id: "a-b-1"},               // dash in epoch
		{id: "a_b-1"},               // other punctuation in epoch
		{id: "é-1"},                 // non-ASCII epoch
		{id: "x\x00-1"},             // NUL in epoch
		{id: long(maxIDLength + 1)}, // too long
		{id: strings.Repeat("9", 10000) + "-1"},
		{id: "abc-x"},                    // non-numeric seq
		{id: "abc-1x"},                   // non-numeric seq
		{id: "abc-+1"},                   // signed seq
		{id: "abc--1"},                   // negative seq
		{id: "abc- 1"},                   // space in seq
		{id: "abc-1 "},                   // trailing space
		{id: "abc-0x1f"},                 // hex seq
		{id: "abc-1_000"},                // underscores
		{id: "abc-007"},                  // leading zeros: not an id we made
		{id: "abc-18446744073709551616"}, // overflow
		{id: "abc-99999999999999999999999"},
	} {
		epoch, seq, ok := ParseID(tc.id)
		if ok != tc.ok || epoch != tc.epoch || seq != tc.seq {
			t.Errorf("ParseID(%q) = %q, %d, %v; want %q, %d, %v", tc.id, epoch, seq, ok, tc.epoch, tc.seq, tc.ok)
		}
	}
}

func TestEventValidateTopic(t *testing.T) {
	emoji64 := strings.Repeat("😀", 64) // 256 bytes
	for _, tc := range []struct {
		name  string
		topic string
		err   string // "" when valid
	}{
		{"simple", "news", ""},
		{"path", "user/42/inbox", ""},
		{"url", "https://example.com/books/1", ""},
		{"spaces and punctuation", "a b:c?d=e&f#g", ""},
		{"unicode", "chat/général/日本語", ""},
		{"emoji", "😀", ""},
		{"one byte", "a", ""},
		{"256 bytes", strings.Repeat("a", 256), ""},
		{"256 bytes of 4-byte runes", emoji64, ""},

		{"empty", "", "empty topic"},
		{"257 bytes", strings.Repeat("a", 257), "is longer than 256 bytes"},
		{"257 bytes of runes", emoji64 + "a", "is longer than 256 bytes"},
		{"NUL", "a\x00b", `topic "a\x00b" has control characters`},
		{"LF", "a\nb", `topic "a\nb" has control characters`},
		{"CR", "a\rb", `topic "a\rb" has control characters`},
		{"tab", "a\tb", `topic "a\tb" has control characters`},
		{"ESC", "\x1b[31m", "has control characters"},
		{"DEL", "a\x7f", `topic "a\x7f" has control characters`},
		{"C1 NEL", "a\u0085b", "has control characters"},
		{"C1 APC", "a\u009fb", "has control characters"},
		{"invalid UTF-8", "a\xffb", `topic "a\xffb" is not valid UTF-8`},
		{"truncated rune", "\xe6\x97", "is not valid UTF-8"},
		{"encoded C1", "\xc2\x85", "has control characters"},
		{"surrogate", "\xed\xa0\x80", "is not valid UTF-8"},
	} {
		err := ValidateTopic(tc.topic)
		switch {
		case tc.err == "" && err != nil:
			t.Errorf("%s: ValidateTopic(%q) = %v, want nil", tc.name, tc.topic, err)
		case tc.err != "" && err == nil:
			t.Errorf("%s: ValidateTopic(%q) = nil, want an error with %q", tc.name, tc.topic, tc.err)
		case tc.err != "" && !strings.Contains(err.Error(), tc.err):
			t.Errorf("%s: ValidateTopic(%q) = %q, want it to contain %q", tc.name, tc.topic, err, tc.err)
		}
	}
}

func TestEventMessageValidate(t *testing.T) {
	ok := func(f func(*Message)) Message {
		m := Message{Topics: []string{"news"}, Type: "update", Data: "hello", Retry: 1000}
		f(&m)
		return m
	}
	for _, tc := range []struct {
		name string
		m    Message
		err  string
	}{
		{"valid", ok(func(*Message) {}), ""},
		{"no type, no retry", ok(func(m *Message) { m.Type, m.Retry = "", 0 }), ""},
		{"empty data", ok(func(m *Message) { m.Data = "" }), ""},
		{"data with newlines and NUL", ok(func(m *Message) { m.Data = "a\r\nb\rc\nd\x00" }), ""},
		{"several topics", ok(func(m *Message) { m.Topics = []string{"a", "b/c"} }), ""},
		{"type of 256 bytes", ok(func(m *Message) { m.Type = strings.Repeat("t", 256) }), ""},
		{"unicode type", ok(func(m *Message) { m.Type = "mise-à-jour" }), ""},

		{"no topics", ok(func(m *Message) { m.Topics = nil }), "no topic"},
		{"empty topic list", ok(func(m *Message) { m.Topics = []string{} }), "no topic"},
		{"empty topic", ok(func(m *Message) { m.Topics = []string{""} }), "empty topic"},
		{"second topic bad", ok(func(m *Message) { m.Topics = []string{"ok", "bad\n"} }), `topic "bad\n" has control characters`},
		{"type with LF", ok(func(m *Message) { m.Type = "a\nevent: b" }), `event type "a\nevent: b" has invalid UTF-8 or control characters`},
		{"type with CR", ok(func(m *Message) { m.Type = "a\rb" }), "has invalid UTF-8 or control characters"},
		{"type with NUL", ok(func(m *Message) { m.Type = "a\x00" }), "has invalid UTF-8 or control characters"},
		{"type with C1", ok(func(m *Message) { m.Type = "a\u0085" }), "has invalid UTF-8 or control characters"},
		{"type invalid UTF-8", ok(func(m *Message) { m.Type = "\xff" }), "has invalid UTF-8 or control characters"},
		{"type of 257 bytes", ok(func(m *Message) { m.Type = strings.Repeat("t", 257) }), "event type is longer than 256 bytes"},
		{"data invalid UTF-8", ok(func(m *Message) { m.Data = "ok\xffok" }), "data is not valid UTF-8"},
		{"data truncated rune", ok(func(m *Message) { m.Data = "日本\xe8\xaa" }), "data is not valid UTF-8"},
		{"negative retry", ok(func(m *Message) { m.Retry = -1 }), "retry must not be negative"},
		{"retry of a day", ok(func(m *Message) { m.Retry = MaxRetry }), ""},
		{"retry over a day", ok(func(m *Message) { m.Retry = MaxRetry + 1 }), "retry 86400001 is longer than a day"},
		{"type pause", ok(func(m *Message) { m.Type = "pause" }), `event type "pause" is reserved for the server`},
		{"type mercure", ok(func(m *Message) { m.Type = "mercure" }), `event type "mercure" is reserved`},
		{"type push.reset", ok(func(m *Message) { m.Type = "push.reset" }), "reserved"},
		{"type push.join", ok(func(m *Message) { m.Type = "push.join" }), "reserved"},
		{"type push.leave", ok(func(m *Message) { m.Type = "push.leave" }), "reserved"},
		{"type push.presence", ok(func(m *Message) { m.Type = "push.presence" }), "reserved"},
		{"type push.", ok(func(m *Message) { m.Type = "push." }), "reserved"},
		{"type push", ok(func(m *Message) { m.Type = "push" }), ""},
		{"type paused", ok(func(m *Message) { m.Type = "paused" }), ""},
	} {
		err := tc.m.Validate()
		if err != nil && !errors.Is(err, ErrInvalidMessage) {
			t.Errorf("%s: %v does not wrap ErrInvalidMessage", tc.name, err)
		}
		switch {
		case tc.err == "" && err != nil:
			t.Errorf("%s: Validate(%+v) = %v, want nil", tc.name, tc.m, err)
		case tc.err != "" && err == nil:
			t.Errorf("%s: Validate(%+v) = nil, want an error with %q", tc.name, tc.m, tc.err)
		case tc.err != "" && !strings.Contains(err.Error(), tc.err):
			t.Errorf("%s: Validate(%+v) = %q, want it to contain %q", tc.name, tc.m, err, tc.err)
		}
	}
}

// FuzzSSERoundTrip: whatever message validates must reach an SSE client
// as exactly one event with the same id, type, data (up to line
// terminators, which SSE normalizes to LF) and retry.
func FuzzSSERoundTrip(f *testing.F) {
	for _, s := range []struct {
		typ, data string
		retry     int64
		seq       uint64
	}{
		{"", "hello", 0, 1},
		{"update", "a\nb", 1000, 2},
		{"", "", 0, 3},
		{"x", "x\n\nevent: evil\ndata: y", 0, 4},
		{"", "\rid: 9", 0, 5},
		{"", "\r\n\r\ndata: z", 0, 6},
		{" t", " leading\r\rspace\n", 1, 7},
		{"évènement", ":colon\x00nul\uFEFF", 0, 1<<64 - 1},
		{"a\nb", "rejected type", 0, 8},
		{"", "bad \xff utf-8", 0, 9},
		{"", "negative retry", -5, 10},
	} {
		f.Add(s.typ, s.data, s.retry, s.seq)
	}
	f.Fuzz(func(t *testing.T, typ, data string, retry int64, seq uint64) {
		m := Message{Topics: []string{"t"}, Type: typ, Data: data, Retry: retry}
		if m.Validate() != nil {
			t.Skip()
		}
		id := FormatID("k3x", seq)
		ev := &Event{Message: m, ID: id}
		assertRoundTrip(t, ev.SSE(), id, typ, data, retry)
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
