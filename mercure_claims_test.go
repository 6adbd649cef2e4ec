package push

import (
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/golang-jwt/jwt/v5"
)

// mercureJSON decodes a claims document as golang-jwt does (MapClaims).
func mercureJSON(t *testing.T, doc string) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal([]byte(doc), &m); err != nil {
		t.Fatalf("bad test JSON %s: %v", doc, err)
	}
	return m
}

func mercureParse(t *testing.T, doc string, opt mercureClaimsOptions) *mercureClaims {
	t.Helper()
	c, err := parseMercureClaims(mercureJSON(t, doc), opt)
	if err != nil {
		t.Fatalf("parseMercureClaims(%s): %v", doc, err)
	}
	return c
}

const (
	mercureDraftDetail = `"type": "https://mercure.rocks/authorization-detail"`
	mercureBooks1      = "https://example.com/books/1"
)

// TestMercureClaimsV021: v0.21's `mercure` claim and its rules.
func TestMercureClaimsV021(t *testing.T) {
	// The spec's private-update example: the subscriber may read what is
	// published for it under an alternate topic.
	c := mercureParse(t, `{"sub": "foo", "mercure": {
		"subscribe": ["https://example.com/users/foo/{?topic}"],
		"payload": {"user": "https://example.com/users/foo"}}}`, mercureClaimsOptions{})
	if c.Profile != mercureProfileV021 || c.Publish != nil || len(c.Subscribe) != 1 {
		t.Fatalf("claims = %+v", c)
	}
	cache := newMercureMatchCache(100)
	alternate := "https://example.com/users/foo/?topic=https%3A%2F%2Fexample.com%2Fbooks%2F1"
	for _, tt := range []struct {
		topics []string
		want   bool
	}{
		{[]string{mercureBooks1, alternate}, true},
		{[]string{alternate}, true},
		{[]string{mercureBooks1}, false},
		{[]string{mercureBooks1, "https://example.com/users/bar/?topic=x"}, false},
		{nil, false},
	} {
		if got := c.CanReceivePrivate(tt.topics, cache); got != tt.want {
			t.Errorf("CanReceivePrivate(%q) = %v, want %v", tt.topics, got, tt.want)
		}
		if !mercureMaySee(c, tt.topics, false, cache) || mercureMaySee(c, tt.topics, true, cache) != tt.want {
			t.Errorf("mercureMaySee(%q)", tt.topics)
		}
	}
	if c.CanPublish([]string{mercureBooks1}, cache) {
		t.Error("a token without mercure.publish may publish")
	}
	// v0.21 gives its one payload to every subscription.
	for _, m := range []string{"https://example.com/books/{id}", "*"} {
		p, ok := c.SubscriptionPayload(m, cache)
		if !ok || !reflect.DeepEqual(p, map[string]any{"user": "https://example.com/users/foo"}) {
			t.Errorf("SubscriptionPayload(%q) = %v, %v", m, p, ok)
		}
	}

	// Publishing: every topic must be allowed.
	c = mercureParse(t, `{"mercure": {"publish": ["https://example.com/books/{id}", "https://example.com/users/foo/{?topic}"]}}`, mercureClaimsOptions{})
	for _, tt := range []struct {
		topics []string
		want   bool
	}{
		{[]string{mercureBooks1}, true},
		{[]string{mercureBooks1, alternate}, true},
		{[]string{mercureBooks1, "https://example.com/authors/1"}, false},
		{[]string{"https://example.com/books/{id}"}, true},
		{nil, false},
	} {
		if got := c.CanPublish(tt.topics, nil); got != tt.want {
			t.Errorf("CanPublish(%q) = %v, want %v", tt.topics, got, tt.want)
		}
	}
	if _, ok := c.SubscriptionPayload("x", nil); ok {
		t.Error("a payload without mercure.payload")
	}
	if c := mercureParse(t, `{"mercure": {"publish": ["*"]}}`, mercureClaimsOptions{}); !c.CanPublish([]string{"a", "b"}, nil) {
		t.Error(`"*" may not publish everywhere`)
	}
	if c := mercureParse(t, `{"mercure": {"publish": []}}`, mercureClaimsOptions{}); c.CanPublish([]string{"a"}, nil) {
		t.Error("an empty mercure.publish may publish")
	}
	if c := mercureParse(t, `{"mercure": {"publish": null, "subscribe": null}}`, mercureClaimsOptions{}); c.Profile != mercureProfileV021 || c.Publish != nil || c.Subscribe != nil {
		t.Errorf("null arrays: %+v", c)
	}

	// The namespaced claim wins over `mercure`; a null one does not.
	c = mercureParse(t, `{"mercure": {"subscribe": ["a"]}, "https://mercure.rocks/": {"subscribe": ["b"]}}`, mercureClaimsOptions{})
	if c.CanReceivePrivate([]string{"a"}, nil) || !c.CanReceivePrivate([]string{"b"}, nil) {
		t.Error("the namespaced claim must take precedence")
	}
	c = mercureParse(t, `{"mercure": {"subscribe": ["a"]}, "https://mercure.rocks/": null}`, mercureClaimsOptions{})
	if !c.CanReceivePrivate([]string{"a"}, nil) {
		t.Error("a null namespaced claim must leave `mercure`")
	}

	// A malformed v0.21 template is an exact topic, as in v0.21.
	c = mercureParse(t, `{"mercure": {"subscribe": ["https://example.com/{id"]}}`, mercureClaimsOptions{})
	if !c.CanReceivePrivate([]string{"https://example.com/{id"}, nil) || c.CanReceivePrivate([]string{"https://example.com/1"}, nil) {
		t.Error("malformed template")
	}
}

// TestMercureClaimsDraft: authorization_details, with the draft's examples.
func TestMercureClaimsDraft(t *testing.T) {
	cache := newMercureMatchCache(100)
	// The draft's sample self-issued subscriber token.
	c := mercureParse(t, `{
		"iss": "https://example.com", "aud": "https://hub.example.com/.well-known/mercure",
		"sub": "urn:uuid:bb3de268-05b0-4c65-b44e-8f9acefc29d6", "client_id": "https://example.com",
		"iat": 1767225300, "exp": 1767225600, "jti": "urn:uuid:e70ff8d7-59d5-4a92-b0b7-505e8f6d09fa",
		"authorization_details": [{`+mercureDraftDetail+`, "actions": ["subscribe"],
			"topics": [{"match": "https://example.com/books/:id", "match_type": "urlpattern"}]}]}`, mercureClaimsOptions{})
	if c.Profile != mercureProfileDraft || len(c.Subscribe) != 1 || c.Publish != nil {
		t.Fatalf("claims = %+v", c)
	}
	if !c.CanReceivePrivate([]string{mercureBooks1}, cache) || c.CanReceivePrivate([]string{"https://example.com/authors/1"}, cache) {
		t.Error("books/:id")
	}

	// "A private update for books/1 is delivered; for books/2 it is not."
	c = mercureParse(t, `{"authorization_details": [{`+mercureDraftDetail+`, "actions": ["subscribe"],
		"topics": [{"match": "https://example.com/books/1", "match_type": "exact"}, {"match": "https://example.com/books/7"}]}]}`, mercureClaimsOptions{})
	if !c.CanReceivePrivate([]string{mercureBooks1}, cache) || c.CanReceivePrivate([]string{"https://example.com/books/2"}, cache) {
		t.Error("books/1 and books/7 only")
	}

	// The namespace grant and the alternate topic (the union rule).
	c = mercureParse(t, `{"authorization_details": [{`+mercureDraftDetail+`, "actions": ["subscribe"],
		"topics": [{"match": "https://example.com/users/42/*", "match_type": "urlpattern"}]}]}`, mercureClaimsOptions{})
	if !c.CanReceivePrivate([]string{mercureBooks1, "https://example.com/users/42/books/1"}, cache) ||
		c.CanReceivePrivate([]string{mercureBooks1}, cache) ||
		c.CanReceivePrivate([]string{mercureBooks1, "https://example.com/users/43/books/1"}, cache) {
		t.Error("users/42/*")
	}

	// Publish and subscribe in separate details; several actions in one.
	c = mercureParse(t, `{"authorization_details": [
		{`+mercureDraftDetail+`, "actions": ["publish"], "topics": [{"match": "https://example.com/books/:id", "match_type": "urlpattern"}]},
		{`+mercureDraftDetail+`, "actions": ["subscribe", "publish", "delete"], "topics": [{"match": "https://example.com/news"}]},
		{`+mercureDraftDetail+`, "actions": ["subscribe"], "topics": [{"match": "https://example.com/private"}]}]}`, mercureClaimsOptions{})
	for _, tt := range []struct {
		topics           []string
		publish, receive bool
	}{
		{[]string{mercureBooks1}, true, false},
		{[]string{mercureBooks1, "https://example.com/news"}, true, true},
		{[]string{mercureBooks1, "https://example.com/private"}, false, true},
		{[]string{"https://example.com/private"}, false, true},
	} {
		if c.CanPublish(tt.topics, cache) != tt.publish || c.CanReceivePrivate(tt.topics, cache) != tt.receive {
			t.Errorf("%q: publish %v receive %v", tt.topics, c.CanPublish(tt.topics, cache), c.CanReceivePrivate(tt.topics, cache))
		}
	}

	// The wildcard, whatever the match_type.
	c = mercureParse(t, `{"authorization_details": [{`+mercureDraftDetail+`, "actions": ["publish", "subscribe"],
		"topics": [{"match": "*", "match_type": "urlpattern"}]}]}`, mercureClaimsOptions{})
	if !c.CanPublish([]string{"a", "b"}, cache) || !c.CanReceivePrivate([]string{"anything"}, cache) {
		t.Error("*")
	}

	// Relative patterns resolve against the hub's URL: subscription events.
	c = mercureParse(t, `{"authorization_details": [{`+mercureDraftDetail+`, "actions": ["subscribe"],
		"topics": [{"match": "/.well-known/mercure/subscriptions/*", "match_type": "urlpattern"}]}]}`,
		mercureClaimsOptions{BaseURL: mercureTestHub})
	if !c.CanReceivePrivate([]string{"/.well-known/mercure/subscriptions/exact/a/b"}, cache) ||
		!c.CanReceivePrivate([]string{mercureTestHub + "/subscriptions/exact/a/b"}, cache) ||
		c.CanReceivePrivate([]string{"/books/1"}, cache) {
		t.Error("relative subscription-events grant")
	}

	// Unknown actions grant nothing; other detail types are ignored,
	// whatever their shape, and so is the short "mercure" type of an
	// unreleased revision.
	c = mercureParse(t, `{"authorization_details": [
		{`+mercureDraftDetail+`, "actions": ["read"], "topics": [{"match": "*"}]},
		{"type": "payment_initiation", "actions": "pay", "topics": "x"},
		{"type": "mercure", "actions": ["subscribe"], "topics": [{"match": "*"}]},
		{"actions": ["subscribe"]}]}`, mercureClaimsOptions{})
	if c.Profile != mercureProfileDraft || c.Publish != nil || c.Subscribe != nil {
		t.Errorf("no grants expected: %+v", c)
	}

	// match_uritemplate, when the hub offers it.
	doc := `{"authorization_details": [{` + mercureDraftDetail + `, "actions": ["subscribe"],
		"topics": [{"match": "https://example.com/books/{id}", "match_type": "uritemplate"}]}]}`
	if _, err := parseMercureClaims(mercureJSON(t, doc), mercureClaimsOptions{}); err == nil {
		t.Error("uritemplate accepted without the option")
	}
	c = mercureParse(t, doc, mercureClaimsOptions{URITemplate: true})
	if !c.CanReceivePrivate([]string{mercureBooks1}, cache) {
		t.Error("uritemplate")
	}
}

// TestMercureClaimsPayload: the draft's payload-selection example: the
// first subscribe detail whose topics match the subscription's own matcher.
func TestMercureClaimsPayload(t *testing.T) {
	c := mercureParse(t, `{"authorization_details": [
		{`+mercureDraftDetail+`, "actions": ["subscribe"], "topics": [{"match": "https://example.com/foo"}],
			"payload": {"custom1": "data only available for this topic"}},
		{`+mercureDraftDetail+`, "actions": ["publish"], "topics": [{"match": "*"}], "payload": {"publisher": true}},
		{`+mercureDraftDetail+`, "actions": ["subscribe"], "topics": [{"match": "https://example.com/bar/:id", "match_type": "urlpattern"}],
			"payload": {"custom2": "data available for matching subscriptions"}},
		{`+mercureDraftDetail+`, "actions": ["subscribe"], "topics": [{"match": "*"}],
			"payload": {"custom3": "default data for all other subscriptions"}}]}`, mercureClaimsOptions{})
	cache := newMercureMatchCache(100)
	for matcher, want := range map[string]string{
		"https://example.com/foo":     "custom1",
		"https://example.com/bar/:id": "custom2", // the pattern itself, taken as a topic
		"https://example.com/bar/1":   "custom2",
		"https://example.com/other":   "custom3",
		"*":                           "custom3",
	} {
		p, ok := c.SubscriptionPayload(matcher, cache)
		m, _ := p.(map[string]any)
		if _, has := m[want]; !ok || !has {
			t.Errorf("SubscriptionPayload(%q) = %v, %v; want %s", matcher, p, ok, want)
		}
	}
	c = mercureParse(t, `{"authorization_details": [{`+mercureDraftDetail+`, "actions": ["subscribe"], "topics": [{"match": "a"}]}]}`, mercureClaimsOptions{})
	if p, ok := c.SubscriptionPayload("a", cache); ok || p != nil {
		t.Errorf("no payload: %v, %v", p, ok)
	}
	var anonymous *mercureClaims
	if _, ok := anonymous.SubscriptionPayload("a", cache); ok || anonymous.CanPublish([]string{"a"}, cache) ||
		anonymous.CanReceivePrivate([]string{"a"}, cache) || !mercureMaySee(anonymous, []string{"a"}, false, cache) ||
		mercureMaySee(anonymous, []string{"a"}, true, cache) {
		t.Error("an anonymous subscriber")
	}
}

// TestMercureClaimsProfiles: which claim is read, and the options.
func TestMercureClaimsProfiles(t *testing.T) {
	both := `{"mercure": {"subscribe": ["legacy"]},
		"authorization_details": [{` + mercureDraftDetail + `, "actions": ["subscribe"], "topics": [{"match": "draft"}]}]}`
	for _, tt := range []struct {
		doc     string
		opt     mercureClaimsOptions
		profile mercureProfile
		topic   string
	}{
		{both, mercureClaimsOptions{}, mercureProfileDraft, "draft"},
		{both, mercureClaimsOptions{NoDraft: true}, mercureProfileV021, "legacy"},
		{both, mercureClaimsOptions{NoV021: true}, mercureProfileDraft, "draft"},
		{`{"mercure": {"subscribe": ["legacy"]}, "authorization_details": []}`, mercureClaimsOptions{}, mercureProfileV021, "legacy"},
		{`{"mercure": {"subscribe": ["legacy"]}, "authorization_details": null}`, mercureClaimsOptions{}, mercureProfileV021, "legacy"},
		{`{"mercure": {"subscribe": ["legacy"]}}`, mercureClaimsOptions{NoV021: true}, mercureProfileNone, ""},
		{`{"sub": "x"}`, mercureClaimsOptions{}, mercureProfileNone, ""},
		{`{"mercure": null}`, mercureClaimsOptions{}, mercureProfileNone, ""},
	} {
		c := mercureParse(t, tt.doc, tt.opt)
		if c.Profile != tt.profile || (tt.topic != "" && !c.CanReceivePrivate([]string{tt.topic}, nil)) {
			t.Errorf("%s with %+v: profile %v, subscribe %v", tt.doc, tt.opt, c.Profile, c.Subscribe)
		}
	}
	for p, s := range map[mercureProfile]string{
		mercureProfileNone: "none", mercureProfileV021: "mercure claim (v0.21)", mercureProfileDraft: "authorization_details (draft)",
	} {
		if p.String() != s {
			t.Errorf("%d.String() = %q", p, p.String())
		}
	}
	for typ, want := range map[any]bool{
		"at+jwt": true, "AT+JWT": true, "application/at+jwt": true, "Application/At+JWT": true,
		"JWT": false, "": false, nil: false, 1: false, "application/": false, "at+jwt ": false, "application/jwt": false,
	} {
		if mercureTokenTypeOK(typ) != want {
			t.Errorf("mercureTokenTypeOK(%#v) = %v", typ, !want)
		}
	}
}

// TestMercureClaimsErrors: a malformed Mercure grant rejects the whole
// token (401 invalid_token), with a message that says where.
func TestMercureClaimsErrors(t *testing.T) {
	d := func(body string) string {
		return `{"authorization_details": [{"type": "other"}, {` + mercureDraftDetail + `, ` + body + `}]}`
	}
	topics := func(n int) string {
		return `"topics": [` + strings.TrimSuffix(strings.Repeat(`{"match": "a"},`, n), ",") + `]`
	}
	for _, tt := range []struct {
		doc  string
		opt  mercureClaimsOptions
		want string
	}{
		{`{"mercure": "x"}`, mercureClaimsOptions{}, `claim "mercure" is a string, not an object`},
		{`{"https://mercure.rocks/": []}`, mercureClaimsOptions{}, `claim "https://mercure.rocks/" is an array, not an object`},
		{`{"mercure": {"publish": "*"}}`, mercureClaimsOptions{}, "mercure.publish is a string, not an array"},
		{`{"mercure": {"subscribe": ["a", 1]}}`, mercureClaimsOptions{}, "mercure.subscribe[1] is a number, not a string"},
		{`{"mercure": {"subscribe": ["a", "b", "c"]}}`, mercureClaimsOptions{MaxV021Selectors: 2}, "mercure.subscribe has 3 selectors, more than 2"},
		{`{"authorization_details": {"type": "x"}}`, mercureClaimsOptions{}, "authorization_details is an object, not an array"},
		{`{"authorization_details": ["x"]}`, mercureClaimsOptions{}, "authorization_details[0] is a string, not an object"},
		{`{"authorization_details": [{"type": 3}]}`, mercureClaimsOptions{}, "authorization_details[0].type is a number"},
		{d(`"topics": [{"match": "a"}]`), mercureClaimsOptions{}, "authorization_details[1].actions must be a non-empty array"},
		{d(`"actions": [], "topics": [{"match": "a"}]`), mercureClaimsOptions{}, "actions must be a non-empty array"},
		{d(`"actions": "subscribe", "topics": [{"match": "a"}]`), mercureClaimsOptions{}, "actions must be a non-empty array"},
		{d(`"actions": ["subscribe", true], "topics": [{"match": "a"}]`), mercureClaimsOptions{}, "actions[1] is a boolean, not a string"},
		{d(`"actions": ["subscribe"]`), mercureClaimsOptions{}, "authorization_details[1].topics must be a non-empty array"},
		{d(`"actions": ["subscribe"], "topics": []`), mercureClaimsOptions{}, "topics must be a non-empty array"},
		{d(`"actions": ["subscribe"], "topics": ["https://example.com/a"]`), mercureClaimsOptions{}, `topics[0]: a string, not a {"match", "match_type"} object`},
		{d(`"actions": ["subscribe"], "topics": [null]`), mercureClaimsOptions{}, `topics[0]: null, not a`},
		{d(`"actions": ["subscribe"], "topics": [{"match_type": "exact"}]`), mercureClaimsOptions{}, `"match" is null, not a string`},
		{d(`"actions": ["subscribe"], "topics": [{"match": ""}]`), mercureClaimsOptions{}, `"match" is empty`},
		{d(`"actions": ["subscribe"], "topics": [{"match": "a", "match_type": 1}]`), mercureClaimsOptions{}, `"match_type" is a number`},
		{d(`"actions": ["subscribe"], "topics": [{"match": "a", "match_type": "regex"}]`), mercureClaimsOptions{}, `unsupported match_type "regex"`},
		{d(`"actions": ["subscribe"], "topics": [{"match": "a", "match_type": "Exact"}]`), mercureClaimsOptions{}, `unsupported match_type "Exact"`},
		{d(`"actions": ["subscribe"], "topics": [{"match": "https://example.com/(", "match_type": "urlpattern"}]`), mercureClaimsOptions{},
			`topics[0]: invalid urlpattern selector "https://example.com/(": not a valid URL pattern`},
		{d(`"actions": ["subscribe"], "topics": [{"match": "a\u200bb"}]`), mercureClaimsOptions{}, "format character U+200B"},
		{d(`"actions": ["subscribe"], ` + topics(3)), mercureClaimsOptions{MaxDetailTopics: 2}, "more than 2 topics"},
		{d(`"actions": ["subscribe"], ` + topics(101)), mercureClaimsOptions{}, "more than 100 topics"},
		{`{"authorization_details": [{` + mercureDraftDetail + `, "actions": ["subscribe"], "topics": [{"match": "a"}]},
			{` + mercureDraftDetail + `, "actions": ["subscribe"], "topics": [{"match": "b"}]}]}`, mercureClaimsOptions{MaxDetails: 1}, "more than 1 Mercure authorization details"},
		// One bad detail rejects the token, even after good ones.
		{`{"authorization_details": [{` + mercureDraftDetail + `, "actions": ["subscribe"], "topics": [{"match": "*"}]},
			{` + mercureDraftDetail + `, "actions": ["subscribe"], "topics": [{"match": "x", "match_type": "nope"}]}]}`, mercureClaimsOptions{}, "authorization_details[1].topics[0]"},
	} {
		c, err := parseMercureClaims(mercureJSON(t, tt.doc), tt.opt)
		if err == nil || !errors.Is(err, errMercureClaims) || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s:\n got %v, %v\nwant an errMercureClaims saying %q", tt.doc, c, err, tt.want)
		}
	}
}

// TestMercureClaimsFromJWT: the claims as golang-jwt gives them after
// verifying a token (MapClaims, arrays as []any), both profiles.
func TestMercureClaimsFromJWT(t *testing.T) {
	key := []byte("0123456789abcdef0123456789abcdef")
	for _, tt := range []struct {
		typ    string
		claims jwt.MapClaims
		want   mercureProfile
	}{
		{"JWT", jwt.MapClaims{"mercure": map[string]any{"publish": []string{"*"}, "subscribe": []string{"https://example.com/books/{id}"}}}, mercureProfileV021},
		{"at+jwt", jwt.MapClaims{"exp": 4102444800, "authorization_details": []map[string]any{{
			"type": mercureDetailType, "actions": []string{"publish", "subscribe"},
			"topics": []map[string]any{{"match": "https://example.com/books/:id", "match_type": "urlpattern"}},
		}}}, mercureProfileDraft},
	} {
		tok := jwt.NewWithClaims(jwt.SigningMethodHS256, tt.claims)
		tok.Header["typ"] = tt.typ
		signed, err := tok.SignedString(key)
		if err != nil {
			t.Fatal(err)
		}
		parsed, err := jwt.Parse(signed, func(*jwt.Token) (any, error) { return key, nil }, jwt.WithValidMethods([]string{"HS256"}))
		if err != nil {
			t.Fatal(err)
		}
		if mercureTokenTypeOK(parsed.Header["typ"]) != (tt.want == mercureProfileDraft) {
			t.Errorf("typ %v", parsed.Header["typ"])
		}
		c, err := parseMercureClaims(parsed.Claims.(jwt.MapClaims), mercureClaimsOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if c.Profile != tt.want || !c.CanPublish([]string{mercureBooks1}, nil) || !c.CanReceivePrivate([]string{mercureBooks1}, nil) ||
			c.CanReceivePrivate([]string{"https://example.com/authors/1"}, nil) {
			t.Errorf("%v: %+v", tt.want, c)
		}
	}
}
