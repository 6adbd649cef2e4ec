package push

import (
	"bufio"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/gorilla/websocket"
	"golang.org/x/crypto/bcrypt"
)

// startCaddyAdmin is startCaddy with Caddy's admin endpoint on a free
// loopback port, so the admin.api.push routes are served.
func startCaddyAdmin(t testing.TB, site string) *testCaddy {
	t.Helper()
	c := &testCaddy{t: t, port: freePort(t), admin: "127.0.0.1:" + freePort(t)}
	c.URL = "http://127.0.0.1:" + c.port
	if testOverTLS() {
		c.URL = "https://127.0.0.1:" + c.port
	}
	c.Load(site)
	t.Cleanup(func() {
		// caddy.Stop leaves the admin endpoint up; a config without it
		// closes it
		_ = caddy.Load([]byte(`{"admin":{"disabled":true,"config":{"persist":false}}}`), true)
		if err := caddy.Stop(); err != nil {
			t.Errorf("stopping caddy: %v", err)
		}
	})
	return c
}

// adminDo calls the admin API and decodes its JSON answer into out (when
// not nil); it returns the status and the raw body.
func (c *testCaddy) adminDo(method, path, body string, out any) (int, string) {
	c.t.Helper()
	req, _ := http.NewRequest(method, "http://"+c.admin+path, strings.NewReader(body))
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	// the admin endpoint speaks plain HTTP/1.1 in every test mode
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		c.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	status, raw := resp.StatusCode, string(b)
	if out != nil && status == http.StatusOK {
		if err := json.Unmarshal([]byte(raw), out); err != nil {
			c.t.Fatalf("%s %s: %v in %s", method, path, err, raw)
		}
	}
	return status, raw
}

func basicAuthHeader(user, pass string) http.Header {
	r, _ := http.NewRequest("GET", "/", nil)
	r.SetBasicAuth(user, pass)
	return r.Header
}

func bcryptHash(p string) string {
	h, _ := bcrypt.GenerateFromPassword([]byte(p), bcrypt.MinCost)
	return string(h)
}

var adminSite = `
{
	push {
		hub other {
			history 10
		}
	}
}
http://127.0.0.1:PORT {
	basic_auth /auth/* {
		alice ` + bcryptHash("a-pass") + `
		bob ` + bcryptHash("b-pass") + `
	}
	push_sse /events
	push_sse /auth/events {
		topics room
	}
	push_ws /auth/ws {
		topics room
	}
	push_publish /publish {
		anonymous
	}
}`

type hubsAnswer struct {
	Scope string    `json:"scope"`
	Hubs  []HubInfo `json:"hubs"`
}

func (c *testCaddy) hubInfo(name string) HubInfo {
	c.t.Helper()
	var a hubsAnswer
	if status, raw := c.adminDo("GET", "/push/hubs", "", &a); status != 200 || a.Scope != ScopeNode {
		c.t.Fatalf("GET /push/hubs: %d %s", status, raw)
	}
	for _, h := range a.Hubs {
		if h.Name == name {
			return h
		}
	}
	c.t.Fatalf("hub %q not in %+v", name, a.Hubs)
	return HubInfo{}
}

// metric reads one sample of Caddy's /metrics on the admin endpoint.
func (c *testCaddy) metric(name, labels string) float64 {
	c.t.Helper()
	resp, err := http.Get("http://" + c.admin + "/metrics")
	if err != nil {
		c.t.Fatal(err)
	}
	defer resp.Body.Close()
	lines := bufio.NewScanner(resp.Body)
	for lines.Scan() {
		if v, ok := strings.CutPrefix(lines.Text(), name+"{"+labels+"} "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				c.t.Fatal(err)
			}
			return f
		}
	}
	c.t.Fatalf("no metric %s{%s}", name, labels)
	return 0
}

func TestAdminHubsTopicsPresence(t *testing.T) {
	c := startCaddyAdmin(t, adminSite)
	if h := c.hubInfo("other"); h.Broker != "memory" || h.Scope != ScopeNode || h.Connections[TransportSSE] != 0 {
		t.Fatalf("idle hub: %+v", h)
	}
	alice := subscribe(t, c.URL+"/auth/events", basicAuthHeader("alice", "a-pass"))
	bob := mustDialWS(t, c.URL+"/auth/ws", basicAuthHeader("bob", "b-pass"))
	news := subscribe(t, c.URL+"/events?topic=news", nil)
	var last string
	for i := range 2 {
		_, last = c.publish("/publish", "topic=news&data="+strconv.Itoa(i))
	}
	news.events(2, 2*time.Second)

	// the hub counts a fan-out's deliveries once it has written them all,
	// which may be just after the client has read them
	var h HubInfo
	waitFor(t, 2*time.Second, func() bool {
		h = c.hubInfo("default")
		return h.Delivered[TransportSSE] == 2
	})
	if h.Connections[TransportSSE] != 2 || h.Connections[TransportWS] != 1 || h.Topics != 2 ||
		h.Published != 2 || h.Events != 2 || h.Bytes <= 0 || h.Head != last || h.Delivered[TransportSSE] != 2 {
		t.Fatalf("GET /push/hubs: %+v", h)
	}
	for _, tr := range transports {
		labels := `hub="default",transport="` + tr + `"`
		if m := c.metric("caddy_push_connections", labels); m != float64(h.Connections[tr]) {
			t.Errorf("%s connections: metric %v, admin %d", tr, m, h.Connections[tr])
		}
		if m := c.metric("caddy_push_events_delivered_total", labels); m != float64(h.Delivered[tr]) {
			t.Errorf("%s delivered: metric %v, admin %d", tr, m, h.Delivered[tr])
		}
	}
	if m := c.metric("caddy_push_events_published_total", `hub="default"`); m != float64(h.Published) {
		t.Errorf("published: metric %v, admin %d", m, h.Published)
	}

	var topics struct {
		Scope     string      `json:"scope"`
		Topics    []TopicInfo `json:"topics"`
		Truncated bool        `json:"truncated"`
	}
	c.adminDo("GET", "/push/hubs/default/topics", "", &topics)
	if len(topics.Topics) != 2 || topics.Scope != ScopeNode || topics.Truncated ||
		topics.Topics[0] != (TopicInfo{Topic: "room", Subscribers: 2}) ||
		topics.Topics[1] != (TopicInfo{Topic: "news", Subscribers: 1, TopicHistory: TopicHistory{Events: 2, LastID: last}}) {
		t.Fatalf("topics: %+v", topics)
	}
	c.adminDo("GET", "/push/hubs/default/topics?prefix=ne", "", &topics)
	if len(topics.Topics) != 1 || topics.Topics[0].Topic != "news" {
		t.Fatalf("topics with prefix: %+v", topics)
	}
	c.adminDo("GET", "/push/hubs/default/topics?limit=1", "", &topics)
	if len(topics.Topics) != 1 || topics.Topics[0].Topic != "room" || !topics.Truncated {
		t.Fatalf("topics with limit: %+v", topics)
	}

	var presence struct {
		Scope   string   `json:"scope"`
		Topic   string   `json:"topic"`
		Count   int      `json:"count"`
		Members []Member `json:"members"`
	}
	c.adminDo("GET", "/push/hubs/default/presence?topic=room", "", &presence)
	if presence.Count != 2 || len(presence.Members) != 2 || presence.Scope != ScopeNode || presence.Topic != "room" {
		t.Fatalf("presence: %+v", presence)
	}
	users := map[string]Member{}
	for _, m := range presence.Members {
		if m.Connection == "" || m.RemoteAddr != "127.0.0.1" || time.Since(m.Since) > time.Minute {
			t.Fatalf("member %+v", m)
		}
		users[m.User] = m
	}
	if users["alice"].Transport != TransportSSE || users["bob"].Transport != TransportWS {
		t.Fatalf("members %+v", presence.Members)
	}
	c.adminDo("GET", "/push/hubs/default/presence?topic=room&limit=1", "", &presence)
	if presence.Count != 2 || len(presence.Members) != 1 {
		t.Fatalf("presence with limit 1: %+v", presence)
	}
	alice.Close()
	bob.conn.Close()
	news.Close()
	deadline := time.Now().Add(3 * time.Second)
	for c.hubInfo("default").Topics > 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if h := c.hubInfo("default"); h.Topics != 0 || h.Connections[TransportSSE]+h.Connections[TransportWS] != 0 {
		t.Fatalf("after every client left: %+v", h)
	}
}

func TestAdminDisconnect(t *testing.T) {
	c := startCaddyAdmin(t, adminSite)
	head := c.hubInfo("default").Head
	alice := subscribe(t, c.URL+"/auth/events", basicAuthHeader("alice", "a-pass"))
	alice2 := mustDialWS(t, c.URL+"/auth/ws", basicAuthHeader("alice", "a-pass"))
	bob := subscribe(t, c.URL+"/auth/events", basicAuthHeader("bob", "b-pass"))
	bobWS := mustDialWS(t, c.URL+"/auth/ws", basicAuthHeader("bob", "b-pass"))

	var answer struct {
		Scope        string `json:"scope"`
		Disconnected int    `json:"disconnected"`
	}
	if status, raw := c.adminDo("POST", "/push/hubs/default/disconnect", `{"user":"alice","for":"30s"}`, &answer); status != 200 || answer.Disconnected != 2 || answer.Scope != ScopeNode {
		t.Fatalf("disconnect alice: %d %s", status, raw)
	}
	until, _ := pauseOf(t, alice.ended(3*time.Second), head)
	if d := time.Until(until); d < 25*time.Second || d > 31*time.Second {
		t.Fatalf("alice's stream paused for %v, want 30s", d)
	}
	if ce := alice2.closeError(3 * time.Second); ce.Code != websocket.ClosePolicyViolation || ce.Text != disconnectedReason {
		t.Fatalf("alice's websocket closed with %+v, want 1008", ce)
	}
	// bob stays
	_, id := c.publish("/publish", "topic=room&data=still")
	if ev := bob.nextEvent(2 * time.Second); ev.ID != id {
		t.Fatalf("bob got %+v", ev)
	}
	if f := bobWS.nextFrame(2 * time.Second); f.ID != id {
		t.Fatalf("bob's websocket got %+v", f)
	}

	// one connection, by its id; without for, an SSE stream just ends
	var presence struct{ Members []Member }
	c.adminDo("GET", "/push/hubs/default/presence?topic=room", "", &presence)
	var sseID string
	for _, m := range presence.Members {
		if m.Transport == TransportSSE {
			sseID = m.Connection
		}
	}
	if status, raw := c.adminDo("POST", "/push/hubs/default/disconnect", `{"connection":"`+sseID+`"}`, &answer); status != 200 || answer.Disconnected != 1 {
		t.Fatalf("disconnect %s: %d %s", sseID, status, raw)
	}
	items := bob.ended(3 * time.Second)
	for _, it := range items {
		if it.Event != nil {
			t.Fatalf("disconnected stream got %+v", it.Event)
		}
	}
	if len(items) == 0 || items[len(items)-1].Comment != disconnectedReason {
		t.Fatalf("disconnected stream got %+v, want a comment saying why", items)
	}
	_, id = c.publish("/publish", "topic=room&data=again")
	if f := bobWS.nextFrame(2 * time.Second); f.ID != id {
		t.Fatalf("bob's websocket got %+v after the other was disconnected", f)
	}
	if n := c.metric("caddy_push_disconnects_total", `hub="default",transport="sse"`); n != 2 {
		t.Fatalf("%v sse disconnects counted, want 2", n)
	}
}

func TestAdminPauseAndPublish(t *testing.T) {
	c := startCaddyAdmin(t, adminSite)
	news := subscribe(t, c.URL+"/events?topic=news", nil)
	sport := subscribe(t, c.URL+"/events?topic=sport", nil)
	var pub struct{ Scope, ID string }
	if status, raw := c.adminDo("POST", "/push/hubs/default/publish", `{"topics":["news","sport"],"event":"note","data":{"x":1}}`, &pub); status != 200 || pub.ID == "" || pub.Scope != ScopeNode {
		t.Fatalf("publish: %d %s", status, raw)
	}
	for _, s := range []*sseClient{news, sport} {
		if ev := s.nextEvent(2 * time.Second); ev.ID != pub.ID || ev.Type != "note" || ev.Data != `{"x":1}` {
			t.Fatalf("got %+v, want %s", ev, pub.ID)
		}
	}
	var answer struct {
		Scope  string `json:"scope"`
		Paused int    `json:"paused"`
	}
	if status, raw := c.adminDo("POST", "/push/hubs/default/pause", `{"topics":["news"],"for":"5m","jitter":"30s"}`, &answer); status != 200 || answer.Paused != 1 || answer.Scope != ScopeNode {
		t.Fatalf("pause: %d %s", status, raw)
	}
	until, _ := pauseOf(t, news.ended(3*time.Second), pub.ID)
	if d := time.Until(until); d < 4*time.Minute || d > 6*time.Minute {
		t.Fatalf("paused for %v, want 5m±30s", d)
	}
	_, id := c.publish("/publish", "topic=sport&data=on")
	if ev := sport.nextEvent(2 * time.Second); ev.ID != id {
		t.Fatalf("the other topic's stream got %+v", ev)
	}
}

// The admin endpoint's publish honours Idempotency-Key as push_publish
// does, in a scope of its own.
func TestAdminPublishIdempotencyKey(t *testing.T) {
	c := startCaddyAdmin(t, adminSite)
	news := subscribe(t, c.URL+"/events?topic=news", nil)
	publish := func(key, body string) (int, string, string, bool) {
		t.Helper()
		req, _ := http.NewRequest("POST", "http://"+c.admin+"/push/hubs/default/publish", strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		if key != "" {
			req.Header.Set("Idempotency-Key", key)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		raw, _ := io.ReadAll(resp.Body)
		var out struct {
			ID       string `json:"id"`
			Replayed bool   `json:"replayed"`
		}
		_ = json.Unmarshal(raw, &out)
		if out.Replayed != (resp.Header.Get("Idempotent-Replayed") == "true") {
			t.Fatalf("replayed %v, header %q", out.Replayed, resp.Header.Get("Idempotent-Replayed"))
		}
		return resp.StatusCode, string(raw), out.ID, out.Replayed
	}
	status, raw, first, replayed := publish("order-1", `{"topic":"news","data":"paid"}`)
	if status != 200 || first == "" || replayed {
		t.Fatalf("first: %d %s", status, raw)
	}
	if status, raw, id, replayed := publish("order-1", `{"topic":"news","data":"paid"}`); status != 200 || id != first || !replayed {
		t.Fatalf("repeat: %d %s", status, raw)
	}
	if status, raw, _, _ := publish("order-1", `{"topic":"news","data":"refunded"}`); status != 422 || !strings.Contains(raw, "different message") {
		t.Fatalf("other message: %d %s", status, raw)
	}
	if status, raw, _, _ := publish(strings.Repeat("k", 256), `{"topic":"news","data":"x"}`); status != 400 || !strings.Contains(raw, "longer than") {
		t.Fatalf("bad key: %d %s", status, raw)
	}
	// push_publish's anonymous publishers are another scope: same key, a new event
	req, _ := http.NewRequest(http.MethodPost, c.URL+"/publish", strings.NewReader("topic=news&data=paid"))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Idempotency-Key", "order-1")
	status, id := do(t, req)
	if status != 200 || id == first {
		t.Fatalf("push_publish's key shared the admin scope: %s", id)
	}
	for _, want := range []string{first, id} {
		if ev := news.nextEvent(2 * time.Second); ev.ID != want {
			t.Fatalf("got %+v, want %s", ev, want)
		}
	}
	news.quiet(300 * time.Millisecond)
}

// Every bad request gets its status and a one-line reason, as Caddy's
// admin API gives them: {"error": "..."}.
func TestAdminErrors(t *testing.T) {
	c := startCaddyAdmin(t, adminSite)
	for _, tc := range []struct {
		method, path, body string
		status             int
		reason             string
	}{
		{"GET", "/push/hubs/nope/topics", "", 404, `unknown hub \"nope\"`},
		{"POST", "/push/hubs/nope/pause", `{"for":"1s"}`, 404, "unknown hub"},
		{"GET", "/push/hubs/default/nothing", "", 404, "no such route"},
		{"GET", "/push/hubs/", "", 404, "no such route"},
		{"POST", "/push/hubs", "", 405, "use GET"},
		{"GET", "/push/hubs/default/pause", "", 405, "use POST"},
		{"DELETE", "/push/hubs/default/disconnect", "", 405, "use POST"},
		{"POST", "/push/hubs/default/topics", "", 405, "use GET"},
		{"POST", "/push/hubs/default/pause", `{"for":`, 400, "decoding request body"},
		{"POST", "/push/hubs/default/pause", `{"for":"5m","topcs":["x"]}`, 400, `unknown field \"topcs\"`},
		{"POST", "/push/hubs/default/pause", `{"for":"soon"}`, 400, "decoding request body"},
		{"POST", "/push/hubs/default/pause", `{}`, 400, "positive duration"},
		{"POST", "/push/hubs/default/pause", `{"for":"1m","fraction":2}`, 400, "fraction"},
		{"POST", "/push/hubs/default/pause", `{"for":"1m","topics":[""]}`, 400, "topic"},
		{"POST", "/push/hubs/default/pause", `{"for":"1m"} {}`, 400, "more than one JSON value"},
		{"POST", "/push/hubs/default/disconnect", `{}`, 400, "a user or a connection"},
		{"POST", "/push/hubs/default/disconnect", `{"user":"a","connection":"b"}`, 400, "not both"},
		{"POST", "/push/hubs/default/disconnect", `{"user":"a","for":"-1s"}`, 400, "negative"},
		{"POST", "/push/hubs/default/disconnect", `[]`, 400, "decoding request body"},
		{"POST", "/push/hubs/default/publish", `{"data":"x"}`, 400, "topic"},
		{"POST", "/push/hubs/default/publish", `nope`, 400, ""},
		{"POST", "/push/hubs/default/publish", `{"topic":"x","data":"` + strings.Repeat("x", DefaultMaxData+1) + `"}`, 413, "larger than"},
		{"POST", "/push/hubs/default/publish", `{"topic":"x","data":"` + strings.Repeat("x", DefaultMaxBody) + `"}`, 413, "larger than"},
		{"GET", "/push/hubs/default/presence", "", 400, "missing topic"},
		{"GET", "/push/hubs/default/presence?topic=a&limit=0", "", 400, "invalid limit"},
		{"GET", "/push/hubs/default/topics?limit=x", "", 400, "invalid limit"},
		{"GET", "/push/hubs/default/topics?limit=100000", "", 400, "invalid limit"},
	} {
		status, raw := c.adminDo(tc.method, tc.path, tc.body, nil)
		var e struct{ Error string }
		if status != tc.status || json.Unmarshal([]byte(raw), &e) != nil || e.Error == "" ||
			strings.Contains(strings.TrimSpace(raw), "\n") || !strings.Contains(raw, tc.reason) {
			t.Errorf("%s %s %.40q: %d %s, want %d with %q", tc.method, tc.path, tc.body, status, raw, tc.status, tc.reason)
		}
	}
	req, _ := http.NewRequest("POST", "http://"+c.admin+"/push/hubs/default/pause", strings.NewReader(`{"for":"1s"}`))
	req.Header.Set("Content-Type", "text/plain")
	resp, err := http.DefaultClient.Do(req) // the admin endpoint: plain HTTP/1.1 in every mode
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 415 {
		t.Errorf("text/plain body: %d, want 415", resp.StatusCode)
	}
}

// With admin off the config loads and serves; the admin endpoint that was
// up before is gone.
func TestAdminOff(t *testing.T) {
	c := startCaddyAdmin(t, adminSite)
	if status, _ := c.adminDo("GET", "/push/hubs", "", nil); status != 200 {
		t.Fatalf("admin on: %d", status)
	}
	addr := c.admin
	c.admin = ""
	c.Load(adminSite)
	s := subscribe(t, c.URL+"/events?topic=news", nil)
	_, id := c.publish("/publish", "topic=news&data=x")
	if ev := s.nextEvent(2 * time.Second); ev.ID != id {
		t.Fatalf("got %+v", ev)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		conn, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			break
		}
		conn.Close()
		if time.Now().After(deadline) {
			t.Fatal("the admin endpoint still answers with admin off")
		}
		time.Sleep(50 * time.Millisecond)
	}
}
