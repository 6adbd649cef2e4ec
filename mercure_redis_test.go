package push_test

import (
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/golang-jwt/jwt/v5"

	"github.com/caddy-push/push/internal/testport"
)

// On Redis, the Mercure hub is one hub on every node: an update published
// to one node reaches a pattern subscriber of the other, a publisher's id
// resumes on either, and the subscriptions API of one node lists the
// subscriptions held by the other, whose events reach it too. Two hubs of
// this process sharing one key prefix, each behind its own site, are the
// two nodes.
func TestMercureAcrossRedisNodes(t *testing.T) {
	redisURL := startRedis(t)
	const secret = "a-test-secret-that-is-32-bytes-long!"
	ports := []string{testport.Free(t, true), testport.Free(t, true)}
	cf := `{
	admin off
	persist_config off
	push {
		hub a {
			broker redis ` + redisURL + ` {
				key_prefix push:shared:
			}
		}
		hub b {
			broker redis ` + redisURL + ` {
				key_prefix push:shared:
			}
		}
	}
}
`
	for i, hub := range []string{"a", "b"} {
		cf += "http://127.0.0.1:" + ports[i] + " {\n\tpush_mercure {\n\t\thub " + hub +
			"\n\t\tpublisher_jwt " + secret + "\n\t\tsubscriber_jwt " + secret + "\n\t\tanonymous\n\t\tsubscriptions\n\t}\n}\n"
	}
	cfg, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(cf), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := caddy.Load(cfg, true); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = caddy.Stop() })
	a, b := "http://127.0.0.1:"+ports[0], "http://127.0.0.1:"+ports[1]
	sign := func(claims jwt.MapClaims) string {
		s, err := jwt.NewWithClaims(jwt.SigningMethodHS256, claims).SignedString([]byte(secret))
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	hubURL := func(base string, kv ...string) string {
		q := url.Values{}
		for i := 0; i < len(kv); i += 2 {
			q.Add(kv[i], kv[i+1])
		}
		return base + "/.well-known/mercure?" + q.Encode()
	}

	publishTo := func(base string, form url.Values) {
		t.Helper()
		req, _ := http.NewRequest("POST", base+"/.well-known/mercure", strings.NewReader(form.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.Header.Set("Authorization", "Bearer "+sign(jwt.MapClaims{"mercure": map[string]any{"publish": []string{"*"}}}))
		resp, err := http.DefaultClient.Do(req)
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("publish: %v %v", err, resp)
		}
		resp.Body.Close()
	}
	// each node follows the other's events once its listener is up, which
	// on a busy machine takes a moment after the config loads
	for _, pair := range [][2]string{{a, b}, {b, a}} {
		warm, stop := openStream(t, hubURL(pair[1], "topic", "warm"))
		for got := false; !got; {
			publishTo(pair[0], url.Values{"topic": {"warm"}, "data": {"x"}})
			select {
			case <-warm:
				got = true
			case <-time.After(200 * time.Millisecond):
			}
		}
		stop()
	}

	watcher := sign(jwt.MapClaims{"mercure": map[string]any{"subscribe": []string{"/.well-known/mercure/subscriptions{/topic}{/subscriber}"}}})
	watch, _ := openStream(t, hubURL(b, "topic", "/.well-known/mercure/subscriptions{/topic}{/subscriber}", "authorization", watcher))
	nextBlock(t, watch) // its own subscription
	books, _ := openStream(t, hubURL(a, "topic", "https://example.com/books/{id}"))
	if ev := nextBlock(t, watch); ev.event != "mercure" || !strings.Contains(ev.data, `"topic":"https://example.com/books/{id}"`) {
		t.Fatalf("node b's watcher got %+v, want node a's subscription", ev)
	}

	// node b lists what node a holds
	req, _ := http.NewRequest("GET", b+"/.well-known/mercure/subscriptions", nil)
	req.Header.Set("Authorization", "Bearer "+sign(jwt.MapClaims{"mercure": map[string]any{"subscribe": []string{"*"}}}))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var list struct {
		Subscriptions []map[string]any `json:"subscriptions"`
	}
	err = json.NewDecoder(resp.Body).Decode(&list)
	resp.Body.Close()
	topics := []string{}
	for _, s := range list.Subscriptions {
		topics = append(topics, s["topic"].(string))
	}
	if err != nil || len(topics) != 2 || !strings.Contains(strings.Join(topics, " "), "https://example.com/books/{id}") {
		t.Fatalf("node b's list: %v (%v), want the watcher's and node a's subscriptions", topics, err)
	}

	// published to node b with its own id, delivered on node a, resumable there
	publish := func(id, data string) {
		publishTo(b, url.Values{"topic": {"https://example.com/books/1"}, "data": {data}, "id": {id}})
	}
	publish("urn:uuid:one", "first")
	if ev := nextBlock(t, books); ev.id != "urn:uuid:one" || ev.data != "first" {
		t.Fatalf("node a got %+v", ev)
	}
	publish("urn:uuid:two", "second")
	resumed, _ := openStream(t, hubURL(a, "topic", "https://example.com/books/{id}", "lastEventID", "urn:uuid:one"))
	if ev := nextBlock(t, resumed); ev.id != "urn:uuid:two" || ev.data != "second" {
		t.Fatalf("resumed on node a: %+v", ev)
	}
	select {
	case ev := <-resumed:
		if ev.event != "" {
			t.Fatalf("unexpected %+v", ev)
		}
	case <-time.After(100 * time.Millisecond):
	}
}
