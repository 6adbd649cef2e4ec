package push

import (
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// mercureTrackedSite is mercureSite with subscriptions tracked and
// discovery on.
var mercureTrackedSite = strings.Replace(mercureSite, "\t\t\tanonymous\n", "\t\t\tanonymous\n\t\t\tsubscriptions\n\t\t\tdiscover\n", 1)

// Each subscription's start and end is a private update of type mercure:
// in v0.21's JSON-LD for a topic= subscription, in the draft's form for a
// match subscription, to subscribers whose token allows the topic.
func TestMercureSubscriptionEvents(t *testing.T) {
	c := startCaddy(t, mercureTrackedSite)
	anonymous := subscribe(t, c.mercureURL("match", "*"), nil)
	anonymous.next(2 * time.Second)
	v021 := hs256(t, jwt.MapClaims{"mercure": map[string]any{"subscribe": []string{"/.well-known/mercure/subscriptions{/topic}{/subscriber}"}}})
	watchV021 := subscribe(t, c.mercureURL("topic", "/.well-known/mercure/subscriptions{/topic}{/subscriber}"), header("Authorization", "Bearer "+v021))
	draftTok := mercureDraftToken(t, []string{"subscribe"}, map[string]any{"match": "/.well-known/mercure/subscriptions/:type/:match/:subscriber", "match_type": "urlpattern"})
	watchDraft := subscribe(t, c.mercureURL("match_urlpattern", "/.well-known/mercure/subscriptions/:type/:match/:subscriber"), header("Authorization", "Bearer "+draftTok))
	// the watchers' own subscriptions are events too: skip them
	watchV021.events(1, 2*time.Second)
	watchDraft.events(1, 2*time.Second)

	payload := hs256(t, jwt.MapClaims{"mercure": map[string]any{"subscribe": []string{"x"}, "payload": map[string]any{"user": "ann"}}})
	old := subscribe(t, c.mercureURL("topic", "https://example.com/books/{id}"), header("Authorization", "Bearer "+payload))
	ev := watchV021.nextEvent(2 * time.Second)
	var doc map[string]any
	if err := json.Unmarshal([]byte(ev.Data), &doc); err != nil || ev.Type != "mercure" {
		t.Fatalf("v0.21 event: %+v (%v)", ev, err)
	}
	sub, _ := doc["subscriber"].(string)
	wantID := "/.well-known/mercure/subscriptions/" + url.QueryEscape("https://example.com/books/{id}") + "/" + mercureEscape(sub)
	wantID = strings.ReplaceAll(wantID, "+", "%20")
	if doc["@context"] != "https://mercure.rocks/" || doc["type"] != "Subscription" || doc["topic"] != "https://example.com/books/{id}" ||
		doc["active"] != true || doc["id"] != wantID || !strings.HasPrefix(sub, "urn:uuid:") || doc["payload"].(map[string]any)["user"] != "ann" {
		t.Errorf("v0.21 document: %v, want id %s", doc, wantID)
	}
	old.Close()
	ev = watchV021.nextEvent(2 * time.Second)
	if !strings.Contains(ev.Data, `"active":false`) || !strings.Contains(ev.Data, sub) {
		t.Errorf("end of the v0.21 subscription: %+v", ev)
	}

	fresh := subscribe(t, c.mercureURL("match", "https://example.com/a b"), nil)
	ev = watchDraft.nextEvent(2 * time.Second)
	doc = nil
	if err := json.Unmarshal([]byte(ev.Data), &doc); err != nil || ev.Type != "mercure" {
		t.Fatalf("draft event: %+v (%v)", ev, err)
	}
	sub, _ = doc["subscriber"].(string)
	if doc["type"] != "subscription" || doc["match_type"] != "exact" || doc["match"] != "https://example.com/a b" || doc["active"] != true ||
		doc["id"] != "/.well-known/mercure/subscriptions/exact/https%3A%2F%2Fexample.com%2Fa%20b/"+mercureEscape(sub) {
		t.Errorf("draft document: %v", doc)
	}
	fresh.Close()
	if ev := watchDraft.nextEvent(2 * time.Second); !strings.Contains(ev.Data, `"active":false`) {
		t.Errorf("end of the draft subscription: %+v", ev)
	}
	// private: an anonymous subscriber to every topic sees none of them
	anonymous.quiet(200 * time.Millisecond)
}

// The active subscriptions API lists what is subscribed, for a token that
// may subscribe to the path asked for.
func TestMercureSubscriptionsAPI(t *testing.T) {
	c := startCaddy(t, mercureTrackedSite)
	reader := hs256(t, jwt.MapClaims{"mercure": map[string]any{"subscribe": []string{"/.well-known/mercure/subscriptions{/topic}{/subscriber}", "/.well-known/mercure/subscriptions"}}})
	draftReader := mercureDraftToken(t, []string{"subscribe"}, map[string]any{"match": "*"})
	other := hs256(t, jwt.MapClaims{"mercure": map[string]any{"subscribe": []string{"elsewhere"}}})
	a := subscribe(t, c.mercureURL("topic", "https://example.com/books/{id}", "match", "news"), nil)
	a.next(2 * time.Second)

	get := func(path, token string) (int, http.Header, map[string]any) {
		t.Helper()
		req := mustRequest(t, "GET", c.URL+path)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := testClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var body map[string]any
		_ = json.NewDecoder(resp.Body).Decode(&body)
		return resp.StatusCode, resp.Header, body
	}
	st, hdr, body := get("/.well-known/mercure/subscriptions", reader)
	subs, _ := body["subscriptions"].([]any)
	if st != 200 || hdr.Get("Content-Type") != "application/ld+json" || body["type"] != "Subscriptions" || body["@context"] != "https://mercure.rocks/" ||
		len(subs) != 2 || body["lastEventID"] == nil || !strings.Contains(hdr.Get("Link"), `rel="mercure"`) {
		t.Fatalf("v0.21 collection: %d %v %v", st, hdr, body)
	}
	var subscriber string
	for _, s := range subs {
		d := s.(map[string]any)
		subscriber = d["subscriber"].(string)
		if d["type"] == "Subscription" && d["topic"] != "https://example.com/books/{id}" {
			t.Errorf("v0.21 subscription document: %v", d)
		}
	}

	st, hdr, body = get("/.well-known/mercure/subscriptions/exact/news", draftReader)
	subs, _ = body["subscriptions"].([]any)
	if st != 200 || hdr.Get("Content-Type") != "application/json" || body["type"] != "subscriptions" || len(subs) != 1 ||
		!strings.Contains(hdr.Get("Link"), "last-event-id=") {
		t.Fatalf("draft collection of a matcher: %d %v %v", st, hdr, body)
	}
	one := "/.well-known/mercure/subscriptions/exact/news/" + mercureEscape(subscriber)
	if st, _, body = get(one, draftReader); st != 200 || body["id"] != one || body["match"] != "news" || body["active"] != true {
		t.Errorf("one subscription: %d %v", st, body)
	}
	if st, _, _ = get("/.well-known/mercure/subscriptions/exact/news/urn%3Auuid%3Anobody", draftReader); st != 404 {
		t.Errorf("unknown subscriber: %d, want 404", st)
	}
	if st, _, _ = get("/.well-known/mercure/subscriptions", ""); st != 401 {
		t.Errorf("no token: %d, want 401", st)
	}
	if st, _, _ = get("/.well-known/mercure/subscriptions", other); st != 403 {
		t.Errorf("token for other topics: %d, want 403", st)
	}
	a.Close()
	// once it has left, it is no longer listed
	deadline := time.Now().Add(2 * time.Second)
	for {
		_, _, body = get("/.well-known/mercure/subscriptions", reader)
		if subs, _ = body["subscriptions"].([]any); len(subs) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("still listed after leaving: %v", body)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// The hub describes itself at its RFC 9728 metadata URL, and the pages it
// passes on are told where it is.
func TestMercureDiscovery(t *testing.T) {
	c := startCaddy(t, mercureTrackedSite)
	resp, err := testClient.Get(c.URL + "/page")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if got, want := resp.Header.Get("Link"), "<"+c.URL+`/.well-known/mercure>; rel="mercure"`; got != want {
		t.Errorf("discovery Link %q, want %q", got, want)
	}
	resp, err = testClient.Get(c.URL + "/.well-known/oauth-protected-resource/.well-known/mercure")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var md map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&md); err != nil || resp.StatusCode != 200 {
		t.Fatalf("metadata: %d %v", resp.StatusCode, err)
	}
	if md["resource"] != c.URL+"/.well-known/mercure" || md["mercure_cookie"] != "mercureAuthorization" || md["mercure_subscriptions"] != true {
		t.Errorf("metadata: %v", md)
	}
}
