package push

import (
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/golang-jwt/jwt/v5"
)

// mercureSite is a Mercure hub as a Mercure user configures one, with
// caddy-push's own handlers on the same hub beside it.
const mercureSite = `
http://127.0.0.1:PORT {
	route {
		push_mercure {
			publisher_jwt ` + testSecret + `
			subscriber_jwt ` + testSecret + `
			anonymous
			cors_origins https://app.example
			publish_origins https://app.example
		}
		push_sse /sse
		push_publish /publish {
			anonymous
		}
		respond "the site itself" 200
	}
}
`

// mercurePublisherToken is what Symfony's and Laravel's Mercure clients
// send: an HS256 JWT whose mercure.publish claim lists what it may publish.
func mercurePublisherToken(t testing.TB, publish ...string) string {
	t.Helper()
	return hs256(t, jwt.MapClaims{"mercure": map[string]any{"publish": publish}})
}

// mercureDraftToken is a token of the draft's profile: typ at+jwt,
// authorization_details, exp.
func mercureDraftToken(t testing.TB, actions []string, topics ...map[string]any) string {
	t.Helper()
	list := make([]any, len(topics))
	for i, tp := range topics {
		list[i] = tp
	}
	tok := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{
		"exp": time.Now().Add(time.Hour).Unix(),
		"authorization_details": []any{map[string]any{
			"type": mercureDetailType, "actions": actions, "topics": list,
		}},
	})
	tok.Header["typ"] = "at+jwt"
	s, err := tok.SignedString([]byte(testSecret))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// mercurePublish posts an update as a Mercure publisher does.
func (c *testCaddy) mercurePublish(token string, form url.Values) (int, string, http.Header) {
	c.t.Helper()
	req, _ := http.NewRequest(http.MethodPost, c.URL+DefaultMercurePath, strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := testClient.Do(req)
	if err != nil {
		c.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), resp.Header
}

// mercureURL is the hub URL with query parameters, as name, value pairs.
func (c *testCaddy) mercureURL(kv ...string) string {
	q := url.Values{}
	for i := 0; i < len(kv); i += 2 {
		q.Add(kv[i], kv[i+1])
	}
	return c.URL + DefaultMercurePath + "?" + q.Encode()
}

func TestMercurePublishAndSubscribe(t *testing.T) {
	c := startCaddy(t, mercureSite)
	pub := mercurePublisherToken(t, "*")
	exact := subscribe(t, c.mercureURL("match", "https://example.com/books/1"), nil)
	pattern := subscribe(t, c.mercureURL("match_urlpattern", "https://example.com/books/:id"), nil)
	template := subscribe(t, c.mercureURL("match_uritemplate", "https://example.com/books/{id}"), nil)
	legacy := subscribe(t, c.mercureURL("topic", "https://example.com/books/{id}"), nil)
	all := subscribe(t, c.mercureURL("match", "*"), nil)
	other := subscribe(t, c.mercureURL("match_urlpattern", "https://example.com/authors/:id"), nil)
	plain := subscribe(t, c.URL+"/sse?topic="+url.QueryEscape("https://example.com/books/1"), nil)

	status, id, hdr := c.mercurePublish(pub, url.Values{"topic": {"https://example.com/books/1"}, "data": {`{"title":"Dune"}`}, "type": {"book"}, "retry": {"2500"}})
	if status != 200 || !strings.HasPrefix(id, "#") || hdr.Get("Content-Type") != "text/plain; charset=utf-8" {
		t.Fatalf("publish: %d %q %q", status, id, hdr.Get("Content-Type"))
	}
	for name, s := range map[string]*sseClient{"match": exact, "match_urlpattern": pattern, "match_uritemplate": template, "topic": legacy, "*": all} {
		ev := s.nextEvent(2 * time.Second)
		if ev.ID != id || ev.Data != `{"title":"Dune"}` || ev.Type != "book" || ev.Retry != 2500 {
			t.Errorf("%s: got %+v, want id %s", name, ev, id)
		}
	}
	// push_sse subscribers of the topic get it too, with the hub's id as it has it
	if ev := plain.nextEvent(2 * time.Second); ev.ID != strings.TrimPrefix(id, "#") || ev.Data != `{"title":"Dune"}` {
		t.Errorf("push_sse: got %+v", ev)
	}
	other.quiet(200 * time.Millisecond)

	// and the other way round: push_publish reaches Mercure subscribers
	if st, body := c.publish("/publish", "topic=https://example.com/books/1&data=from-push"); st != 200 {
		t.Fatalf("push_publish: %d %s", st, body)
	}
	if ev := exact.nextEvent(2 * time.Second); ev.Data != "from-push" || !strings.HasPrefix(ev.ID, "#") {
		t.Errorf("Mercure subscriber of a push_publish update: %+v", ev)
	}
}

// Other requests go on to the next handler; other methods and paths
// under the hub get clear errors.
func TestMercurePassesOtherRequestsOn(t *testing.T) {
	c := startCaddy(t, mercureSite)
	if st, body := do(t, mustRequest(t, "GET", c.URL+"/page")); st != 200 || body != "the site itself" {
		t.Errorf("other path: %d %q", st, body)
	}
	if st, body := do(t, mustRequest(t, "PUT", c.URL+DefaultMercurePath)); st != 405 || !strings.Contains(body, "method") {
		t.Errorf("PUT: %d %q", st, body)
	}
	if st, _ := do(t, mustRequest(t, "GET", c.URL+DefaultMercurePath+"/nothing")); st != 404 {
		t.Errorf("unknown resource under the hub: %d", st)
	}
	resp, err := testClient.Head(c.mercureURL("match", "a"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
		t.Errorf("HEAD: %d %q", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
}

func TestMercureSubscribeRefusals(t *testing.T) {
	c := startCaddy(t, mercureSite)
	long := strings.Repeat("x", mercureMaxSelectorLen+1)
	many := make([]string, 0, 2*(DefaultMercureSelectors+1))
	for i := 0; i <= DefaultMercureSelectors; i++ {
		many = append(many, "match", "t"+strings.Repeat("a", i))
	}
	for name, u := range map[string]string{
		"unknown matcher type":   c.mercureURL("match_regexp", "a.*"),
		"reserved prefix":        c.mercureURL("matches", "a"),
		"prefix in another case": c.mercureURL("MATCH", "a"),
		"malformed URL pattern":  c.mercureURL("match_urlpattern", "https://example.com/(unclosed"),
		"malformed template":     c.mercureURL("match_uritemplate", "https://example.com/{id"),
		"control character":      c.mercureURL("match", "a\x01b"),
		"format character":       c.mercureURL("match", "a\u200bb"),
		"too long":               c.mercureURL("match", long),
		"too many":               c.mercureURL(many...),
		"none":                   c.mercureURL("other", "x"),
	} {
		st, body := do(t, mustRequest(t, "GET", u))
		if st != 400 || body == "" {
			t.Errorf("%s: %d %q, want 400 with a reason", name, st, body)
		}
	}
}

func TestMercurePublishRefusals(t *testing.T) {
	c := startCaddy(t, mercureSite)
	pub := mercurePublisherToken(t, "https://example.com/{+any}", "a", "b")
	many := url.Values{}
	for i := 0; i <= DefaultMaxPublishTopics; i++ {
		many.Add("topic", "t"+strings.Repeat("a", i))
	}
	for _, tc := range []struct {
		name   string
		token  string
		form   url.Values
		status int
		auth   string // the WWW-Authenticate challenge wanted
	}{
		{"no token", "", url.Values{"topic": {"a"}}, 401, "-"},
		{"bad token", "not-a-jwt", url.Values{"topic": {"a"}}, 401, `error="invalid_token"`},
		{"topic not allowed", pub, url.Values{"topic": {"a", "c"}}, 403, `error="insufficient_scope"`},
		{"no topic", pub, url.Values{"data": {"x"}}, 400, ""},
		{"wildcard topic", pub, url.Values{"topic": {"*"}}, 400, ""},
		{"hub namespace", pub, url.Values{"topic": {"/.well-known/mercure/subscriptions/a"}}, 400, ""},
		{"hub namespace, absolute", pub, url.Values{"topic": {"https://example.com/.well-known/%6Dercure/subscriptions"}}, 400, ""},
		{"hub namespace, dot segments", pub, url.Values{"topic": {"https://example.com/x/../.well-known/mercure"}}, 400, ""},
		{"reserved type", pub, url.Values{"topic": {"a"}, "type": {"mercure"}}, 400, ""},
		{"type with a line break", pub, url.Values{"topic": {"a"}, "type": {"a\nb"}}, 400, ""},
		{"retry not digits", pub, url.Values{"topic": {"a"}, "retry": {"-5"}}, 400, ""},
		{"retry not digits either", pub, url.Values{"topic": {"a"}, "retry": {"1e3"}}, 400, ""},
		{"id starting with #", pub, url.Values{"topic": {"a"}, "id": {"#1"}}, 400, ""},
		{"id earliest", pub, url.Values{"topic": {"a"}, "id": {"earliest"}}, 400, ""},
		{"id with a format character", pub, url.Values{"topic": {"a"}, "id": {"a\u200bb"}}, 400, ""},
		{"too many topics", pub, many, 413, ""},
		{"topic too long", pub, url.Values{"topic": {"https://example.com/" + strings.Repeat("x", MaxTopicLength)}}, 413, ""},
	} {
		st, body, hdr := c.mercurePublish(tc.token, tc.form)
		if st != tc.status || strings.TrimSpace(body) == "" {
			t.Errorf("%s: %d %q, want %d with a reason", tc.name, st, body, tc.status)
		}
		if tc.auth != "" && !bearerChallenge(hdr.Get("WWW-Authenticate"), c.URL, tc.auth) {
			t.Errorf("%s: WWW-Authenticate %q, want a challenge with %q", tc.name, hdr.Get("WWW-Authenticate"), tc.auth)
		}
	}
	// fields the hub does not know are ignored, as the protocol asks
	if st, body, _ := c.mercurePublish(pub, url.Values{"topic": {"a"}, "future_field": {"x"}}); st != 200 {
		t.Errorf("unknown field: %d %q", st, body)
	}
}

// Private updates reach only subscribers whose token may subscribe to one
// of their topics (canonical or alternate), in either token profile; an
// anonymous subscriber never.
func TestMercurePrivateUpdates(t *testing.T) {
	c := startCaddy(t, mercureSite)
	pub := mercurePublisherToken(t, "*")
	books := "https://example.com/books/:id"
	v021 := hs256(t, jwt.MapClaims{"mercure": map[string]any{"subscribe": []string{"https://example.com/books/1"}}})
	draft := mercureDraftToken(t, []string{"subscribe"}, map[string]any{"match": "https://example.com/users/42/*", "match_type": "urlpattern"})
	anonymous := subscribe(t, c.mercureURL("match_urlpattern", books), nil)
	mine := subscribe(t, c.mercureURL("match_urlpattern", books), header("Authorization", "Bearer "+v021))
	alternate := subscribe(t, c.mercureURL("match_urlpattern", books), header("Authorization", "Bearer "+draft))

	// books/2 is private to nobody here; books/1 to the v0.21 token; the
	// alternate topic users/42/books/3 to the draft token
	for _, f := range []url.Values{
		{"topic": {"https://example.com/books/2"}, "data": {"secret-2"}, "private": {"on"}},
		{"topic": {"https://example.com/books/1"}, "data": {"secret-1"}, "private": {""}},
		{"topic": {"https://example.com/books/3", "https://example.com/users/42/books/3"}, "data": {"secret-3"}, "private": {"on"}},
		{"topic": {"https://example.com/books/4"}, "data": {"public-4"}},
	} {
		if st, body, _ := c.mercurePublish(pub, f); st != 200 {
			t.Fatalf("publish: %d %s", st, body)
		}
	}
	for name, tc := range map[string]struct {
		s    *sseClient
		want []string
	}{
		"anonymous": {anonymous, []string{"public-4"}},
		"v0.21":     {mine, []string{"secret-1", "public-4"}},
		"draft":     {alternate, []string{"secret-3", "public-4"}},
	} {
		got := datas2(tc.s.events(len(tc.want), 2*time.Second))
		if strings.Join(got, ",") != strings.Join(tc.want, ",") {
			t.Errorf("%s got %v, want %v", name, got, tc.want)
		}
	}
}

// bearerChallenge reports whether a WWW-Authenticate value is the Bearer
// challenge the draft asks for: with the metadata's URL and, unless want
// is "-", the error code want.
func bearerChallenge(v, base, want string) bool {
	if !strings.HasPrefix(v, `Bearer resource_metadata="`+base+"/.well-known/oauth-protected-resource/.well-known/mercure\"") {
		return false
	}
	if want == "-" {
		return !strings.Contains(v, "error=")
	}
	return strings.HasSuffix(v, ", "+want)
}

func datas2(evs []sseEvent) []string {
	out := make([]string, len(evs))
	for i, ev := range evs {
		out[i] = ev.Data
	}
	return out
}

// Subscribers need a token on a hub that is not anonymous; a draft token
// must be typed at+jwt; a bad token is refused with the Bearer challenge.
func TestMercureSubscriberTokens(t *testing.T) {
	c := startCaddy(t, strings.Replace(mercureSite, "\t\t\tanonymous\n", "", 1))
	if st, _ := do(t, mustRequest(t, "GET", c.mercureURL("match", "a"))); st != 401 {
		t.Errorf("no token: %d, want 401", st)
	}
	req := mustRequest(t, "GET", c.mercureURL("match", "a"))
	req.Header.Set("Authorization", "Bearer bogus")
	resp, err := testClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 401 || !bearerChallenge(resp.Header.Get("WWW-Authenticate"), c.URL, `error="invalid_token"`) {
		t.Errorf("bad token: %d %q", resp.StatusCode, resp.Header.Get("WWW-Authenticate"))
	}
	untyped := hs256(t, jwt.MapClaims{"exp": time.Now().Add(time.Hour).Unix(), "authorization_details": []any{map[string]any{
		"type": mercureDetailType, "actions": []any{"subscribe"}, "topics": []any{map[string]any{"match": "a"}}}}})
	if st, _ := do(t, mustRequest(t, "GET", c.mercureURL("match", "a", "authorization", untyped))); st != 401 {
		t.Errorf("draft token without typ at+jwt: %d, want 401", st)
	}
	// the token in the cookie Mercure's hub reads, or (v0.21) the query
	sub := hs256(t, jwt.MapClaims{"mercure": map[string]any{"subscribe": []string{"a"}}})
	cookie := subscribe(t, c.mercureURL("match", "a"), header("Cookie", DefaultMercureCookie+"="+sub))
	query := subscribe(t, c.mercureURL("match", "a", "authorization", sub), nil)
	if st, body, _ := c.mercurePublish(mercurePublisherToken(t, "*"), url.Values{"topic": {"a"}, "data": {"p"}, "private": {"on"}}); st != 200 {
		t.Fatalf("publish: %d %s", st, body)
	}
	for name, s := range map[string]*sseClient{"cookie": cookie, "query": query} {
		if s.Resp.StatusCode != 200 {
			t.Fatalf("%s: %d", name, s.Resp.StatusCode)
		}
		if ev := s.nextEvent(2 * time.Second); ev.Data != "p" {
			t.Errorf("%s: %+v", name, ev)
		}
	}
}

// Publishers' own ids are the events' ids, resumable; a duplicate id
// resumes from the earliest; the hub's own ids come as "#<id>" and are
// taken back so; the response headers say where the stream starts.
func TestMercureIDsAndReconciliation(t *testing.T) {
	c := startCaddy(t, mercureSite)
	pub := mercurePublisherToken(t, "*")
	send := func(id, data string) string {
		f := url.Values{"topic": {"https://example.com/feed"}, "data": {data}}
		if id != "" {
			f.Set("id", id)
		}
		st, got, _ := c.mercurePublish(pub, f)
		if st != 200 {
			t.Fatalf("publish %s: %d %s", data, st, got)
		}
		return got
	}
	a := send("urn:uuid:a", "A")
	b := send("", "B")
	send("urn:uuid:a", "C") // the same id again
	send("", "D")
	if a != "urn:uuid:a" || !strings.HasPrefix(b, "#") {
		t.Fatalf("ids: %q %q", a, b)
	}
	feed := "https://example.com/feed"
	for name, tc := range map[string]struct {
		url    string
		header http.Header
		want   string
		at     string
	}{
		"Last-Event-ID, publisher's id": {c.mercureURL("match", feed), header("Last-Event-ID", "urn:uuid:a"), "B,C,D", "urn:uuid:a"},
		"last_event_id":                 {c.mercureURL("match", feed, "last_event_id", "urn:uuid:a"), nil, "B,C,D", "urn:uuid:a"},
		"lastEventID (v0.21)":           {c.mercureURL("topic", feed, "lastEventID", "urn:uuid:a"), nil, "B,C,D", "urn:uuid:a"},
		"lastEventId (push_sse's)":      {c.mercureURL("match", feed, "lastEventId", "urn:uuid:a"), nil, "B,C,D", "urn:uuid:a"},
		"the hub's id":                  {c.mercureURL("match", feed, "last_event_id", b), nil, "C,D", b},
		"header first":                  {c.mercureURL("match", feed, "last_event_id", "urn:uuid:a"), header("Last-Event-ID", b), "C,D", b},
		"earliest":                      {c.mercureURL("match", feed, "last_event_id", "earliest"), nil, "A,B,C,D", "earliest"},
	} {
		s := subscribe(t, tc.url, tc.header)
		if got := strings.Join(datas2(s.events(strings.Count(tc.want, ",")+1, 2*time.Second)), ","); got != tc.want {
			t.Errorf("%s: got %s, want %s", name, got, tc.want)
		}
		if h := s.Resp.Header; h.Get("Mercure-Last-Event-ID") != tc.at || h.Get("Last-Event-ID") != tc.at {
			t.Errorf("%s: headers %q %q, want %q", name, h.Get("Mercure-Last-Event-ID"), h.Get("Last-Event-ID"), tc.at)
		}
		s.Close()
	}
	// an id the hub does not know: the stream says so, and starts at the head
	s := subscribe(t, c.mercureURL("match", feed, "last_event_id", "urn:uuid:unknown"), nil)
	if ev := s.nextEvent(2 * time.Second); ev.Type != "push.reset" || !strings.HasPrefix(ev.ID, "#") {
		t.Errorf("unknown id: %+v", ev)
	}
	if at := s.Resp.Header.Get("Mercure-Last-Event-ID"); at != "earliest" {
		t.Errorf("unknown id: Mercure-Last-Event-ID %q, want earliest", at)
	}
}

// A subscription may send its selectors in a QUERY body, with the query's
// too.
func TestMercureQueryMethod(t *testing.T) {
	c := startCaddy(t, mercureSite)
	pub := mercurePublisherToken(t, "*")
	if st, body, _ := c.mercurePublish(pub, url.Values{"topic": {"q0"}, "id": {"urn:uuid:k"}}); st != 200 {
		t.Fatalf("publish: %d %s", st, body)
	}
	form := url.Values{"match": {"q2"}, "last_event_id": {"earliest"}}.Encode()
	req, _ := http.NewRequest("QUERY", c.mercureURL("match", "q1", "last_event_id", "urn:uuid:k"), strings.NewReader(form))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	resp, err := testClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	// last_event_id is in both parts: the query's counts
	if resp.StatusCode != 200 || resp.Header.Get("Mercure-Last-Event-ID") != "urn:uuid:k" {
		t.Fatalf("QUERY: %d %q", resp.StatusCode, resp.Header.Get("Mercure-Last-Event-ID"))
	}
	items := make(chan sseItem, 100)
	go func() {
		_ = parseSSE(resp.Body, func(it sseItem) bool { items <- it; return true })
		close(items)
	}()
	for _, topic := range []string{"q1", "q2", "q3"} {
		if st, body, _ := c.mercurePublish(pub, url.Values{"topic": {topic}, "data": {topic}}); st != 200 {
			t.Fatalf("publish: %d %s", st, body)
		}
	}
	var got []string
	deadline := time.After(2 * time.Second)
	for len(got) < 2 {
		select {
		case it := <-items:
			if it.Event != nil {
				got = append(got, it.Event.Data)
			}
		case <-deadline:
			t.Fatalf("got %v", got)
		}
	}
	if strings.Join(got, ",") != "q1,q2" {
		t.Errorf("got %v, want q1,q2", got)
	}
}

// A page on an allowed origin may subscribe and publish across origins;
// a token from a cookie publishes only from publish_origins.
func TestMercureCORS(t *testing.T) {
	c := startCaddy(t, mercureSite)
	pre := mustRequest(t, "OPTIONS", c.URL+DefaultMercurePath)
	pre.Header.Set("Origin", "https://app.example")
	pre.Header.Set("Access-Control-Request-Method", "GET")
	pre.Header.Set("Access-Control-Request-Headers", "last-event-id")
	resp, err := testClient.Do(pre)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	h := resp.Header
	if resp.StatusCode != 204 || h.Get("Access-Control-Allow-Origin") != "https://app.example" ||
		h.Get("Access-Control-Allow-Credentials") != "true" || !strings.Contains(h.Get("Access-Control-Allow-Headers"), "Last-Event-ID") {
		t.Errorf("preflight: %d %v", resp.StatusCode, h)
	}
	pre.Header.Set("Origin", "https://evil.example")
	resp, err = testClient.Do(pre)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.Header.Get("Access-Control-Allow-Origin") != "" {
		t.Errorf("preflight from another origin allowed: %v", resp.Header)
	}
	s := subscribe(t, c.mercureURL("match", "a"), header("Origin", "https://app.example"))
	if s.Resp.Header.Get("Access-Control-Allow-Origin") != "https://app.example" ||
		!strings.Contains(s.Resp.Header.Get("Access-Control-Expose-Headers"), "Link") ||
		!strings.Contains(s.Resp.Header.Get("Access-Control-Expose-Headers"), "Mercure-Last-Event-ID") {
		t.Errorf("stream without CORS headers: %v", s.Resp.Header)
	}

	post := func(origin string) int {
		req, _ := http.NewRequest("POST", c.URL+DefaultMercurePath, strings.NewReader("topic=a&data=x"))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.Header.Set("Cookie", DefaultMercureCookie+"="+mercurePublisherToken(t, "*"))
		req.Header.Set("Origin", origin)
		st, _ := do(t, req)
		return st
	}
	if st := post("https://app.example"); st != 200 {
		t.Errorf("cookie publish from publish_origins: %d", st)
	}
	if st := post("https://evil.example"); st != 403 {
		t.Errorf("cookie publish from another origin: %d, want 403", st)
	}
}

func TestMercureCaddyfile(t *testing.T) {
	cf := "http://127.0.0.1:9 {\n\tpush_mercure {\n\t\tpublisher_jwt k\n\t\tname books\n\t\tmax_duration 10m\n\t\tresource_identifier https://hub.example\n\t}\n}\n"
	cfg, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(cf), nil)
	if err != nil || !strings.Contains(string(cfg), `"hub":"books"`) || !strings.Contains(string(cfg), `"write_timeout":600000000000`) ||
		!strings.Contains(string(cfg), `"jwt_audience":"https://hub.example"`) {
		t.Errorf("Mercure's names for our options: %s %v", cfg, err)
	}
	for opt, want := range map[string]string{
		"transport bolt":           "broker",
		"dispatch_timeout 5s":      "never waits",
		"issuer https://a.example": "jwt_issuer",
		"no_such_option":           "unrecognized",
	} {
		cf := "http://127.0.0.1:9 {\n\tpush_mercure {\n\t\tpublisher_jwt " + testSecret + "\n\t\t" + opt + "\n\t}\n}\n"
		_, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(cf), nil)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want an error naming %q", opt, err, want)
		}
	}
}

// A token is taken from the Authorization header before the cookie a
// browser sends by itself; a draft token needs exp; a stream admitted on a
// token ends at its exp; replayed private updates are checked against the
// token as live ones are.
func TestMercureTokenRules(t *testing.T) {
	c := startCaddy(t, mercureSite)
	good := hs256(t, jwt.MapClaims{"mercure": map[string]any{"subscribe": []string{"a"}}})
	req := mustRequest(t, "GET", c.mercureURL("match", "a"))
	req.Header.Set("Authorization", "Bearer bogus")
	req.Header.Set("Cookie", DefaultMercureCookie+"="+good)
	if st, _ := do(t, req); st != 401 {
		t.Errorf("a bad header token with a good cookie: %d, want 401 (the header wins)", st)
	}
	tok := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{"authorization_details": []any{map[string]any{
		"type": mercureDetailType, "actions": []any{"subscribe"}, "topics": []any{map[string]any{"match": "a"}}}}})
	tok.Header["typ"] = "at+jwt"
	noExp, _ := tok.SignedString([]byte(testSecret))
	if st, _ := do(t, mustRequest(t, "GET", c.mercureURL("match", "a", "authorization", noExp))); st != 401 {
		t.Errorf("a draft token without exp: %d, want 401", st)
	}

	pub := mercurePublisherToken(t, "*")
	for _, f := range []url.Values{
		{"topic": {"a"}, "data": {"secret"}, "private": {"on"}},
		{"topic": {"a"}, "data": {"public"}},
	} {
		if st, body, _ := c.mercurePublish(pub, f); st != 200 {
			t.Fatalf("publish: %d %s", st, body)
		}
	}
	anonymous := subscribe(t, c.mercureURL("match", "a", "last_event_id", "earliest"), nil)
	if got := datas2(anonymous.events(1, 2*time.Second)); got[0] != "public" {
		t.Errorf("anonymous replay: %v, want only the public update", got)
	}
	short := hs256(t, jwt.MapClaims{"exp": time.Now().Add(1500 * time.Millisecond).Unix(), "mercure": map[string]any{"subscribe": []string{"a"}}})
	s := subscribe(t, c.mercureURL("match", "a", "last_event_id", "earliest"), header("Authorization", "Bearer "+short))
	if got := strings.Join(datas2(s.events(2, 2*time.Second)), ","); got != "secret,public" {
		t.Errorf("replay with a token that may read a: %s", got)
	}
	s.ended(5 * time.Second) // at its exp
	expired := hs256(t, jwt.MapClaims{"exp": time.Now().Add(-2 * time.Second).Unix(), "mercure": map[string]any{"subscribe": []string{"a"}}})
	if st, _ := do(t, mustRequest(t, "GET", c.mercureURL("match", "a", "authorization", expired))); st != 401 {
		t.Errorf("a token that has just expired: %d, want 401", st)
	}
}
