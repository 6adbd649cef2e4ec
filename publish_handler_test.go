package push

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"go.uber.org/zap"
)

const tokenSite = `
http://127.0.0.1:PORT {
	push_sse /events
	push_publish /publish {
		token {env.PUSH_TEST_TOKEN}
		max_body 1KiB
		max_data 300
	}
	push_publish /open {
		anonymous
	}
}
`

func TestPublishErrors(t *testing.T) {
	t.Setenv("PUSH_TEST_TOKEN", "s3cret")
	c := startCaddy(t, tokenSite)
	// every topic any case below names; none may receive anything
	watch := subscribe(t, c.URL+"/events?topic=a&topic=b&topic=c", nil)
	const form, json = "application/x-www-form-urlencoded", "application/json"
	auth := "Bearer s3cret"
	cases := []struct {
		name, method, path, auth, ctype, body string
		status                                int
		reason                                string
	}{
		{"get", "GET", "/publish", auth, form, "", 405, "POST"},
		{"no token", "POST", "/publish", "", form, "topic=a&data=x", 401, "bearer token"},
		{"wrong token", "POST", "/publish", "Bearer nope", form, "topic=a&data=x", 401, "bearer token"},
		{"basic scheme", "POST", "/publish", "Basic czNjcmV0", form, "topic=a&data=x", 401, "bearer token"},
		{"token prefix", "POST", "/publish", "Bearer s3cre", form, "topic=a&data=x", 401, "bearer token"},
		{"text/plain", "POST", "/publish", auth, "text/plain", "topic=a", 415, "content type"},
		{"no content type", "POST", "/publish", auth, "", "topic=a", 415, "content type"},
		{"too large", "POST", "/publish", auth, form, "topic=a&data=" + strings.Repeat("x", 2000), 413, "larger than 1024"},
		{"data too large", "POST", "/publish", auth, json, `{"topic":"a","data":"` + strings.Repeat("x", 301) + `"}`, 413, "data is larger than 300"},
		{"escaped data too large", "POST", "/publish", auth, form, "topic=a&data=" + strings.Repeat("%C3%A9", 160), 413, "data is larger than 300"},
		{"no topic", "POST", "/publish", auth, form, "data=x", 400, "no topic"},
		{"empty topic", "POST", "/publish", auth, form, "topic=&data=x", 400, "empty topic"},
		{"long topic", "POST", "/publish", auth, form, "topic=" + strings.Repeat("t", 257), 400, "longer than 256"},
		{"control in topic", "POST", "/publish", auth, form, "topic=a%0Ab", 400, "control"},
		{"bad utf-8 data", "POST", "/publish", auth, form, "topic=a&data=%ff", 400, "UTF-8"},
		{"newline in type", "POST", "/publish", auth, form, "topic=a&type=x%0Adata:y", 400, "event type"},
		{"retry word", "POST", "/publish", auth, form, "topic=a&retry=soon", 400, "retry"},
		{"retry negative", "POST", "/publish", auth, form, "topic=a&retry=-1", 400, "retry"},
		{"data twice", "POST", "/publish", auth, form, "topic=a&data=1&data=2", 400, "more than once"},
		{"unknown field", "POST", "/publish", auth, form, "topic=a&colour=red", 400, "unknown field"},
		{"id of the hub's form", "POST", "/publish", auth, form, "topic=a&id=abc-7", 400, "form of the hub's own ids"},
		{"bad escape", "POST", "/publish", auth, form, "topic=a&data=%zz", 400, "malformed form"},
		{"semicolon", "POST", "/publish", auth, form, "topic=a;data=x", 400, "malformed form body: invalid semicolon"},
		{"malformed before a bad field", "POST", "/publish", auth, form, "colour=red&data=%zz", 400, `malformed form body: invalid URL escape "%zz"`},
		{"the first bad field", "POST", "/publish", auth, form, "topic=a&colour=red&id=7&data=1&data=2", 400, `unknown field "colour"`},
		{"json syntax", "POST", "/publish", auth, json, `{"topic":"a",`, 400, "invalid JSON"},
		{"json topics type", "POST", "/publish", auth, json, `{"topics":"a"}`, 400, "invalid JSON"},
		{"json retry type", "POST", "/publish", auth, json, `{"topic":"a","retry":"1"}`, 400, "invalid JSON"},
		{"json retry fraction", "POST", "/publish", auth, json, `{"topic":"a","retry":1.5}`, 400, "invalid JSON"},
		{"json retry negative", "POST", "/publish", auth, json, `{"topic":"a","retry":-5}`, 400, "retry"},
		{"json unknown field", "POST", "/publish", auth, json, `{"topic":"a","x":1}`, 400, "unknown field"},
		{"json two values", "POST", "/publish", auth, json, `{"topic":"a"}{"topic":"b"}`, 400, "more than one"},
		{"json bad utf-8", "POST", "/publish", auth, json, "{\"topic\":\"a\",\"data\":\"\xff\"}", 400, "UTF-8"},
		{"json array", "POST", "/publish", auth, json, `["a"]`, 400, "invalid JSON"},
		{"json no topic", "POST", "/publish", auth, json, `{"data":"x"}`, 400, "no topic"},
	}
	for _, tc := range cases {
		req, _ := http.NewRequest(tc.method, c.URL+tc.path, strings.NewReader(tc.body))
		if tc.auth != "" {
			req.Header.Set("Authorization", tc.auth)
		}
		if tc.ctype != "" {
			req.Header.Set("Content-Type", tc.ctype)
		}
		resp, err := testClient.Do(req)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		body := string(b)
		if resp.StatusCode != tc.status || !strings.Contains(body, tc.reason) ||
			!strings.HasSuffix(body, "\n") || strings.Count(body, "\n") != 1 ||
			!strings.HasPrefix(resp.Header.Get("Content-Type"), "text/plain") {
			t.Errorf("%s: %d %q, want %d with a one-line reason containing %q",
				tc.name, resp.StatusCode, body, tc.status, tc.reason)
		}
		if tc.status == 401 && resp.Header.Get("WWW-Authenticate") == "" {
			t.Errorf("%s: 401 without WWW-Authenticate", tc.name)
		}
		if tc.status == 405 && resp.Header.Get("Allow") != "POST" {
			t.Errorf("%s: 405 without Allow: POST", tc.name)
		}
	}
	watch.quiet(100 * time.Millisecond)
}

// A body with no Content-Length is cut off at the limit too.
func TestPublishChunkedBodyOverLimit(t *testing.T) {
	t.Setenv("PUSH_TEST_TOKEN", "s3cret")
	c := startCaddy(t, tokenSite)
	pr, pw := io.Pipe()
	go func() {
		_, _ = io.WriteString(pw, "topic=a&data="+strings.Repeat("x", 4096))
		pw.Close()
	}()
	req, _ := http.NewRequest("POST", c.URL+"/publish", pr)
	req.Header.Set("Authorization", "Bearer s3cret")
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	if status, body := do(t, req); status != 413 {
		t.Fatalf("%d %q, want 413", status, body)
	}
}

func TestPublishAccepted(t *testing.T) {
	t.Setenv("PUSH_TEST_TOKEN", "s3cret")
	c := startCaddy(t, tokenSite)
	s := subscribe(t, c.URL+"/events?topic=a&topic=b", nil)
	cases := []struct {
		ctype, body string
		want        sseEvent
	}{
		{"application/x-www-form-urlencoded", "topic=a&topic=b&data=hi&type=greet&retry=900",
			sseEvent{Type: "greet", Data: "hi", Retry: 900}},
		{"application/x-www-form-urlencoded; charset=utf-8", "topic=a&data=%C3%A9t%C3%A9",
			sseEvent{Type: "message", Data: "été", Retry: 900}},
		{"application/json", `{"topic":"a","data":"text"}`,
			sseEvent{Type: "message", Data: "text", Retry: 900}},
		{"application/json", `{"topics":["a","b"],"event":"obj","data":{ "x" : [1, 2] }}`,
			sseEvent{Type: "obj", Data: `{"x":[1,2]}`, Retry: 900}},
		{"application/json", `{"topics":["b"],"data":42,"retry":1200}`,
			sseEvent{Type: "message", Data: "42", Retry: 1200}},
		{"application/json", `{"topic":"a"}`,
			sseEvent{Type: "message", Data: "", Retry: 1200}},
	}
	for _, tc := range cases {
		req, _ := http.NewRequest("POST", c.URL+"/publish", strings.NewReader(tc.body))
		req.Header.Set("Content-Type", tc.ctype)
		req.Header.Set("Authorization", "bearer s3cret")
		resp, err := testClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		id := string(b)
		if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/plain; charset=utf-8" {
			t.Fatalf("%s: %d %q", tc.body, resp.StatusCode, id)
		}
		tc.want.ID = id
		if ev := s.nextEvent(time.Second); ev != tc.want {
			t.Fatalf("%s: got %+v, want %+v", tc.body, ev, tc.want)
		}
	}
	// a route without token accepts anyone
	if status, _ := c.publish("/open", "topic=a&data=x"); status != 200 {
		t.Fatalf("open route: %d", status)
	}
}

func TestPublishIDsIncrease(t *testing.T) {
	c := startCaddy(t, basicSite)
	ids := c.publishN("x", 20)
	epoch, prev, _ := ParseID(ids[0])
	for _, id := range ids[1:] {
		e, seq, ok := ParseID(id)
		if !ok || e != epoch || seq <= prev {
			t.Fatalf("id %s after seq %d", id, prev)
		}
		prev = seq
	}
}

func TestPublishTokenMustNotBeEmpty(t *testing.T) {
	t.Setenv("PUSH_TEST_TOKEN", "")
	cfg := adapt(t, "{\n\tadmin off\n}\n"+strings.ReplaceAll(tokenSite, "PORT", freePort(t)))
	if err := caddyValidate(cfg); err == nil || !strings.Contains(err.Error(), "empty") {
		t.Fatalf("got %v, want an error about the empty token", err)
	}
}

// The Go API publishes to a running hub by name.
func TestLookupHubPublish(t *testing.T) {
	c := startCaddy(t, basicSite)
	s := subscribe(t, c.URL+"/news", nil)
	hub, ok := LookupHub("default")
	if !ok {
		t.Fatal("no default hub")
	}
	id, err := hub.Publish(context.Background(), Message{Topics: []string{"news"}, Type: "go", Data: "api"})
	if err != nil {
		t.Fatal(err)
	}
	if ev := s.nextEvent(time.Second); ev.ID != id || ev.Type != "go" {
		t.Fatalf("got %+v", ev)
	}
	if _, err := hub.Publish(context.Background(), Message{Topics: []string{""}}); err == nil {
		t.Fatal("empty topic accepted")
	}
	if _, ok := LookupHub("nope"); ok {
		t.Fatal("found a hub that does not exist")
	}
}

func TestPublishJWT(t *testing.T) {
	t.Setenv("PUSH_TEST_JWT", testSecret)
	c := startCaddy(t, `
http://127.0.0.1:PORT {
	push_sse /events
	push_publish /publish {
		jwt_key {env.PUSH_TEST_JWT}
	}
}`)
	watch := subscribe(t, c.URL+"/events?topic=news&topic=chat/1", nil)
	chat := hs256(t, jwt.MapClaims{"push": map[string]any{"publish": []string{"chat/*"}}})
	mercure := hs256(t, jwt.MapClaims{"mercure": map[string]any{"publish": []string{"*"}}})
	expired := hs256(t, jwt.MapClaims{"exp": time.Now().Add(-time.Hour).Unix(), "push": map[string]any{"publish": []string{"*"}}})
	send := func(body string, set func(*http.Request)) (int, string) {
		req, _ := http.NewRequest("POST", c.URL+"/publish", strings.NewReader(body))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		set(req)
		return do(t, req)
	}
	withBearer := func(tok string) func(*http.Request) {
		return func(r *http.Request) { r.Header.Set("Authorization", "Bearer "+tok) }
	}
	withCookie := func(origin string) func(*http.Request) {
		return func(r *http.Request) {
			r.AddCookie(&http.Cookie{Name: DefaultCookieName, Value: chat})
			if origin != "" {
				r.Header.Set("Origin", origin)
			}
		}
	}
	for _, tc := range []struct {
		name, body string
		set        func(*http.Request)
		status     int
	}{
		{"allowed topic", "topic=chat/1&data=a", withBearer(chat), 200},
		{"topic outside the claim", "topic=news&data=b", withBearer(chat), 403},
		{"one of two topics outside", "topic=chat/1&topic=news&data=c", withBearer(chat), 403},
		{"mercure claim", "topic=news&data=d", withBearer(mercure), 200},
		{"expired", "topic=chat/1&data=e", withBearer(expired), 401},
		{"no token", "topic=chat/1&data=f", func(*http.Request) {}, 401},
		{"query token", "topic=chat/1&data=g", func(r *http.Request) { r.URL.RawQuery = "access_token=" + chat }, 200},
		{"cookie without Origin", "topic=chat/1&data=h", withCookie(""), 403},
		{"cookie from another site", "topic=chat/1&data=i", withCookie("https://evil.example"), 403},
		{"cookie from the site", "topic=chat/1&data=j", withCookie(c.URL), 200},
	} {
		if status, body := send(tc.body, tc.set); status != tc.status {
			t.Errorf("%s: %d %q, want %d", tc.name, status, body, tc.status)
		}
	}
	var got []string
	for range 4 {
		got = append(got, watch.nextEvent(time.Second).Data)
	}
	if strings.Join(got, "") != "adgj" {
		t.Fatalf("delivered %v, want only the accepted publishes", got)
	}
	watch.quiet(100 * time.Millisecond)
}

func TestPublishAnonymousContradictsCredentials(t *testing.T) {
	cfg := adapt(t, `{
	admin off
}
http://127.0.0.1:`+freePort(t)+` {
	push_publish {
		token abc
		anonymous
	}
}`)
	if err := caddyValidate(cfg); err == nil || !strings.Contains(err.Error(), "anonymous") {
		t.Fatalf("got %v", err)
	}
}

func TestPublishNeedsCredentialsOrAnonymous(t *testing.T) {
	cfg := adapt(t, "{\n\tadmin off\n}\nhttp://127.0.0.1:"+freePort(t)+" {\n\tpush_publish\n}\n")
	if err := caddyValidate(cfg); err == nil || !strings.Contains(err.Error(), "anonymous") {
		t.Fatalf("got %v, want a refusal that names anonymous", err)
	}
}

// A form body of more than 10,000 fields is refused before any is read,
// as url.ParseQuery refuses it.
func TestFormFieldsBounded(t *testing.T) {
	body := strings.Repeat("topic=a&", maxFormFields) + "data=x"
	if _, err := parseFormMessage([]byte(body)); err == nil || !strings.Contains(err.Error(), "more than 10000 fields") {
		t.Fatalf("got %v, want a refusal of more than 10000 fields", err)
	}
	m, err := parseFormMessage([]byte(body[len("topic=a&"):]))
	if err != nil || len(m.Topics) != maxFormFields-1 || m.Data != "x" {
		t.Fatalf("10000 fields: %d topics, %q, %v", len(m.Topics), m.Data, err)
	}
}

// readLimited reads a body to its end, as io.ReadAll would: one longer
// or shorter than its Content-Length (which an HTTP/2 or HTTP/3 client
// can send) is an error, not a body cut at the length.
func TestReadLimited(t *testing.T) {
	for _, tc := range []struct {
		name, body string
		length     int64
		want       string // or the error
	}{
		{"exact", "topic=a", 7, "topic=a"},
		{"empty", "", 0, ""},
		{"longer than its length", "topic=a&data=x", 7, "error: body is longer than its Content-Length"},
		{"shorter than its length", "topic", 7, "error: unexpected EOF"},
		{"no length", "topic=a", -1, "topic=a"},
		{"no length, over the limit", strings.Repeat("x", 101), -1, "error: http: request body too large"},
	} {
		r := httptest.NewRequest(http.MethodPost, "/", strings.NewReader(tc.body))
		r.ContentLength = tc.length
		body, err := readLimited(httptest.NewRecorder(), r, 100)
		got := string(body)
		if err != nil {
			got = "error: " + err.Error()
		}
		if got != tc.want {
			t.Errorf("%s: got %q, want %q", tc.name, got, tc.want)
		}
	}
}

// BenchmarkPublishHandler is one publish through the route's handler, as
// pushbench sends it (a form with a 256-byte payload), without Caddy's
// own request handling around it: what the handler allocates per publish.
func BenchmarkPublishHandler(b *testing.B) {
	h := &PublishHandler{hub: openHub(b, HistoryLimits{Events: 100, TTL: time.Hour}), MaxBody: DefaultMaxBody,
		MaxData: DefaultMaxData, Anonymous: true, logger: zap.NewNop()}
	body := "topic=t&data=" + strings.Repeat("a", 200) + "+12345+1733150000000000000+" + strings.Repeat("b", 20)
	rb := &rewindBody{}
	r := httptest.NewRequest(http.MethodPost, "/publish", strings.NewReader(body))
	r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	r.Body = rb
	w := &discardWriter{h: make(http.Header)}
	b.ReportAllocs()
	for b.Loop() {
		rb.Reset(body)
		clear(w.h)
		if err := h.ServeHTTP(w, r, nil); err != nil || w.status != http.StatusOK {
			b.Fatal(err, w.status)
		}
	}
}

// rewindBody is a request body the benchmark refills for each request.
type rewindBody struct{ strings.Reader }

func (*rewindBody) Close() error { return nil }

// discardWriter is a ResponseWriter that keeps only the status.
type discardWriter struct {
	h      http.Header
	status int
}

func (w *discardWriter) Header() http.Header         { return w.h }
func (w *discardWriter) Write(p []byte) (int, error) { return len(p), nil }
func (w *discardWriter) WriteHeader(status int)      { w.status = status }
