package push

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"reflect"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// authorizeSite's endpoints ask the app at APP/authorize.
const authorizeSite = `
http://127.0.0.1:PORT {
	push_sse /events {
		authorize APP/authorize
	}
	push_sse /fresh {
		authorize APP/authorize {
			cache 0
			timeout 200ms
		}
	}
	push_sse /keyed {
		authorize APP/authorize {
			headers X-Api-Key
		}
	}
	push_sse /limited {
		max_connections 1
		authorize APP/authorize
	}
	push_sse /room {
		topics room
		presence
		authorize APP/authorize
	}
	push_ws /ws {
		topics room
		presence
		publish chat/{http.push.user}
		authorize APP/authorize
	}
	push_sse /plain
	push_publish /publish {
		anonymous
	}
}`

func startAuthorizeCaddy(t *testing.T, app *testApp) *testCaddy {
	t.Helper()
	return startCaddy(t, strings.ReplaceAll(authorizeSite, "APP", app.URL))
}

// appSays is an app that always says status and body.
func appSays(status int, body string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(body, "{") {
			w.Header().Set("Content-Type", "application/json")
		}
		w.WriteHeader(status)
		_, _ = io.WriteString(w, body)
	}
}

// authorizeAsked decodes the bodies the app got.
func authorizeAsked(t testing.TB, reqs []appRequest) []authorizeRequest {
	t.Helper()
	out := make([]authorizeRequest, len(reqs))
	for i, r := range reqs {
		if err := json.Unmarshal(r.Body, &out[i]); err != nil {
			t.Fatalf("the app got %s: %v", r.Body, err)
		}
	}
	return out
}

func TestAuthorizeCaddyfile(t *testing.T) {
	for _, tc := range []struct {
		name, input string
		want        *AuthorizeHook
		err         string
	}{
		{name: "url", input: "authorize http://app/auth", want: &AuthorizeHook{Hook: Hook{URLs: []string{"http://app/auth"}}}},
		{
			name:  "all options",
			input: "authorize http://a/auth https://b/auth {\n\t\ttimeout 1s\n\t\tcache 0\n\t\theaders Cookie X-Api-Key\n\t}",
			want:  &AuthorizeHook{Hook: Hook{URLs: []string{"http://a/auth", "https://b/auth"}, Timeout: dur(time.Second)}, Cache: durPtr(0), Headers: []string{"Cookie", "X-Api-Key"}},
		},
		{name: "no url", input: "authorize", err: "authorize needs the app's URL"},
		{name: "unknown option", input: "authorize http://a {\n\t\tretries 3\n\t}", err: "unrecognized authorize option 'retries'"},
		{name: "cache twice", input: "authorize http://a {\n\t\tcache 1s\n\t\tcache 2s\n\t}", err: "authorize option 'cache' given more than once"},
		{name: "headers without names", input: "authorize http://a {\n\t\theaders\n\t}", err: "wrong argument count"},
		{name: "bad cache", input: "authorize http://a {\n\t\tcache soon\n\t}", err: "invalid cache 'soon'"},
	} {
		for _, directive := range []string{"push_sse", "push_ws", "push_mercure"} {
			t.Run(directive+" "+tc.name, func(t *testing.T) {
				input := directive + " {\n\t" + tc.input + "\n}"
				d := caddyfile.NewTestDispenser(input)
				var got *AuthorizeHook
				var err error
				switch directive {
				case "push_sse":
					var h SSEHandler
					err = h.UnmarshalCaddyfile(d)
					got = h.Authorize
				case "push_ws":
					var h WSHandler
					err = h.UnmarshalCaddyfile(d)
					got = h.Authorize
				default:
					var h MercureHandler
					err = h.UnmarshalCaddyfile(d)
					got = h.Authorize
				}
				if checkErr(t, input, err, tc.err) && !reflect.DeepEqual(got, tc.want) {
					t.Errorf("got %+v, want %+v", got, tc.want)
				}
			})
		}
	}

	// defaults, and what provisioning refuses
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	h := &AuthorizeHook{Hook: Hook{URLs: []string{"http://app"}}, Headers: []string{"x-api-key"}}
	if err := h.provision(ctx, zap.NewNop()); err != nil || h.ttl != DefaultAuthorizeCache || h.Timeout != caddy.Duration(DefaultHookTimeout) || !slices.Equal(h.Headers, []string{"X-Api-Key"}) {
		t.Errorf("defaults: %v %v %v %v", h.ttl, h.Timeout, h.Headers, err)
	}
	h.cleanup()
	h = &AuthorizeHook{Hook: Hook{URLs: []string{"http://app"}}, Cache: durPtr(0)}
	if err := h.provision(ctx, zap.NewNop()); err != nil || h.ttl != 0 || !slices.Equal(h.Headers, []string{"Cookie", "Authorization"}) {
		t.Errorf("cache 0, default headers: %v %v %v", h.ttl, h.Headers, err)
	}
	for hook, want := range map[string]string{
		`{}`:                                      "authorize needs the app's URL",
		`{"urls":["app:80"]}`:                     `authorize: "app:80" is not an http or https URL`,
		`{"urls":["http://a"],"cache":-1}`:        "authorize: cache must not be negative",
		`{"urls":["http://a"],"headers":[""]}`:    `authorize: "" is not a header name`,
		`{"urls":["http://a"],"headers":["A B"]}`: `authorize: "A B" is not a header name`,
	} {
		cfg := `{"apps":{"http":{"servers":{"s":{"listen":["127.0.0.1:0"],"routes":[{"handle":[{"handler":"push_sse","authorize":` + hook + `}]}]}}}}}`
		if err := caddyValidate([]byte(cfg)); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want %q", hook, err, want)
		}
	}
}

// {} admits the client with the topics it asked for; the app gets the
// request's transport, topics, address, path and host, with its Cookie and
// Authorization headers and no other; "topics" narrows, never widens.
func TestAuthorizeAdmitsAndNarrows(t *testing.T) {
	app := startTestApp(t)
	c := startAuthorizeCaddy(t, app)
	app.handle("/authorize", appSays(200, `{}`))

	s := subscribe(t, c.URL+"/events?topic=b&topic=a", http.Header{
		"Cookie": {"session=alice"}, "Authorization": {"Bearer t0k"}, "X-Other": {"secret"},
	})
	if s.Resp.StatusCode != 200 {
		t.Fatalf("admitted: %d", s.Resp.StatusCode)
	}
	reqs := app.requests("/authorize")
	if len(reqs) != 1 {
		t.Fatalf("the app got %d calls, want 1", len(reqs))
	}
	got := authorizeAsked(t, reqs)[0]
	host := strings.TrimPrefix(strings.TrimPrefix(c.URL, "http://"), "https://")
	if want := (authorizeRequest{Transport: "sse", Topics: []string{"a", "b"}, RemoteAddr: "127.0.0.1", Path: "/events", Host: host}); !reflect.DeepEqual(got, want) {
		t.Errorf("the app got %+v, want %+v", got, want)
	}
	hdr := reqs[0].Header
	if hdr.Get("Cookie") != "session=alice" || hdr.Get("Authorization") != "Bearer t0k" || hdr.Get("X-Other") != "" {
		t.Errorf("the app got the headers %v", hdr)
	}
	_, id := c.publish("/publish", "topic=a&data=1")
	if ev := s.nextEvent(2 * time.Second); ev.ID != id {
		t.Fatalf("admitted client got %+v", ev)
	}

	// narrowed to a; c, which was not asked for, is not added
	app.handle("/authorize", appSays(200, `{"topics":["a","c"]}`))
	n := subscribe(t, c.URL+"/events?topic=a&topic=b", header("Cookie", "session=bob"))
	if n.Resp.StatusCode != 200 {
		t.Fatalf("narrowed: %d", n.Resp.StatusCode)
	}
	c.publish("/publish", "topic=b&data=not-for-bob")
	c.publish("/publish", "topic=c&data=not-for-bob")
	_, id = c.publish("/publish", "topic=a&data=for-bob")
	if ev := n.nextEvent(2 * time.Second); ev.ID != id {
		t.Fatalf("narrowed client got %+v first, want %s", ev, id)
	}

	// narrowed to nothing: refused
	for i, body := range []string{`{"topics":[]}`, `{"topics":["c"]}`} {
		app.handle("/authorize", appSays(200, body))
		req := mustRequest(t, "GET", c.URL+"/events?topic=a")
		req.Header.Set("Cookie", "session="+string(rune('c'+i)))
		st, reason := do(t, req)
		if st != 403 || !strings.Contains(reason, "none of the topics") {
			t.Errorf("%s: %d %q, want 403 with a reason", body, st, reason)
		}
	}
}

// A 4xx refuses the client with that status and the app's reason, JSON or
// text; a 401's challenge passes on. A request over a connection limit is
// refused without asking the app.
func TestAuthorizeRefuses(t *testing.T) {
	app := startTestApp(t)
	c := startAuthorizeCaddy(t, app)
	for i, tc := range []struct {
		status      int
		body, want  string
		challenge   string
		contentType string
	}{
		{status: 403, body: `{"reason":"not a member of this room"}`, want: "not a member of this room"},
		{status: 403, body: "plain\ntext  reason", want: "plain text reason"},
		{status: 401, body: `{"reason":"log in first"}`, want: "log in first", challenge: `Bearer realm="app"`},
		{status: 404, body: "", want: "Not Found"},
	} {
		app.handle("/authorize", func(w http.ResponseWriter, r *http.Request) {
			if tc.challenge != "" {
				w.Header().Set("WWW-Authenticate", tc.challenge)
			}
			appSays(tc.status, tc.body)(w, r)
		})
		req := mustRequest(t, "GET", c.URL+"/events?topic=a")
		req.Header.Set("Accept", "text/event-stream") // a refusal is final, even for an EventSource
		req.Header.Set("Cookie", "case="+string(rune('a'+i)))
		resp, err := testClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tc.status || strings.TrimSpace(string(b)) != tc.want || resp.Header.Get("WWW-Authenticate") != tc.challenge {
			t.Errorf("app %d %q: got %d %q %v, want %d %q", tc.status, tc.body, resp.StatusCode, b, resp.Header, tc.status, tc.want)
		}
	}

	app.handle("/authorize", appSays(200, `{}`))
	first := subscribe(t, c.URL+"/limited?topic=a", header("Cookie", "one"))
	if first.Resp.StatusCode != 200 {
		t.Fatalf("first: %d", first.Resp.StatusCode)
	}
	calls := len(app.requests("/authorize"))
	over := subscribe(t, c.URL+"/limited?topic=a", header("Cookie", "two"))
	if over.Resp.StatusCode != 503 || len(app.requests("/authorize")) != calls {
		t.Errorf("over the limit: %d, and the app was asked %d times more", over.Resp.StatusCode, len(app.requests("/authorize"))-calls)
	}
}

// The app down, slow, failing or answering what is not JSON: 503 with
// Retry-After, or for an EventSource the pause the overload path gives.
func TestAuthorizeUnavailable(t *testing.T) {
	app := startTestApp(t)
	c := startAuthorizeCaddy(t, app)
	for name, h := range map[string]http.HandlerFunc{
		"failing":   appSays(500, "oops"),
		"redirects": appSays(302, ""),
		"not JSON":  appSays(200, "<html>welcome</html>"),
		"bad JSON":  appSays(200, `{"topics":"a"}`),
		"slow": func(w http.ResponseWriter, r *http.Request) {
			select {
			case <-r.Context().Done():
			case <-time.After(2 * time.Second):
			}
		},
	} {
		app.handle("/authorize", h)
		start := time.Now()
		s := subscribe(t, c.URL+"/fresh?topic=a", nil)
		if s.Resp.StatusCode != 503 || s.Resp.Header.Get("Retry-After") != "5" || time.Since(start) > time.Second {
			t.Errorf("%s: %d %v after %v, want 503 with Retry-After 5 at once", name, s.Resp.StatusCode, s.Resp.Header, time.Since(start))
		}
		s.Close()

		es := subscribe(t, c.URL+"/fresh?topic=a", header("Accept", "text/event-stream"))
		if es.Resp.StatusCode != 200 {
			t.Fatalf("%s, as EventSource: %d, want 200 and a pause", name, es.Resp.StatusCode)
		}
		until, _ := pauseOf(t, es.ended(2*time.Second), "")
		if d := time.Until(until); d < 3*time.Second || d > 6*time.Second {
			t.Errorf("%s: paused until %v from now, want about 5s", name, d)
		}
	}

	app.Close()
	if s := subscribe(t, c.URL+"/events?topic=a", nil); s.Resp.StatusCode != 503 || s.Resp.Header.Get("Retry-After") != "5" {
		t.Errorf("app down: %d %v", s.Resp.StatusCode, s.Resp.Header)
	}
}

// What a 200 may hold: anything that is not a JSON object with the
// expected fields is a failure, logged clearly, never a panic.
func TestAuthorizeAnswers(t *testing.T) {
	asked := []string{"a", "b"}
	for body, want := range map[string]authorization{
		`{}`:                           {Topics: asked},
		` {"user":"alice","x":1} `:     {Topics: asked, User: "alice"},
		`{"topics":null}`:              {Topics: asked},
		`{"topics":["b","z"]}`:         {Topics: []string{"b"}},
		`{"topics":["z"]}`:             {Status: 403, Reason: "none of the topics asked for may be followed"},
		`{"meta":{"plan": "pro"}}`:     {Topics: asked, Meta: json.RawMessage(`{"plan":"pro"}`)},
		`{"meta":null,"user":"Zoë 🎉"}`: {Topics: asked, User: "Zoë 🎉"},
		`{"user":"` + strings.Repeat("u", maxAuthorizeUser) + `"}`: {Topics: asked, User: strings.Repeat("u", maxAuthorizeUser)},
	} {
		got, err := readAuthorization([]byte(body), asked)
		if err != nil || !reflect.DeepEqual(got, want) {
			t.Errorf("%s: %+v %v, want %+v", body, got, err, want)
		}
	}
	for body, want := range map[string]string{
		``:                "must hold a JSON object",
		`null`:            "must hold a JSON object",
		`[]`:              "must hold a JSON object",
		`{"topics":"a"}`:  "reading the 200: json: cannot unmarshal",
		`{"user":1}`:      "reading the 200: json: cannot unmarshal",
		`{"user":"a`:      "reading the 200: unexpected end of JSON input",
		`{"user":"a\nb"}`: "control characters",
		`{"user":"` + strings.Repeat("u", maxAuthorizeUser+1) + `"}`: "longer than 256 bytes",
		`{"meta":"pro"}`: "meta must be a JSON object",
		`{"meta":{"x":"` + strings.Repeat("x", maxAuthorizeMeta) + `"}}`: "meta is larger than 4096 bytes",
	} {
		if got, err := readAuthorization([]byte(body), asked); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%.40s: %+v %v, want an error with %q", body, got, err, want)
		}
	}

	// the log line says what happened
	app := startTestApp(t)
	app.handle("/authorize", appSays(200, "<html>"))
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	core, logs := observer.New(zapcore.InfoLevel)
	h := &AuthorizeHook{Hook: Hook{URLs: []string{app.URL + "/authorize"}}}
	if err := h.provision(ctx, zap.New(core)); err != nil {
		t.Fatal(err)
	}
	defer h.cleanup()
	r := httptest.NewRequest("GET", "/events?topic=a", nil)
	if _, err := h.ask(r, TransportSSE, []string{"a"}); err == nil {
		t.Fatal("an HTML 200 admitted")
	}
	app.Close()
	if _, err := h.ask(r, TransportSSE, []string{"b"}); err == nil {
		t.Fatal("no app, admitted")
	}
	var msgs []string
	for _, e := range logs.All() {
		msgs = append(msgs, e.Message+" "+e.ContextMap()["error"].(string))
	}
	if len(msgs) != 2 || !strings.Contains(msgs[0], "answer is not one authorize takes") || !strings.Contains(msgs[0], `"<html>"`) || !strings.Contains(msgs[1], "did not answer") {
		t.Errorf("logged %q", msgs)
	}
}

// Answers are reused per credentials and topics: reconnects do not call
// the app again, another cookie or other topics do, failures are not
// kept, and clients asking at once share one call.
func TestAuthorizeCache(t *testing.T) {
	app := startTestApp(t)
	c := startAuthorizeCaddy(t, app)
	app.handle("/authorize", appSays(200, `{}`))
	calls := func() int { return len(app.requests("/authorize")) }

	for range 5 {
		s := subscribe(t, c.URL+"/events?topic=a", header("Cookie", "session=alice"))
		if s.Resp.StatusCode != 200 {
			t.Fatalf("reconnect: %d", s.Resp.StatusCode)
		}
		s.Close()
	}
	if n := calls(); n != 1 {
		t.Fatalf("5 connects with one cookie: %d calls, want 1", n)
	}
	// a reload keeps the answers, for the clients it sends back
	c.Load(strings.ReplaceAll(authorizeSite, "APP", app.URL))
	if s := subscribe(t, c.URL+"/events?topic=a", header("Cookie", "session=alice")); s.Resp.StatusCode != 200 || calls() != 1 {
		t.Fatalf("after a reload: %d, %d calls, want 200 and still 1", s.Resp.StatusCode, calls())
	}
	subscribe(t, c.URL+"/events?topic=a", header("Cookie", "session=bob")).Close()
	subscribe(t, c.URL+"/events?topic=b", header("Cookie", "session=alice")).Close()
	if n := calls(); n != 3 {
		t.Fatalf("another cookie, other topics: %d calls, want 3", n)
	}
	// refusals are kept too
	app.handle("/authorize", appSays(403, "no"))
	for range 3 {
		if st, _ := do(t, mustRequest(t, "GET", c.URL+"/events?topic=a&x")); st != 403 {
			t.Fatalf("refused: %d", st)
		}
	}
	if n := calls(); n != 4 {
		t.Fatalf("3 refused connects: %d calls, want 4", n)
	}
	// failures are not: the app is asked again, and its answer then kept
	var fail atomic.Bool
	fail.Store(true)
	app.handle("/authorize", func(w http.ResponseWriter, r *http.Request) {
		if fail.Load() {
			appSays(500, "down")(w, r)
			return
		}
		appSays(200, `{}`)(w, r)
	})
	hdr := header("Cookie", "session=carol")
	for range 2 {
		if s := subscribe(t, c.URL+"/events?topic=a", hdr); s.Resp.StatusCode != 503 {
			t.Fatalf("failing app: %d", s.Resp.StatusCode)
		}
	}
	fail.Store(false)
	for range 2 {
		if s := subscribe(t, c.URL+"/events?topic=a", hdr); s.Resp.StatusCode != 200 {
			t.Fatalf("app back: %d", s.Resp.StatusCode)
		}
	}
	if n := calls(); n != 7 {
		t.Fatalf("2 failures, then 2 connects: %d calls in all, want 7", n)
	}
	// the cache is per the configured headers: X-Api-Key tells clients
	// apart on /keyed, a cookie does not
	subscribe(t, c.URL+"/keyed?topic=a", http.Header{"X-Api-Key": {"k1"}, "Cookie": {"a"}}).Close()
	subscribe(t, c.URL+"/keyed?topic=a", http.Header{"X-Api-Key": {"k1"}, "Cookie": {"b"}}).Close()
	subscribe(t, c.URL+"/keyed?topic=a", http.Header{"X-Api-Key": {"k2"}}).Close()
	reqs := app.requests("/authorize")
	if n := len(reqs); n != 9 || reqs[8].Header.Get("X-Api-Key") != "k2" || reqs[8].Header.Get("Cookie") != "" {
		t.Fatalf("/keyed: %d calls in all, want 9, the last with X-Api-Key only: %v", n, reqs[n-1].Header)
	}
	// cache 0: every connect asks
	for range 3 {
		subscribe(t, c.URL+"/fresh?topic=a", hdr).Close()
	}
	if n := calls(); n != 12 {
		t.Fatalf("cache 0: %d calls in all, want 12", n)
	}

	// a storm: 20 clients at once with the same credentials, one call
	release := make(chan struct{})
	var once sync.Once
	t.Cleanup(func() { once.Do(func() { close(release) }) }) // the app's handlers end, even on failure
	app.handle("/authorize", func(w http.ResponseWriter, r *http.Request) {
		<-release
		appSays(200, `{}`)(w, r)
	})
	var wg sync.WaitGroup
	statuses := make(chan int, 20)
	for range 20 {
		wg.Go(func() {
			s := subscribeWith(t, testClient, c.URL+"/events?topic=storm", header("Cookie", "session=dave"))
			statuses <- s.Resp.StatusCode
			s.Close()
		})
	}
	waitFor(t, 2*time.Second, func() bool { return calls() >= 13 })
	time.Sleep(100 * time.Millisecond) // the others wait for that call
	once.Do(func() { close(release) })
	wg.Wait()
	close(statuses)
	for st := range statuses {
		if st != 200 {
			t.Errorf("storm: %d", st)
		}
	}
	if n := calls(); n != 13 {
		t.Fatalf("20 clients at once: %d calls, want 1", n-12)
	}
}

// The user the app names is the connection's user in presence, and
// {http.push.user} in publish templates; meta is kept with the member.
func TestAuthorizeUser(t *testing.T) {
	app := startTestApp(t)
	c := startAuthorizeCaddy(t, app)
	app.handle("/authorize", func(w http.ResponseWriter, r *http.Request) {
		user := strings.TrimPrefix(r.Header.Get("Cookie"), "session=")
		appSays(200, `{"user":"`+user+`","meta":{"plan":"pro","user":"`+user+`"}}`)(w, r)
	})
	alice := subscribe(t, c.URL+"/room", header("Cookie", "session=alice"))
	if ev := firstSSEEvent(t, alice); ev.Type != "push.presence" || !strings.Contains(ev.Data, `"user":"alice"`) {
		t.Fatalf("alice's snapshot: %+v", ev)
	}
	if ev := alice.nextEvent(2 * time.Second); ev.Type != "push.join" || !strings.Contains(ev.Data, `"user":"alice"`) {
		t.Fatalf("alice's own join: %+v", ev)
	}
	bob := mustDialWS(t, c.URL+"/ws", header("Cookie", "session=bob"))
	if f := bob.nextFrame(2 * time.Second); f.Event != "push.presence" || !strings.Contains(f.Data, `"user":"alice"`) || !strings.Contains(f.Data, `"user":"bob"`) {
		t.Fatalf("bob's snapshot: %+v", f)
	}
	if ev := alice.nextEvent(2 * time.Second); ev.Type != "push.join" || !strings.Contains(ev.Data, `"user":"bob"`) {
		t.Fatalf("alice saw %+v, want bob's join", ev)
	}
	hub, _ := LookupHub("default")
	members, _, _, err := hub.members(context.Background(), "room", 10, true)
	if err != nil || len(members) != 2 {
		t.Fatalf("members: %+v %v", members, err)
	}
	for _, m := range members {
		if string(m.Meta) != `{"plan":"pro","user":"`+m.User+`"}` {
			t.Errorf("%s's meta: %s", m.User, m.Meta)
		}
	}

	// bob's messages go to chat/bob
	chat := subscribe(t, c.URL+"/plain?topic=chat/bob", nil)
	bob.send("hello")
	if ev := chat.nextEvent(2 * time.Second); ev.Data != "hello" {
		t.Fatalf("chat/bob got %+v", ev)
	}
	if reqs := authorizeAsked(t, app.requests("/authorize")); reqs[1].Transport != "ws" || !slices.Equal(reqs[1].Topics, []string{"room"}) {
		t.Errorf("the app got %+v for bob", reqs[1])
	}
}

// A WebSocket client is refused before the upgrade, with the app's
// status and reason as an HTTP answer.
func TestAuthorizeWebSocket(t *testing.T) {
	app := startTestApp(t)
	c := startAuthorizeCaddy(t, app)
	app.handle("/authorize", appSays(403, `{"reason":"banned"}`))
	ws, err := dialWS(t, c.URL+"/ws", header("Cookie", "session=mallory"))
	if err == nil || ws.Resp == nil || ws.Resp.StatusCode != 403 {
		t.Fatalf("refused: %v %+v", err, ws.Resp)
	}
	if b, _ := io.ReadAll(ws.Resp.Body); strings.TrimSpace(string(b)) != "banned" {
		t.Errorf("reason %q", b)
	}
	app.handle("/authorize", appSays(503, ""))
	ws, err = dialWS(t, c.URL+"/ws", header("Cookie", "session=eve"))
	if err == nil || ws.Resp == nil || ws.Resp.StatusCode != 503 || ws.Resp.Header.Get("Retry-After") != "5" {
		t.Fatalf("app unavailable: %v %+v", err, ws.Resp)
	}
}

// push_mercure asks the app about a subscription's selectors, exact topics
// and patterns alike, as text; those it leaves out are not followed.
func TestAuthorizeMercure(t *testing.T) {
	app := startTestApp(t)
	c := startCaddy(t, `
http://127.0.0.1:PORT {
	push_mercure {
		publisher_jwt `+testSecret+`
		anonymous
		authorize `+app.URL+`/mercure
	}
}`)
	book, author := "https://example.com/books/1", "https://example.com/authors/{id}"
	app.handle("/mercure", appSays(200, `{"topics":["`+book+`"],"user":"reader"}`))
	s := subscribe(t, c.mercureURL("match", book, "match_uritemplate", author), header("Cookie", "session=reader"))
	if s.Resp.StatusCode != 200 {
		t.Fatalf("subscribe: %d", s.Resp.StatusCode)
	}
	got := authorizeAsked(t, app.requests("/mercure"))
	if len(got) != 1 || got[0].Transport != "mercure" || !slices.Equal(got[0].Topics, []string{author, book}) || got[0].Path != DefaultMercurePath {
		t.Fatalf("the app got %+v", got)
	}
	pub := mercurePublisherToken(t, "*")
	c.mercurePublish(pub, url.Values{"topic": {"https://example.com/authors/7"}, "data": {"not followed"}})
	_, id, _ := c.mercurePublish(pub, url.Values{"topic": {book}, "data": {"followed"}})
	if ev := s.nextEvent(2 * time.Second); ev.ID != id {
		t.Fatalf("got %+v, want %s", ev, id)
	}

	app.handle("/mercure", appSays(403, "no books for you"))
	st, body := do(t, mustRequest(t, "GET", c.mercureURL("match", book)))
	if st != 403 || strings.TrimSpace(body) != "no books for you" {
		t.Errorf("refused: %d %q", st, body)
	}
}
