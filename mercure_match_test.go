package push

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
)

const (
	mercureTestHub = "https://hub.example.com/.well-known/mercure"
	mercureTestSub = "urn%3Auuid%3Abb3de268-05b0-4c65-b44e-8f9acefc29d6"
)

// TestMercureSelectorMatch: the examples of both specs and the edges of
// each selector kind.
func TestMercureSelectorMatch(t *testing.T) {
	const (
		legacy = mercureSelectorLegacy
		exact  = mercureSelectorExact
		urlpat = mercureSelectorURLPattern
		tpl    = mercureSelectorURITemplate
	)
	tests := []struct {
		kind     mercureSelectorKind
		sel      string
		base     string
		topic    string
		want     bool
		describe string
	}{
		// v0.21, "Topic Selectors" and "Subscription".
		{legacy, "*", "", "https://example.com/foo", true, "* matches every topic"},
		{legacy, "*", "", "", true, "* matches even the empty topic"},
		{legacy, "https://example.com/foo", "", "https://example.com/foo", true, "exact"},
		{legacy, "https://example.com/foo", "", "https://example.com/foo/", false, "exact is exact"},
		{legacy, "bar", "", "bar", true, "a topic need not be a URL"},
		{legacy, "https://example.com/bar/{id}", "", "https://example.com/bar/1", true, "template"},
		{legacy, "https://example.com/bar/{id}", "", "https://example.com/bar/1/2", false, "{id} is one segment"},
		{legacy, "https://example.com/bar/{id}", "", "https://example.com/bar/{id}", true, "a template matches itself"},
		{legacy, "https://example.com/{selector}", "", "https://example.com/a-topic", true, "subscription example"},
		{legacy, "https://example.com/users/foo/{?topic}", "", "https://example.com/users/foo/?topic=https%3A%2F%2Fexample.com%2Fbooks%2F1", true, "the spec's private-update selector"},
		{legacy, "https://example.com/users/foo/{?topic}", "", "https://example.com/users/bar/?topic=x", false, "other user"},
		{legacy, "/.well-known/mercure/subscriptions{/topic}{/subscriber}", "",
			"/.well-known/mercure/subscriptions/https%3A%2F%2Fexample.com%2F%7Bselector%7D/" + mercureTestSub, true, "the usual subscription-events selector"},
		{legacy, "https://example.com/books/{id", "", "https://example.com/books/1", false, "not a template: exact"},
		{legacy, "https://example.com/books/{id", "", "https://example.com/books/{id", true, "not a template: matches itself"},
		{legacy, "https://example.com/{id}", "", "https://EXAMPLE.com/1", false, "template literals are case-sensitive"},

		// Draft, exact.
		{exact, "https://example.com/foo", "", "https://example.com/foo", true, "exact"},
		{exact, "https://example.com/foo", "", "https://example.com/FOO", false, "byte for byte"},
		{exact, "https://example.com/foo", "", "https://EXAMPLE.com/foo", false, "no normalization"},
		{exact, "https://example.com/{id}", "", "https://example.com/1", false, "no templates in exact"},
		{exact, "/books/1", mercureTestHub, "https://hub.example.com/books/1", false, "exact does not resolve"},
		{exact, "*", "", "anything", true, "* whatever the type"},

		// Draft, URL patterns.
		{urlpat, "https://example.com/bar/:id", "", "https://example.com/bar/1", true, "named group"},
		{urlpat, "https://example.com/bar/:id", "", "https://example.com/bar/1/2", false, ":id is one segment"},
		{urlpat, "https://example.com/bar/:id", "", "https://example.com/baz/1", false, "other path"},
		{urlpat, "https://example.com/books/:id", "", "https://EXAMPLE.COM/books/1", true, "hosts are case-insensitive"},
		{urlpat, "https://example.com/books/:id", "", "https://example.com/Books/1", false, "paths are case-sensitive"},
		{urlpat, "https://example.com/users/42/*", "", "https://example.com/users/42/books/1", true, "the spec's namespace grant"},
		{urlpat, "https://example.com/users/42/*", "", "https://example.com/users/43/books/1", false, "other namespace"},
		{urlpat, "https://example.com/books/:id", "", "https://example.com/books/1?x=1", true, "an absolute pattern's search is a wildcard"},
		{urlpat, "https://example.com/:selector", "", "https://example.com/:selector", true, "a pattern matches itself (payload selection)"},
		{urlpat, "/.well-known/mercure/subscriptions/exact/:topic/:subscriber", "",
			"/.well-known/mercure/subscriptions/exact/https%3A%2F%2Fexample.com%2Fa-topic/" + mercureTestSub, true, "relative pattern, relative topic"},
		{urlpat, "/.well-known/mercure/subscriptions/*", mercureTestHub,
			"https://hub.example.com/.well-known/mercure/subscriptions/exact/x/y", true, "relative pattern, absolute topic on the hub"},
		{urlpat, "/.well-known/mercure/subscriptions/*", "",
			"https://hub.example.com/.well-known/mercure/subscriptions/exact/x/y", false, "without the hub's URL, another origin"},
		{urlpat, "https://hub.example.com/.well-known/mercure/subscriptions/*", mercureTestHub,
			"/.well-known/mercure/subscriptions/urlpattern/x/y", true, "absolute pattern, relative topic"},
		{urlpat, "*", "", "not a URL at all \x00", true, "* is not the URL pattern *"},
		{urlpat, "https://example.com/*", "", "http://[::1", false, "an unparsable topic matches no pattern"},
		{urlpat, "https://example.com/*", "", "https://example.com:99999/", false, "an invalid port matches no pattern"},

		// Project extension: match_uritemplate.
		{tpl, "https://example.com/books/{id}", "", "https://example.com/books/1", true, "template"},
		{tpl, "https://example.com/books/{id}", "", "https://example.com/books/", true, "an empty value is an expansion"},
		{tpl, "https://example.com/books{/id*}", "", "https://example.com/books/1/2", true, "explode"},
		{tpl, "*", "", "x", true, "*"},
	}
	cache := newMercureMatchCache(1000)
	for _, tt := range tests {
		name := fmt.Sprintf("%s %s: %s", tt.kind, tt.describe, tt.topic)
		s, err := newMercureSelector(tt.kind, tt.sel, tt.base)
		if err != nil {
			t.Errorf("%s: newMercureSelector(%q): %v", name, tt.sel, err)
			continue
		}
		if got := s.Match(tt.topic); got != tt.want {
			t.Errorf("%s: %q Match(%q) = %v, want %v", name, tt.sel, tt.topic, got, tt.want)
		}
		for range 2 { // computed, then cached
			if got := cache.Match(s, tt.topic); got != tt.want {
				t.Errorf("%s: cached %q Match(%q) = %v, want %v", name, tt.sel, tt.topic, got, tt.want)
			}
		}
		if s.String() != tt.sel || s.Kind() != tt.kind {
			t.Errorf("%s: String, Kind = %q, %v", name, s.String(), s.Kind())
		}
	}
}

// TestMercureSelectorErrors: what cannot be a selector is an error that
// says why, never a panic; a v0.21 selector never fails.
func TestMercureSelectorErrors(t *testing.T) {
	manyVars := "https://example.com/{?" + strings.TrimSuffix(strings.Repeat("a,", 1003), ",") + "}"
	tests := []struct {
		kind   mercureSelectorKind
		sel    string
		reason string
	}{
		{mercureSelectorURLPattern, "https://example.com/(", "not a valid URL pattern"},
		{mercureSelectorURLPattern, "https://example.com/:id(", "not a valid URL pattern"},
		{mercureSelectorURLPattern, "https://example.com/(a(b)", "not a valid URL pattern"},
		{mercureSelectorURLPattern, "https://example.com/{", "not a valid URL pattern"},
		{mercureSelectorURLPattern, "https://example.com/:", "not a valid URL pattern"},
		{mercureSelectorURLPattern, "https://exa mple.com/", "not a valid URL pattern"},
		{mercureSelectorURITemplate, "https://example.com/{id", "not a valid URI template"},
		{mercureSelectorURITemplate, "https://example.com/}", "not a valid URI template"},
		{mercureSelectorURITemplate, "https://example.com/{a:0}", "not a valid URI template"},
		{mercureSelectorURITemplate, "https://example.com/%zz", "not a valid URI template"},
		{mercureSelectorURITemplate, manyVars, "too complex"},
		{mercureSelectorExact, "https://example.com/\n", "control character U+000A"},
		{mercureSelectorExact, "https://example.com/\u0085", "control character U+0085"},
		{mercureSelectorExact, "https://example.com/\x7f", "control character U+007F"},
		{mercureSelectorExact, "https://example.com/\u200b", "format character U+200B"},
		{mercureSelectorURLPattern, "https://example.com/\u202e", "format character U+202E"},
		{mercureSelectorExact, "https://example.com/\xff", "invalid UTF-8 at byte 20"},
		{mercureSelectorExact, strings.Repeat("a", mercureMaxSelectorLen+1), "longer than 4096 bytes"},
		{mercureSelectorKind(0), "x", "unknown selector kind"},
	}
	for _, tt := range tests {
		s, err := newMercureSelector(tt.kind, tt.sel, "")
		var se *mercureSelectorError
		if !errors.As(err, &se) {
			t.Errorf("%v %q: got %v, %v; want a *mercureSelectorError", tt.kind, tt.sel, s, err)
			continue
		}
		msg := err.Error()
		if !strings.Contains(msg, tt.reason) || !strings.HasPrefix(msg, "invalid "+tt.kind.String()+" selector ") {
			t.Errorf("%v %q: message %q, want it to name the kind and say %q", tt.kind, tt.sel, msg, tt.reason)
		}
		if len(msg) > 200 || strings.Contains(msg, "0x") {
			t.Errorf("%v %q: message %q too long or with library internals", tt.kind, tt.sel, msg)
		}
		if tt.kind == mercureSelectorKind(0) {
			continue
		}
		// The same text as a v0.21 selector is fine, and exact.
		l, err := newMercureSelector(mercureSelectorLegacy, tt.sel, "")
		if err != nil || !l.Match(tt.sel) || (tt.sel != manyVars && !l.Trivial()) {
			t.Errorf("legacy %q: %v, %v", tt.sel, l, err)
		}
	}
	// The v0.21 selector with more than 1001 variables compiles to no
	// regexp (the v0.21 hub panics on it) and is matched exactly.
	l, _ := newMercureSelector(mercureSelectorLegacy, manyVars, "")
	if !l.Trivial() || l.Match("https://example.com/?a=1") {
		t.Errorf("legacy template too complex: %+v", l)
	}
	if ok := mercureCheckString("https://example.com/caf\u00e9/\ufffd"); ok != nil {
		t.Errorf("mercureCheckString of valid text: %v", ok)
	}
}

func TestMercureParamKind(t *testing.T) {
	type want struct {
		kind mercureSelectorKind
		ok   bool
		err  bool
	}
	tests := []struct {
		name             string
		template, legacy bool
		want             want
	}{
		{"match", false, false, want{mercureSelectorExact, true, false}},
		{"match_exact", false, false, want{mercureSelectorExact, true, false}},
		{"match_urlpattern", false, false, want{mercureSelectorURLPattern, true, false}},
		{"match_uritemplate", true, false, want{mercureSelectorURITemplate, true, false}},
		{"match_uritemplate", false, false, want{0, false, true}},
		{"topic", false, true, want{mercureSelectorLegacy, true, false}},
		{"topic", false, false, want{0, false, false}},
		{"Match", true, true, want{0, false, true}},
		{"MATCH_EXACT", true, true, want{0, false, true}},
		{"match_URLPattern", true, true, want{0, false, true}},
		{"match_regex", true, true, want{0, false, true}},
		{"matches", true, true, want{0, false, true}},
		{"match_", true, true, want{0, false, true}},
		{"lastEventID", true, true, want{0, false, false}},
		{"last_event_id", true, true, want{0, false, false}},
		{"authorization", true, true, want{0, false, false}},
		{"matc", true, true, want{0, false, false}},
		{"Topic", true, true, want{0, false, false}},
	}
	for _, tt := range tests {
		k, ok, err := mercureParamKind(tt.name, tt.template, tt.legacy)
		if k != tt.want.kind || ok != tt.want.ok || (err != nil) != tt.want.err {
			t.Errorf("mercureParamKind(%q, %v, %v) = %v, %v, %v; want %+v", tt.name, tt.template, tt.legacy, k, ok, err, tt.want)
		}
		if err != nil && (!errors.Is(err, errMercureUnknownParam) || !strings.Contains(err.Error(), tt.name)) {
			t.Errorf("mercureParamKind(%q): error %q", tt.name, err)
		}
	}
	for _, tt := range []struct {
		mt       string
		template bool
		kind     mercureSelectorKind
		ok       bool
	}{
		{"", false, mercureSelectorExact, true},
		{"exact", false, mercureSelectorExact, true},
		{"urlpattern", false, mercureSelectorURLPattern, true},
		{"uritemplate", true, mercureSelectorURITemplate, true},
		{"uritemplate", false, mercureSelectorURITemplate, false},
		{"Exact", true, 0, false},
		{"regex", true, 0, false},
	} {
		if k, ok := mercureMatchTypeKind(tt.mt, tt.template); k != tt.kind || ok != tt.ok {
			t.Errorf("mercureMatchTypeKind(%q, %v) = %v, %v", tt.mt, tt.template, k, ok)
		}
	}
	if s := mercureSelectorKind(9).String(); s != "mercureSelectorKind(9)" {
		t.Errorf("String of an unknown kind: %q", s)
	}
}

// TestMercureMatchCacheBounded: the cache agrees with Match, stays within
// its size, keeps what is used, and skips trivial selectors.
func TestMercureMatchCacheBounded(t *testing.T) {
	const size = 256
	c := newMercureMatchCache(size)
	s, err := newMercureSelector(mercureSelectorURLPattern, "https://example.com/books/:id", "")
	if err != nil {
		t.Fatal(err)
	}
	hot := "https://example.com/books/hot"
	for i := range 10 * size {
		topic := fmt.Sprintf("https://example.com/books/%d", i)
		if i%7 == 0 {
			topic = fmt.Sprintf("https://example.com/other/%d", i)
		}
		if got, want := c.Match(s, topic), s.Match(topic); got != want {
			t.Fatalf("cached Match(%q) = %v, want %v", topic, got, want)
		}
		c.Match(s, hot)
		if n := c.Len(); n > size+mercureCacheShards {
			t.Fatalf("after %d topics the cache holds %d entries, more than %d", i+1, n, size)
		}
	}
	if !c.cached(s, hot) {
		t.Error("the hot entry was evicted")
	}

	e, _ := newMercureSelector(mercureSelectorExact, "https://example.com/books/1", "")
	before := c.Len()
	c.Match(e, "https://example.com/books/2")
	if c.Len() != before {
		t.Error("an exact selector was cached")
	}

	var nilCache *mercureMatchCache
	if !nilCache.Match(s, "https://example.com/books/1") || nilCache.Len() != 0 || newMercureMatchCache(0) != nil {
		t.Error("a nil cache must match without caching")
	}
	if !c.AnyMatchAny([]*mercureSelector{e, s}, []string{"x", "https://example.com/books/9"}) ||
		c.AnyMatchAny([]*mercureSelector{e, s}, []string{"x", "y"}) {
		t.Error("AnyMatchAny")
	}
}

// cached reports whether (s, topic) is in the cache.
func (c *mercureMatchCache) cached(s *mercureSelector, topic string) bool {
	k := mercureMatchKey{s.key, topic}
	for i := range c.shards {
		sh := &c.shards[i]
		sh.mu.RLock()
		_, inCur := sh.cur[k]
		_, inOld := sh.old[k]
		sh.mu.RUnlock()
		if inCur || inOld {
			return true
		}
	}
	return false
}

// TestMercureMatchCacheConcurrent is for -race: many goroutines, shared
// selectors, a small cache that keeps rotating.
func TestMercureMatchCacheConcurrent(t *testing.T) {
	c := newMercureMatchCache(64)
	var sels []*mercureSelector
	for _, p := range []struct {
		k mercureSelectorKind
		s string
	}{
		{mercureSelectorURLPattern, "https://example.com/books/:id"},
		{mercureSelectorURITemplate, "https://example.com/books/{id}"},
		{mercureSelectorLegacy, "https://example.com/{kind}/{id}"},
	} {
		s, err := newMercureSelector(p.k, p.s, "")
		if err != nil {
			t.Fatal(err)
		}
		sels = append(sels, s)
	}
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 500 {
				topic := fmt.Sprintf("https://example.com/books/%d", (i*7+g)%100)
				for _, s := range sels {
					if !c.Match(s, topic) {
						t.Errorf("%s does not match %s", s, topic)
						return
					}
				}
			}
		})
	}
	wg.Wait()
}

// FuzzMercureURITemplate: no template and no topic makes the URI-template
// selectors panic; a template always matches itself; the cache agrees.
func FuzzMercureURITemplate(f *testing.F) {
	for _, seed := range [][2]string{
		{"https://example.com/books/{id}", "https://example.com/books/1"},
		{"https://example.com/users/foo/{?topic}", "https://example.com/users/foo/?topic=a%2Fb"},
		{"/.well-known/mercure/subscriptions{/topic}{/subscriber}", "/.well-known/mercure/subscriptions/a/b"},
		{"{+path}/here{#frag}", "/a/b/here#x"},
		{"{var:3}{&x,y*}{;list}", "val&x=1;list=a,b"},
		{"https://example.com/{id", "https://example.com/1"},
		{"{?a,a,a,a,a,a,a,a}", "?a=1&a=2"},
		{"%zz{", ""},
		{"*", "anything"},
	} {
		f.Add(seed[0], seed[1])
	}
	cache := newMercureMatchCache(128)
	f.Fuzz(func(t *testing.T, tpl, topic string) {
		l, err := newMercureSelector(mercureSelectorLegacy, tpl, "")
		if err != nil {
			t.Fatalf("legacy %q: %v", tpl, err)
		}
		if !l.Match(tpl) {
			t.Fatalf("legacy %q does not match itself", tpl)
		}
		if l.Match(topic) != cache.Match(l, topic) {
			t.Fatalf("legacy %q, %q: the cache disagrees", tpl, topic)
		}
		s, err := newMercureSelector(mercureSelectorURITemplate, tpl, "")
		if err != nil {
			var se *mercureSelectorError
			if !errors.As(err, &se) || se.Selector != tpl {
				t.Fatalf("%q: error %v is not a *mercureSelectorError", tpl, err)
			}
			return
		}
		if !s.Match(tpl) {
			t.Fatalf("%q does not match itself", tpl)
		}
		if got := s.Match(topic); got != cache.Match(s, topic) {
			t.Fatalf("%q, %q: the cache disagrees", tpl, topic)
		} else if got != l.Match(topic) && len(tpl) <= mercureMaxSelectorLen && strings.Contains(tpl, "{") {
			t.Fatalf("%q, %q: match_uritemplate says %v, topic= the opposite", tpl, topic, got)
		}
	})
}

// BenchmarkMercureMatchCache: a URL pattern checked directly, and through
// the cache (the fan-out case: one topic, many subscribers with the
// same pattern).
func BenchmarkMercureMatchCache(b *testing.B) {
	s, err := newMercureSelector(mercureSelectorURLPattern, "https://example.com/books/:id", "")
	if err != nil {
		b.Fatal(err)
	}
	topic := "https://example.com/books/1234"
	b.Run("direct", func(b *testing.B) {
		for b.Loop() {
			s.Match(topic)
		}
	})
	b.Run("cached", func(b *testing.B) {
		c := newMercureMatchCache(1 << 16)
		for b.Loop() {
			c.Match(s, topic)
		}
	})
}
