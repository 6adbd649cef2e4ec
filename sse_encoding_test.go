package push

import (
	"bytes"
	"strings"
	"testing"
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

// BenchmarkEncodeSSE is the per-event encoding cost, paid once per event
// whatever the number of subscribers.
func BenchmarkEncodeSSE(b *testing.B) {
	data := "line one\nline two\r\nline three " + string(make([]byte, 200))
	b.ReportAllocs()
	for b.Loop() {
		ev := &Event{Message: Message{Topics: []string{"t"}, Type: "update", Data: data}, ID: "abc-123"}
		_ = ev.SSE()
	}
}
