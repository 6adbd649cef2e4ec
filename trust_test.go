package push

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"
)

// trustSite has a hub with a small max_publish_topics, an anonymous chat
// over WebSocket, and an anonymous publish route: what anyone may reach.
const trustSite = `
{
	push {
		hub default {
			max_publish_topics 3
		}
	}
}
http://127.0.0.1:PORT {
	push_sse /events
	push_ws /chat {
		topics chat/{query.room}
		publish chat/{query.room}
	}
	push_publish /publish {
		anonymous
	}
}`

// topicsForm is a form body naming n topics t0, t1, ...
func topicsForm(n int) string {
	v := url.Values{"data": {"x"}}
	for i := range n {
		v.Add("topic", "t"+strconv.Itoa(i))
	}
	return v.Encode()
}

// No publisher may send the server's own event types, a retry over a day,
// or more topics than max_publish_topics: over HTTP each is a 400 with
// the reason, and subscribers get nothing.
func TestTrustPublishRefusesReservedAndExcess(t *testing.T) {
	c := startCaddy(t, trustSite)
	watch := subscribe(t, c.URL+"/events?topic=a&topic=t0", nil)
	const form, json = "application/x-www-form-urlencoded", "application/json"
	for _, tc := range []struct {
		name, ctype, body, reason string
	}{
		{"pause", form, "topic=a&type=pause&data=" + strconv.FormatInt(time.Now().Add(24*time.Hour).UnixMilli(), 10), `event type "pause" is reserved`},
		{"push.reset", form, "topic=a&type=push.reset&data=x", `"push.reset" is reserved`},
		{"push.join", json, `{"topic":"a","event":"push.join","data":{"connection":"x","user":"admin"}}`, `"push.join" is reserved`},
		{"push.leave", json, `{"topic":"a","event":"push.leave","data":"x"}`, "reserved"},
		{"push.presence", form, "topic=a&type=push.presence&data=x", "reserved"},
		{"any push.*", form, "topic=a&type=push.future&data=x", "reserved"},
		{"mercure", form, "topic=a&type=mercure&data=x", `"mercure" is reserved`},
		{"retry over a day", form, "topic=a&data=x&retry=86400001", "retry 86400001 is longer than a day"},
		{"json retry over a day", json, `{"topic":"a","data":"x","retry":9007199254740991}`, "longer than a day"},
		{"too many topics", form, topicsForm(4), "too many topics: 4 (the limit is 3)"},
		{"too many json topics", json, `{"topics":["a","b","c"],"topic":"d"}`, "too many topics: 4"},
		// counted as given: repeats cost the parsing and the check too
		{"repeated topics count", form, "topic=a&topic=a&topic=a&topic=a", "too many topics: 4"},
	} {
		status, body := c.post("/publish", tc.ctype, tc.body)
		if status != 400 || !strings.Contains(body, tc.reason) || strings.Count(body, "\n") != 1 {
			t.Errorf("%s: %d %q, want 400 with %q", tc.name, status, body, tc.reason)
		}
	}
	watch.quiet(100 * time.Millisecond)

	// at the bounds, and types that only look like reserved ones, publish
	for _, body := range []string{topicsForm(3), "topic=a&data=x&retry=86400000", "topic=a&type=paused", "topic=a&type=push", "topic=a&type=Pause", "topic=a&type=pushed.x"} {
		if status, id := c.publish("/publish", body); status != 200 {
			t.Errorf("%s: %d %s", body, status, id)
		} else if ev := watch.nextEvent(2 * time.Second); ev.ID != id {
			t.Errorf("%s: got %+v, want %s", body, ev, id)
		}
	}
}

// A JSON body of about 75,000 topics (1 MiB) is refused by its count.
func TestTrustPublishHugeTopicList(t *testing.T) {
	c := startCaddy(t, trustSite)
	var b strings.Builder
	b.WriteString(`{"data":"x","topics":[`)
	for i := 0; b.Len() < 1<<20-16; i++ {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(`"` + strconv.Itoa(i) + `"`)
	}
	b.WriteString(`]}`)
	start := time.Now()
	status, body := c.post("/publish", "application/json", b.String())
	if status != 400 || !strings.Contains(body, "too many topics") {
		t.Fatalf("%d %q", status, body)
	}
	t.Logf("refused %d bytes of topics in %v", b.Len(), time.Since(start))
}

// An anonymous WebSocket client that may publish cannot forge the
// server's events: an error frame with the reason, the connection stays
// open, and no subscriber gets anything.
func TestTrustWSRefusesReservedTypes(t *testing.T) {
	c := startCaddy(t, trustSite)
	watch := subscribe(t, c.URL+"/events?topic=chat/1", nil)
	other := mustDialWS(t, c.URL+"/chat?room=1", nil)
	forger := mustDialWS(t, c.URL+"/chat?room=1", nil)
	until := strconv.FormatInt(time.Now().Add(24*time.Hour).UnixMilli(), 10)
	for _, frame := range []string{
		`{"event":"pause","data":"` + until + `"}`,
		`{"event":"push.reset","data":"refetch"}`,
		`{"event":"push.join","data":{"connection":"x","user":"admin"}}`,
		`{"event":"push.leave","data":"x"}`,
		`{"event":"push.presence","data":"x"}`,
		`{"event":"mercure","data":"x"}`,
	} {
		forger.send(frame)
		raw := string(forger.next(time.Second))
		if !strings.HasPrefix(raw, `{"error":`) || !strings.Contains(raw, "reserved for the server") {
			t.Errorf("%s: got %s, want an error frame", frame, raw)
		}
	}
	watch.quiet(100 * time.Millisecond)
	forger.send(`{"event":"chat","data":"still here"}`)
	for _, ws := range []*wsClient{forger, other} {
		if f := ws.nextFrame(time.Second); f.Event != "chat" || f.Data != "still here" {
			t.Fatalf("got %+v, want the chat message", f)
		}
	}
	if ev := watch.nextEvent(time.Second); ev.Data != "still here" {
		t.Fatalf("got %+v", ev)
	}
}

// The admin API and the Go API refuse the same messages; Hub.Pause stays
// the way to pause.
func TestTrustAdminAndGoAPIRefuseReservedAndExcess(t *testing.T) {
	c := startCaddyAdmin(t, trustSite)
	watch := subscribe(t, c.URL+"/events?topic=a", nil)
	for _, tc := range []struct{ body, reason string }{
		{`{"topic":"a","event":"pause","data":"1"}`, "reserved"},
		{`{"topic":"a","event":"push.reset","data":"x"}`, "reserved"},
		{`{"topic":"a","data":"x","retry":86400001}`, "longer than a day"},
		{`{"topics":["a","b","c","d"],"data":"x"}`, "too many topics: 4 (the limit is 3)"},
	} {
		if status, raw := c.adminDo("POST", "/push/hubs/default/publish", tc.body, nil); status != 400 || !strings.Contains(raw, tc.reason) {
			t.Errorf("admin %s: %d %s, want 400 with %q", tc.body, status, raw, tc.reason)
		}
	}
	hub, _ := LookupHub("default")
	for _, m := range []Message{
		{Topics: []string{"a"}, Type: "pause", Data: "1"},
		{Topics: []string{"a"}, Type: "push.leave", Data: "x"},
		{Topics: []string{"a"}, Data: "x", Retry: MaxRetry + 1},
		{Topics: []string{"a", "b", "c", "d"}, Data: "x"},
	} {
		if _, err := hub.Publish(context.Background(), m); !errors.Is(err, ErrInvalidMessage) {
			t.Errorf("Go API %+v: %v, want ErrInvalidMessage", m, err)
		}
	}
	watch.quiet(100 * time.Millisecond)
	if n, err := hub.Pause(context.Background(), PauseRequest{Topics: []string{"a"}, For: time.Minute}); n != 1 || err != nil {
		t.Fatalf("Hub.Pause: %d %v", n, err)
	}
	items := watch.ended(2 * time.Second)
	if len(items) == 0 || items[len(items)-1].Event == nil || items[len(items)-1].Event.Type != "pause" {
		t.Fatalf("after Hub.Pause the stream ended with %+v, want a pause", items)
	}
}

func TestUniqueTopics(t *testing.T) {
	for _, tc := range []struct{ in, want []string }{
		{nil, []string{}},
		{[]string{"a"}, []string{"a"}},
		{[]string{"a", "b", "a", "c", "b"}, []string{"a", "b", "c"}},
		{[]string{"x", "x", "x"}, []string{"x"}},
	} {
		if got := uniqueTopics(tc.in); strings.Join(got, ",") != strings.Join(tc.want, ",") || len(got) != len(tc.want) {
			t.Errorf("uniqueTopics(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

// proxiedSite trusts loopback as a proxy, so each request names its
// client's address in X-Forwarded-For.
const proxiedSite = `
{
	servers {
		trusted_proxies static 127.0.0.1/8 ::1/128
	}
}
http://127.0.0.1:PORT {
	push_sse /events
	push_ws /chat {
		topics chat
		publish chat
	}
	push_publish /open {
		anonymous
	}
}`

func from(addr string) http.Header { return http.Header{"X-Forwarded-For": {addr}} }

// Anonymous publishers have an Idempotency-Key scope per client address
// (IPv6: per /64): a repeat from the same address is a replay, the same
// key from elsewhere is another publisher's (neither a replay nor a
// conflict).
func TestTrustAnonymousIdempotencyPerAddress(t *testing.T) {
	c := startCaddy(t, proxiedSite)
	watch := subscribe(t, c.URL+"/events?topic=a", nil)
	send := func(addr, data string) answer {
		t.Helper()
		req, _ := http.NewRequest("POST", c.URL+"/open", strings.NewReader("topic=a&data="+data))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.Header.Set("Idempotency-Key", "k")
		req.Header.Set("X-Forwarded-For", addr)
		resp, err := testClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return answer{resp.StatusCode, string(b), resp.Header.Get("Idempotent-Replayed")}
	}
	first := send("203.0.113.1", "mine")
	if first.status != 200 || first.replayed != "" {
		t.Fatalf("first: %+v", first)
	}
	for _, tc := range []struct {
		addr, data string
		status     int
		replayOf   string // "" : a new event
	}{
		{"203.0.113.1", "mine", 200, first.body},        // the same client retries
		{"203.0.113.2", "theirs", 200, ""},              // a stranger's key is its own
		{"203.0.113.1", "other", 422, ""},               // the key names one message per client
		{"2001:db8:1:2::1", "v6", 200, ""},              // a new scope
		{"2001:db8:1:2:aaaa::9", "v6", 200, "v6-first"}, // another address of the same /64
		{"2001:db8:1:3::1", "v6", 200, ""},              // another /64
	} {
		a := send(tc.addr, tc.data)
		switch {
		case a.status != tc.status:
			t.Fatalf("%s %s: %+v, want %d", tc.addr, tc.data, a, tc.status)
		case tc.status != 200:
		case tc.replayOf == "v6-first":
			if a.replayed != "true" {
				t.Fatalf("%s: %+v, want a replay", tc.addr, a)
			}
		case (a.replayed == "true") != (tc.replayOf != "") || tc.replayOf != "" && a.body != tc.replayOf:
			t.Fatalf("%s %s: %+v, want replay of %q", tc.addr, tc.data, a, tc.replayOf)
		}
	}
	for _, want := range []string{"mine", "theirs", "v6", "v6"} {
		if ev := watch.nextEvent(2 * time.Second); ev.Data != want {
			t.Fatalf("got %+v, want %s", ev, want)
		}
	}
	watch.quiet(100 * time.Millisecond)

	// WebSocket: the same, per the connection's address; a client that
	// reconnects finds its key
	ws := subscribe(t, c.URL+"/events?topic=chat", nil)
	a := mustDialWS(t, c.URL+"/chat", from("198.51.100.7"))
	a.send(`{"key":"w","data":"a"}`)
	if f := a.nextFrame(2 * time.Second); f.Data != "a" {
		t.Fatalf("got %+v", f)
	}
	b := mustDialWS(t, c.URL+"/chat", from("198.51.100.8"))
	b.send(`{"key":"w","data":"b"}`)
	if f := b.nextFrame(2 * time.Second); f.Data != "b" {
		t.Fatalf("a stranger's key: got %+v, want its message published", f)
	}
	a.conn.Close()
	again := mustDialWS(t, c.URL+"/chat", from("198.51.100.7"))
	again.send(`{"key":"w","data":"a"}`)
	again.send(`{"key":"w","data":"changed"}`)
	if raw := string(again.next(2 * time.Second)); !strings.Contains(raw, `"error"`) || !strings.Contains(raw, "already used") {
		t.Fatalf("after reconnecting: got %s, want the retry replayed and the change refused", raw)
	}
	for _, want := range []string{"a", "b"} {
		if ev := ws.nextEvent(2 * time.Second); ev.Data != want {
			t.Fatalf("got %+v, want %s", ev, want)
		}
	}
	ws.quiet(100 * time.Millisecond)
}

func TestIPKey(t *testing.T) {
	for _, tc := range []struct {
		ip     string
		prefix int
		want   string
	}{
		{"203.0.113.9", 64, "203.0.113.9"},
		{"::ffff:203.0.113.9", 64, "203.0.113.9"},
		{"2001:db8:1:2:3:4:5:6", 64, "2001:db8:1:2::/64"},
		{"2001:db8:1:2::9", 64, "2001:db8:1:2::/64"},
		{"2001:db8:1:2:3:4:5:6", 48, "2001:db8:1::/48"},
		{"2001:db8:1:2:3:4:5:6", 128, "2001:db8:1:2:3:4:5:6/128"},
		{"fe80::1%eth0", 64, "fe80::/64"},
		{"not-an-ip", 64, "not-an-ip"},
	} {
		if got := ipKey(tc.ip, tc.prefix); got != tc.want {
			t.Errorf("ipKey(%q, %d) = %q, want %q", tc.ip, tc.prefix, got, tc.want)
		}
	}
}

// max_connections_per_ip counts an IPv6 client by its /64, or by the
// network ipv6_prefix names; IPv4 clients by their address.
func TestTrustConnectionsPerIPv6Network(t *testing.T) {
	c := startCaddy(t, strings.Replace(proxiedSite, "	push_sse /events\n", `	push_sse /events {
		max_connections_per_ip 1
	}
	push_sse /each {
		max_connections_per_ip 1
		ipv6_prefix 128
	}
	push_sse /wide {
		max_connections_per_ip 1
		ipv6_prefix 48
	}
`, 1))
	open := func(path, addr string) int {
		t.Helper()
		s := subscribe(t, c.URL+path+"?topic=x", from(addr))
		return s.Resp.StatusCode
	}
	for _, tc := range []struct {
		path, addr string
		status     int
	}{
		{"/events", "2001:db8:1:2::1", 200},
		{"/events", "2001:db8:1:2:ffff::2", 429}, // the same /64
		{"/events", "2001:db8:1:3::1", 200},      // the next /64
		{"/events", "203.0.113.1", 200},
		{"/events", "203.0.113.2", 200},
		{"/events", "::ffff:203.0.113.2", 429}, // the same IPv4 client
		{"/each", "2001:db8:1:2::1", 200},
		{"/each", "2001:db8:1:2::2", 200},
		{"/each", "2001:db8:1:2::2", 429},
		{"/wide", "2001:db8:1:2::1", 200},
		{"/wide", "2001:db8:1:3::1", 429}, // the same /48
		{"/wide", "2001:db8:2::1", 200},
	} {
		if got := open(tc.path, tc.addr); got != tc.status {
			t.Errorf("%s from %s: %d, want %d", tc.path, tc.addr, got, tc.status)
		}
	}
	cfg := `{"apps":{"http":{"servers":{"s":{"listen":["127.0.0.1:0"],"routes":[{"handle":[{"handler":"push_sse","ipv6_prefix":129}]}]}}}}}`
	if err := caddyValidate([]byte(cfg)); err == nil || !strings.Contains(err.Error(), "ipv6_prefix must be from 1 to 128 bits, not 129") {
		t.Fatalf("ipv6_prefix 129 in JSON: %v", err)
	}
}
