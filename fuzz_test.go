package push

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// Fuzz targets for everything a client or a config author can hand us.
// .ci/run runs each for a few seconds; the seeds in testdata/fuzz and the
// f.Add calls below run with every plain `go test`.

// FuzzPublishBody: no body may panic the parsers, and whatever they
// accept must be a message that validates and encodes to one SSE event.
func FuzzPublishBody(f *testing.F) {
	for _, s := range []string{
		"topic=a&data=hello", "topic=a&topic=b&type=x&retry=100", "topic=%ff", "data=%zz",
		`{"topic":"a","data":"x"}`, `{"topics":["a","b"],"event":"e","data":{"k":[1,2]}}`,
		`{"topic":"a","retry":-1}`, `{"data":null}`, `[]`, `{"topic":"a"}{}`, "\xff\xfe",
		"topic=a&id=urn:uuid:1&data=x", `{"topic":"a","id":"x\u2028y\u0085"}`,
	} {
		f.Add([]byte(s), s[0] == '{' || s[0] == '[')
	}
	f.Fuzz(func(t *testing.T, body []byte, asJSON bool) {
		parse := parseFormMessage
		if asJSON {
			parse = parseJSONMessage
		}
		m, err := parse(body)
		if err != nil || m.Validate() != nil {
			return
		}
		ev := &Event{Message: m, ID: "e-1"}
		count := 0
		wantData := strings.NewReplacer("\r\n", "\n", "\r", "\n").Replace(m.Data)
		_ = parseSSE(strings.NewReader(string(ev.SSE())), func(it sseItem) bool {
			if it.Event != nil {
				count++
				if it.Event.Data != wantData || it.Event.ID != ev.PublicID() {
					t.Fatalf("event %+v from message %+v", it.Event, m)
				}
			}
			return true
		})
		if count != 1 {
			t.Fatalf("message %+v encoded to %d events", m, count)
		}
	})
}

// FuzzParseID: Last-Event-ID is client input. Whatever parses must
// format back to the same id.
func FuzzParseID(f *testing.F) {
	for _, s := range []string{"abc-1", "dn3hidxcge5b-42", "-1", "a-", "A-1", "a-b-3", "a-18446744073709551616", "a-007", "x\x00-1", strings.Repeat("9", 10000)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, id string) {
		epoch, seq, ok := ParseID(id)
		if !ok {
			return
		}
		if got := FormatID(epoch, seq); got != id {
			t.Fatalf("ParseID(%q) = %q, %d; formats back as %q", id, epoch, seq, got)
		}
		if len(id) > maxIDLength || !utf8.ValidString(epoch) {
			t.Fatalf("accepted %q", id)
		}
	})
}

// FuzzCaddyfile: any Caddyfile text given to our unmarshalers must give
// a config or an error, never a panic.
func FuzzCaddyfile(f *testing.F) {
	for _, s := range []string{
		"push {\n hub default {\n history 10\n history_ttl 1m\n broker memory\n }\n}",
		"push_sse {\n topics a {query.b}\n retry 1s\n keepalive 2s\n max_duration 3s\n max_connections 4\n}",
		"push_publish {\n token x\n max_body 1MiB\n}",
		"push_ws {\n publish a/{query.b}\n format text\n presence\n publish_rate 2.5\n origins *\n}",
		"push {\n hub\n}", "push_sse {\n retry\n}", "push_sse {\n topics \"open", "push_ws <<EOF\n", "push_publish x y", "push {\n hub a {\n broker nope\n }\n}",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, text string) {
		// not NewTestDispenser: it exits the process on text the lexer
		// refuses (an open quote or heredoc), which Caddy reports as an
		// error before any unmarshaler sees it
		tokens, err := caddyfile.Tokenize([]byte(text), "Caddyfile")
		if err != nil {
			return
		}
		for _, u := range []caddyfile.Unmarshaler{new(App), new(SSEHandler), new(WSHandler), new(PublishHandler)} {
			_ = u.UnmarshalCaddyfile(caddyfile.NewDispenser(tokens))
		}
	})
}

// FuzzClientFrame: whatever a WebSocket client sends, the parser gives a
// message to one allowed topic, or an error; never a panic, never another
// topic, never a bad idempotency key.
func FuzzClientFrame(f *testing.F) {
	for _, s := range []string{
		"hello", `{"data":"x"}`, `{"topic":"a","event":"e","data":{"k":1}}`, `{"topic":"z","data":"x"}`,
		`{"topic":"a","data":"x","more":1}`, `{"topic":"a"}{"topic":"b"}`, `[1,2]`, `"str"`, "\xff", "",
		`{"topic":"a","data":"x","key":"k-1"}`, `{"data":"x","key":""}`, `{"data":"x","key":"\u00e9"}`, `{"data":"x","key":null}`,
	} {
		f.Add([]byte(s), true)
		f.Add([]byte(s), false)
	}
	f.Fuzz(func(t *testing.T, frame []byte, single bool) {
		allowed := []string{"a", "b"}
		if single {
			allowed = allowed[:1]
		}
		m, err := parseClientFrame(frame, allowed)
		if err != nil {
			return
		}
		if len(m.Topics) != 1 || !slices.Contains(allowed, m.Topics[0]) {
			t.Fatalf("frame %q went to %v", frame, m.Topics)
		}
		if m.IdempotencyKey != "" && ValidateIdempotencyKey(m.IdempotencyKey) != nil {
			t.Fatalf("frame %q passed a bad key %q", frame, m.IdempotencyKey)
		}
	})
}

// FuzzClientCommand: whatever a WebSocket client sends, parseCommand
// never panics, calls only JSON objects commands, and a command it
// accepts names its topic under the key it is read from.
func FuzzClientCommand(f *testing.F) {
	for _, s := range []string{
		`{"subscribe":"a"}`, `{"subscribe":"a","lastEventId":"x-1"}`, `{"unsubscribe":"a"}`, `{"subscribe":"a","last_event_id":"1"}`,
		`{"subscribe":1}`, `{"subscribe":"a","unsubscribe":"b"}`, `{"sub\u0073cribe":"a"}`, `{"topic":"a","data":"x"}`,
		` {"subscribe":null}`, `{"subscribe":"a"}{`, `[{"subscribe":"a"}]`, "\xff", "",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, frame []byte) {
		c, ok, err := parseCommand(frame)
		if !ok {
			if err != nil {
				t.Fatalf("%q: an error for a message that is no command", frame)
			}
			return
		}
		var obj map[string]any
		if json.Unmarshal(frame, &obj) != nil {
			t.Fatalf("%q: a command that is not a JSON object", frame)
		}
		if err != nil {
			return
		}
		key := "unsubscribe"
		if c.subscribe {
			key = "subscribe"
		}
		if v, _ := obj[key].(string); v != c.topic {
			t.Fatalf("%q: topic %q, the object says %v", frame, c.topic, obj[key])
		}
	})
}

// FuzzFormParse holds parseFormMessage, which reads the form body's bytes
// with no map, to what url.ParseQuery makes of the same body: the same
// message when one is accepted, and a malformed form reported as such.
func FuzzFormParse(f *testing.F) {
	for _, s := range []string{
		"topic=a&data=hello", "topic=a&topic=b&type=x&retry=100", "topic=%ff", "data=%zz", "data=%4", "data=%",
		"to%70ic=a&d%61ta=x+y%20z", "topic=a;b", "topic=a&&data=b&", "=x", "topic", "data=1&data=2",
		"topic=a&colour=red&data=%zz", "topic=a&id=1", "topic=a&id=1&id=2", "i%64=urn:x&topic=a", "retry=-1&topic=a", "topic=a&data=%E2%80%A8+%0a",
		"topic=a&private", "topic=a&private=&private=on",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		if bytes.Count(body, []byte("&"))+1 > maxFormFields {
			return // ParseQuery's own limit, with its own message
		}
		got, err := parseFormMessage(body)
		want, wantErr := parseFormReference(body)
		if (err == nil) != (wantErr == nil) {
			t.Fatalf("%q: got %+v, %v; url.ParseQuery's reading: %+v, %v", body, got, err, want, wantErr)
		}
		if err != nil {
			malformed := strings.HasPrefix(err.Error(), "malformed form body: ")
			if malformed != strings.HasPrefix(wantErr.Error(), "malformed form body: ") ||
				malformed && err.Error() != wantErr.Error() {
				t.Fatalf("%q: error %q; url.ParseQuery's reading: %q", body, err, wantErr)
			}
			return
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("%q: got %+v, url.ParseQuery's reading %+v", body, got, want)
		}
	})
}

// parseFormReference is parseFormMessage as it was, on url.ParseQuery;
// with several bad fields, which one it names depends on map order.
func parseFormReference(body []byte) (Message, error) {
	form, err := url.ParseQuery(string(body))
	if err != nil {
		return Message{}, fmt.Errorf("malformed form body: %v", err)
	}
	var m Message
	for field, values := range form {
		if field != "topic" && field != "private" && len(values) > 1 {
			return Message{}, fmt.Errorf("field %q is given more than once", field)
		}
		switch field {
		case "topic":
			m.Topics = values
		case "data":
			m.Data = values[0]
		case "type":
			m.Type = values[0]
		case "id":
			m.CustomID = values[0]
		case "retry":
			if m.Retry, err = strconv.ParseInt(values[0], 10, 64); err != nil || m.Retry < 0 {
				return Message{}, fmt.Errorf("retry %q is not a number of milliseconds", values[0])
			}
		case "private":
			m.Private = true
		default:
			return Message{}, fmt.Errorf("unknown field %q", field)
		}
	}
	return m, nil
}

// FuzzMercureRequest: no subscribe query or publish form may panic the
// Mercure hub's parsers; a selector list it accepts is within its bounds,
// and an update it accepts validates, with no topic in the hub's
// namespace and none that is "*".
func FuzzMercureRequest(f *testing.F) {
	for _, s := range []string{
		"match=a&match_urlpattern=https://x/:id&topic=https://x/{id}", "match_uritemplate={", "MATCH=a", "match=*",
		"topic=a&data=x&private=&id=urn:uuid:1&retry=10", "topic=/.well-known/%6Dercure/x", "topic=*", "retry=1e3",
		"match_urlpattern=(((a)*)*)*", "topic=a&type=mercure", "%zz", "match=%ff",
	} {
		f.Add(s)
	}
	h := &MercureHandler{Path: DefaultMercurePath, MaxSelectors: DefaultMercureSelectors, MaxBody: DefaultMaxBody, compiled: new(selectorCache)}
	h.sse.hub = newHub("fuzz")
	f.Fuzz(func(t *testing.T, s string) {
		q, err := url.ParseQuery(s)
		if err != nil {
			return
		}
		if sels, err := h.selectors(mercureDefaultBaseURL, q); err == nil && (len(sels) == 0 || len(sels) > h.MaxSelectors) {
			t.Fatalf("%q: %d selectors accepted", s, len(sels))
		}
		r, _ := http.NewRequest("POST", "http://x"+DefaultMercurePath, strings.NewReader(s))
		r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		m, _, err := h.readUpdate(r, mercureDefaultBaseURL)
		if err != nil {
			return
		}
		if err := h.sse.hub.Validate(m); err != nil {
			t.Fatalf("%q: accepted an update that does not validate: %v", s, err)
		}
		for _, topic := range m.Topics {
			if topic == "*" || mercureReservedTopic(topic, mercureDefaultBaseURL, DefaultMercurePath) {
				t.Fatalf("%q: accepted topic %q", s, topic)
			}
		}
	})
}
