package push

import (
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"
)

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
