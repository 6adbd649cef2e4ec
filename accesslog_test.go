package push

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// demoLogBlock is the log directive of the demo Caddyfile, which the
// documentation tells operators to copy.
func demoLogBlock(t *testing.T) string {
	t.Helper()
	src, err := os.ReadFile("Caddyfile")
	if err != nil {
		t.Fatal(err)
	}
	s := string(src)
	start := strings.Index(s, "\n\tlog {\n")
	if start < 0 {
		t.Fatal("the demo Caddyfile has no log block")
	}
	end := strings.Index(s[start:], "\n\t}\n")
	return s[start+1 : start+end+3]
}

// A token sent in the URL (access_token, as EventSource and WebSocket
// clients must) reaches Caddy's access log redacted, with the demo's log
// filter: over SSE, WebSocket and publish. An unfiltered log of the same
// requests, beside it, holds the token, so the filter is what keeps it
// out.
func TestAccessLogRedactsAccessToken(t *testing.T) {
	t.Setenv("PUSH_TEST_JWT", testSecret)
	dir := t.TempDir()
	filtered, plain := filepath.Join(dir, "access.log"), filepath.Join(dir, "plain.log")
	block := demoLogBlock(t)
	block = strings.Replace(block, "log {\n", "log filtered {\n\t\toutput file "+filtered+"\n", 1)
	c := startCaddy(t, `
http://127.0.0.1:PORT {
	`+block+`
	log plain {
		output file `+plain+`
		format json
	}
	push_sse /events {
		jwt_key {env.PUSH_TEST_JWT}
		private user/*
	}
	push_ws /ws {
		jwt_key {env.PUSH_TEST_JWT}
		topics chat
	}
	push_publish /publish {
		jwt_key {env.PUSH_TEST_JWT}
	}
}`)
	token := hs256(t, jwt.MapClaims{"sub": "alice", "push": map[string]any{"publish": []string{"*"}, "subscribe": []string{"user/alice"}}})

	s := subscribe(t, c.URL+"/events?topic=user/alice&access_token="+token, nil)
	if s.Resp.StatusCode != 200 {
		t.Fatalf("subscribe: %d", s.Resp.StatusCode)
	}
	s.Close()
	ws := mustDialWS(t, c.URL+"/ws?access_token="+token, nil)
	ws.conn.Close()
	if status, body := c.publish("/publish?access_token="+token, "topic=chat&data=x"); status != 200 {
		t.Fatalf("publish: %d %s", status, body)
	}
	if status, _ := c.publish("/publish?access_token=not-a-valid-token", "topic=chat&data=x"); status != 401 {
		t.Fatalf("publish with a bad token: %d", status)
	}

	var logged, control string
	waitFor(t, 10*time.Second, func() bool {
		a, _ := os.ReadFile(filtered)
		b, _ := os.ReadFile(plain)
		logged, control = string(a), string(b)
		// every request, in both logs; the bad token's publish came last
		n := strings.Count(control, `"uri":`)
		return strings.Contains(control, "not-a-valid-token") && strings.Contains(control, "/events?") &&
			strings.Contains(control, "/ws?") && strings.Count(logged, `"uri":`) == n
	})
	if !strings.Contains(control, token) {
		t.Fatalf("the unfiltered log has no token; the test proves nothing:\n%s", control)
	}
	for _, secret := range []string{token, "not-a-valid-token"} {
		if strings.Contains(logged, secret) {
			t.Fatalf("the filtered access log holds a token:\n%s", logged)
		}
	}
	// the filter re-encodes the query, in key order
	for _, uri := range []string{
		`"uri":"/events?access_token=REDACTED&topic=user%2Falice"`,
		`"uri":"/ws?access_token=REDACTED"`,
		`"uri":"/publish?access_token=REDACTED"`,
	} {
		if strings.Count(logged, uri) != strings.Count(control, strings.SplitN(uri, "?", 2)[0]+"?") {
			t.Errorf("the access log has not every request as %s:\n%s", uri, logged)
		}
	}
}
