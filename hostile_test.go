package push

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// hostileSite has every guard on: JWT on both sides, private per-user
// topics, limits.
const hostileSite = `
http://127.0.0.1:PORT {
	push_sse /events {
		private user/*
		jwt_key {env.PUSH_TEST_JWT}
		max_topics 32
	}
	push_publish /publish {
		jwt_key {env.PUSH_TEST_JWT}
		max_body 1MiB
	}
}`

// hostileCase is one attack: a request and the answer it must get.
type hostileCase struct {
	name    string
	method  string
	path    string
	header  http.Header
	body    string
	status  int
	reason  string // in the one-line answer
	publish bool   // a publish that must not half-happen
}

// TestHostileInput sends attacks at every handler: each gets its status
// and a one-line reason, none panics or hangs, and nothing is published
// by any of them.
func TestHostileInput(t *testing.T) {
	t.Setenv("PUSH_TEST_JWT", testSecret)
	c := startCaddy(t, hostileSite)
	anyTopic := hs256(t, jwt.MapClaims{"push": map[string]any{"publish": []string{"*"}, "subscribe": []string{"*"}}})
	topicA := hs256(t, jwt.MapClaims{"push": map[string]any{"publish": []string{"a"}, "subscribe": []string{"user/a"}}})
	expired := hs256(t, jwt.MapClaims{"exp": time.Now().Add(-time.Hour).Unix(), "push": map[string]any{"publish": []string{"*"}}})
	wrongKey, _ := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{"push": map[string]any{"publish": []string{"*"}}}).SignedString([]byte("an-attacker-secret-of-32-bytes-or-more"))
	hs384, _ := jwt.NewWithClaims(jwt.SigningMethodHS384, jwt.MapClaims{"push": map[string]any{"publish": []string{"*"}}}).SignedString([]byte(testSecret))
	none, _ := jwt.NewWithClaims(jwt.SigningMethodNone, jwt.MapClaims{"push": map[string]any{"publish": []string{"*"}}}).SignedString(jwt.UnsafeAllowNoneSignatureType)
	bearer := func(tok string) http.Header {
		return header("Authorization", "Bearer "+tok, "Content-Type", "application/x-www-form-urlencoded")
	}
	jsonBearer := header("Authorization", "Bearer "+anyTopic, "Content-Type", "application/json")
	form := bearer(anyTopic)

	cases := []hostileCase{
		// forged, expired and confused tokens
		{"forged jwt", "POST", "/publish", bearer(wrongKey), "topic=a&data=x", 401, "invalid token", true},
		{"expired jwt", "POST", "/publish", bearer(expired), "topic=a&data=x", 401, "expired", true},
		{"wrong alg jwt", "POST", "/publish", bearer(hs384), "topic=a&data=x", 401, "invalid token", true},
		{"none alg jwt", "POST", "/publish", bearer(none), "topic=a&data=x", 401, "invalid token", true},
		{"truncated jwt", "POST", "/publish", bearer(anyTopic[:len(anyTopic)-5]), "topic=a&data=x", 401, "invalid token", true},
		{"token for a used on b", "POST", "/publish", bearer(topicA), "topic=b&data=x", 403, `"b"`, true},
		{"token for a, event to a and b", "POST", "/publish", bearer(topicA), "topic=a&topic=b&data=x", 403, `"b"`, true},
		{"cookie token without Origin", "POST", "/publish", header("Cookie", DefaultCookieName+"="+anyTopic, "Content-Type", "application/x-www-form-urlencoded"), "topic=a&data=x", 403, "cookie", true},
		{"cookie token cross-site", "POST", "/publish", header("Cookie", DefaultCookieName+"="+anyTopic, "Origin", "https://evil.example", "Content-Type", "application/x-www-form-urlencoded"), "topic=a&data=x", 403, "cookie", true},
		{"private topic without token", "GET", "/events?topic=user/a", nil, "", 401, "private", false},
		{"private topic, other user's token", "GET", "/events?topic=user/b", header("Authorization", "Bearer "+topicA), "", 403, "user/b", false},
		{"subscribe with forged token", "GET", "/events?topic=news", header("Authorization", "Bearer "+wrongKey), "", 401, "invalid token", false},
		// topics
		{"control character in topic", "POST", "/publish", form, "topic=a%01b&data=x", 400, "control", true},
		{"newline in topic", "POST", "/publish", form, "topic=a%0Ab&data=x", 400, "control", true},
		{"300-byte topic", "POST", "/publish", form, "topic=" + strings.Repeat("t", 300) + "&data=x", 400, "longer than 256", true},
		{"300-byte topic subscribe", "GET", "/events?topic=" + strings.Repeat("t", 300), nil, "", 400, "longer than 256", false},
		{"33 topics", "GET", "/events?" + manyTopics(33), nil, "", 400, "too many topics", false},
		{"invalid UTF-8 topic", "GET", "/events?topic=%C3%28", nil, "", 400, "UTF-8", false},
		// bodies
		{"2 MiB body", "POST", "/publish", form, "topic=a&data=" + strings.Repeat("x", 2<<20), 413, "larger than", true},
		{"invalid UTF-8 data", "POST", "/publish", form, "topic=a&data=%ff%fe", 400, "UTF-8", true},
		{"invalid UTF-8 JSON", "POST", "/publish", jsonBearer, "{\"topic\":\"a\",\"data\":\"\xc3\x28\"}", 400, "UTF-8", true},
		{"JSON topics as number", "POST", "/publish", jsonBearer, `{"topics":5,"data":"x"}`, 400, "invalid JSON", true},
		{"JSON data as NaN", "POST", "/publish", jsonBearer, `{"topic":"a","data":NaN}`, 400, "invalid JSON", true},
		{"JSON nested too deep", "POST", "/publish", jsonBearer, `{"topic":"a","data":` + strings.Repeat("[", 20000) + strings.Repeat("]", 20000) + `}`, 400, "invalid JSON", true},
		{"retry not a number", "POST", "/publish", form, "topic=a&data=x&retry=soon", 400, "retry", true},
		{"retry negative", "POST", "/publish", form, "topic=a&data=x&retry=-100", 400, "retry", true},
		{"retry overflow", "POST", "/publish", form, "topic=a&data=x&retry=99999999999999999999", 400, "retry", true},
		{"type with CRLF", "POST", "/publish", form, "topic=a&type=x%0D%0Adata:%20evil&data=x", 400, "event type", true},
		{"type with NUL", "POST", "/publish", form, "topic=a&type=x%00&data=x", 400, "event type", true},
		{"xml body", "POST", "/publish", header("Authorization", "Bearer "+anyTopic, "Content-Type", "text/xml"), "<a/>", 415, "content type", true},
		{"GET on publish", "GET", "/publish", bearer(anyTopic), "", 405, "POST", true},
		{"DELETE on events", "DELETE", "/events?topic=a", nil, "", 405, "GET", false},
		// resume ids
		{"malformed query", "GET", "/events?topic=a&lastEventId=%zz", nil, "", 400, "malformed query", false},
	}
	watch := subscribe(t, c.URL+"/events?topic=a&topic=b&topic=news", header("Authorization", "Bearer "+anyTopic))
	for _, tc := range cases {
		req, err := http.NewRequest(tc.method, c.URL+tc.path, strings.NewReader(tc.body))
		if err != nil {
			t.Fatal(err)
		}
		for k, v := range tc.header {
			req.Header[k] = v
		}
		status, body := do(t, req)
		if status != tc.status || !strings.Contains(body, tc.reason) || strings.Count(body, "\n") != 1 {
			t.Errorf("%s: %d %q, want %d with a one-line reason containing %q", tc.name, status, body, tc.status, tc.reason)
		}
	}
	watch.quiet(200 * time.Millisecond)
}

// Last-Event-ID is the client's to send: huge, binary or foreign ids
// reset the stream rather than fail it.
func TestHostileLastEventID(t *testing.T) {
	c := startCaddy(t, basicSite)
	for name, id := range map[string]string{
		"10 KB":         strings.Repeat("9", 10<<10),
		"negative":      "abc--1",
		"overflow":      "abc-99999999999999999999999",
		"leading zeros": "abc-007",
		"unicode":       "ép-1",
	} {
		s := subscribe(t, c.URL+"/news", http.Header{"Last-Event-Id": {id}})
		if s.Resp.StatusCode != 200 {
			t.Errorf("%s: %d", name, s.Resp.StatusCode)
			continue
		}
		if ev := s.nextEvent(time.Second); ev.Type != "push.reset" {
			t.Errorf("%s: first event %+v, want push.reset", name, ev)
		}
		s.Close()
	}
	// a NUL cannot travel in a header; it can in the query
	s := subscribe(t, c.URL+"/news?lastEventId=abc%00-1", nil)
	if ev := s.nextEvent(time.Second); ev.Type != "push.reset" {
		t.Errorf("NUL: first event %+v, want push.reset", ev)
	}
}
