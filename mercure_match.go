package push

import (
	"errors"
	"fmt"
	"hash/maphash"
	"regexp"
	"strings"
	"sync"
	"unicode"
	"unicode/utf8"

	urlpattern "github.com/dunglas/go-urlpattern"
	"github.com/yosida95/uritemplate/v3"
)

// Topic selectors of the Mercure hub (push_mercure).
//
// Mercure has two generations of selectors:
//
//   - v0.21 (the released protocol): a subscriber's `topic=` values and the
//     strings of a token's `mercure.publish`/`mercure.subscribe` claim. A
//     selector is `*` (every topic), or matches a topic equal to it, or, when
//     it is a valid RFC 6570 URI template, a topic the template matches. A
//     string that is not a valid template is just an exact topic: this is
//     not an error (mercureSelectorLegacy).
//   - the draft: the `match` (or `match_exact`) and `match_urlpattern`
//     query parameters, and `{"match", "match_type"}` objects in a token's
//     authorization_details. `*` matches every topic whatever the type.
//     Exact matching is byte for byte; URL patterns follow the WHATWG URL
//     Pattern standard, relative patterns and topics resolved against the
//     hub's URL. A malformed value is an error (400 or 401).
//
// mercureSelectorURITemplate is the project's own `match_uritemplate`: the
// v0.21 template semantics under the draft's strict rules (a malformed
// template is an error). The draft does not define it: a hub offering it
// should list it in mercure_matcher_types_supported.

// mercureSelectorKind is how a selector's text is read.
type mercureSelectorKind uint8

const (
	// mercureSelectorExact is the draft's `match` and `match_exact`, and
	// match_type "exact" (the default) in authorization_details.
	mercureSelectorExact mercureSelectorKind = iota + 1
	// mercureSelectorURLPattern is the draft's `match_urlpattern` and
	// match_type "urlpattern".
	mercureSelectorURLPattern
	// mercureSelectorURITemplate is `match_uritemplate` and match_type
	// "uritemplate" (a project extension, not in the draft).
	mercureSelectorURITemplate
	// mercureSelectorLegacy is v0.21's `topic=` and the strings of its
	// `mercure` claim: `*`, exact, or a URI template if the text is one.
	mercureSelectorLegacy
)

// mercureMaxSelectorLen bounds a selector's length (in bytes). Mercure's
// draft hub uses the same 4096; the draft asks hubs for some bound.
const mercureMaxSelectorLen = 4096

// mercureDefaultBaseURL resolves relative URL patterns and topics when the
// hub's URL is not known. ".invalid" (RFC 6761) cannot be a real host, so
// relative patterns match relative topics and absolute ones absolute topics.
const mercureDefaultBaseURL = "https://mercure.invalid/.well-known/mercure"

// String gives the matcher type name of the kind, as used in
// `match_<type>` parameters, match_type values and subscription URLs.
func (k mercureSelectorKind) String() string {
	switch k {
	case mercureSelectorExact:
		return "exact"
	case mercureSelectorURLPattern:
		return "urlpattern"
	case mercureSelectorURITemplate:
		return "uritemplate"
	case mercureSelectorLegacy:
		return "topic"
	}
	return fmt.Sprintf("mercureSelectorKind(%d)", uint8(k))
}

// mercureMatchTypeKind reads a match_type of authorization_details: "" (absent)
// and "exact" are exact, "urlpattern" a URL pattern, and "uritemplate" a URI
// template when allowTemplate is set. Names are case-sensitive. ok is false
// for any other name, which the draft says must reject the token.
func mercureMatchTypeKind(matchType string, allowTemplate bool) (k mercureSelectorKind, ok bool) {
	switch matchType {
	case "", "exact":
		return mercureSelectorExact, true
	case "urlpattern":
		return mercureSelectorURLPattern, true
	case "uritemplate":
		return mercureSelectorURITemplate, allowTemplate
	}
	return 0, false
}

// errMercureUnknownParam is a subscribe query parameter in the reserved
// `match` namespace that names no supported matcher type: the draft says
// 400 Bad Request.
var errMercureUnknownParam = errors.New("unknown topic matcher parameter")

// mercureParamKind reads a subscribe query (or QUERY body) parameter name:
// "match" and "match_exact" are exact, "match_urlpattern" a URL pattern,
// "match_uritemplate" a URI template when allowTemplate is set, and
// "topic" the v0.21 selector when allowLegacy is set. ok is false for a
// parameter that is no selector (lastEventID, authorization...). An error
// (errMercureUnknownParam, a 400) is any other name that starts with
// "match" in any case: the draft reserves that whole prefix, so that a
// misspelt matcher type fails loudly. Names are case-sensitive.
func mercureParamKind(name string, allowTemplate, allowLegacy bool) (k mercureSelectorKind, ok bool, err error) {
	switch name {
	case "match", "match_exact":
		return mercureSelectorExact, true, nil
	case "match_urlpattern":
		return mercureSelectorURLPattern, true, nil
	case "match_uritemplate":
		if allowTemplate {
			return mercureSelectorURITemplate, true, nil
		}
	case "topic":
		if allowLegacy {
			return mercureSelectorLegacy, true, nil
		}
		return 0, false, nil
	}
	if len(name) >= 5 && strings.EqualFold(name[:5], "match") {
		return 0, false, fmt.Errorf("%w %q", errMercureUnknownParam, name)
	}
	return 0, false, nil
}

// mercureSelectorError is a selector that cannot be used: too long, with a
// forbidden character, or not a valid template or pattern. Its message
// quotes the selector (shortened) and says what is wrong, and is fit for a
// 400 body. The library's own error is kept for logs (Unwrap) but not put
// in the message: go-urlpattern's can dump internal structures.
type mercureSelectorError struct {
	Kind     mercureSelectorKind
	Selector string
	Reason   string
	Err      error
}

func (e *mercureSelectorError) Error() string {
	s := e.Selector
	if len(s) > 64 {
		s = s[:61] + "..."
	}
	return fmt.Sprintf("invalid %s selector %q: %s", e.Kind, s, e.Reason)
}

func (e *mercureSelectorError) Unwrap() error { return e.Err }

// mercureCheckString applies the draft's rule for topics, matcher values
// and publisher ids and types: valid UTF-8 without C0 or C1 controls, DEL,
// or Unicode format characters (category Cf: bidi and zero-width marks).
func mercureCheckString(s string) error {
	for i, r := range s {
		switch {
		case r == utf8.RuneError && !strings.HasPrefix(s[i:], "\uFFFD"):
			return fmt.Errorf("invalid UTF-8 at byte %d", i)
		case r < 0x20 || (r >= 0x7f && r <= 0x9f):
			return fmt.Errorf("control character %U at byte %d", r, i)
		case unicode.Is(unicode.Cf, r):
			return fmt.Errorf("format character %U at byte %d", r, i)
		}
	}
	return nil
}

// mercureSelector is one compiled topic selector. It is immutable and
// safe for concurrent use.
type mercureSelector struct {
	kind mercureSelectorKind
	raw  string
	all  bool                   // "*"
	re   *regexp.Regexp         // a URI template, as its regexp
	pat  *urlpattern.URLPattern // a URL pattern
	base string                 // resolves relative URL patterns and topics
	key  string                 // kind, base and raw: the cache key
}

// newMercureSelector compiles one selector of kind. base is the hub's URL
// (e.g. "https://example.com/.well-known/mercure"), used for URL patterns
// only; "" means mercureDefaultBaseURL.
//
// A draft kind (exact, urlpattern, uritemplate) must be at most
// mercureMaxSelectorLen bytes, pass mercureCheckString, and parse: a
// *mercureSelectorError otherwise. The legacy kind never fails, as in
// v0.21: text that is no valid URI template (or too long to compile) is
// matched exactly.
func newMercureSelector(kind mercureSelectorKind, raw, base string) (*mercureSelector, error) {
	s := &mercureSelector{kind: kind, raw: raw, all: raw == "*"}
	fail := func(reason string, err error) (*mercureSelector, error) {
		return nil, &mercureSelectorError{Kind: kind, Selector: raw, Reason: reason, Err: err}
	}
	if kind != mercureSelectorLegacy {
		if len(raw) > mercureMaxSelectorLen {
			return fail(fmt.Sprintf("longer than %d bytes", mercureMaxSelectorLen), nil)
		}
		if err := mercureCheckString(raw); err != nil {
			return fail(err.Error(), err)
		}
	}
	switch kind {
	case mercureSelectorExact:
	case mercureSelectorLegacy:
		// v0.21 tries a template only when the text has a "{".
		if !s.all && len(raw) <= mercureMaxSelectorLen && strings.Contains(raw, "{") {
			s.re, _ = mercureTemplateRegexp(raw)
		}
	case mercureSelectorURITemplate:
		if !s.all {
			re, err := mercureTemplateRegexp(raw)
			if errors.Is(err, errMercureTemplateTooComplex) {
				return fail("URI template too complex to match", err)
			} else if err != nil {
				return fail("not a valid URI template (RFC 6570)", err)
			}
			s.re = re
		}
	case mercureSelectorURLPattern:
		if base == "" {
			base = mercureDefaultBaseURL
		}
		s.base = base
		if !s.all {
			p, err := mercureCompileURLPattern(raw, base)
			if err != nil {
				return fail("not a valid URL pattern", err)
			}
			s.pat = p
		}
	default:
		return fail("unknown selector kind", nil)
	}
	s.key = string(rune('0'+kind)) + s.base + "\x00" + raw
	return s, nil
}

// errMercureTemplateTooComplex is a valid URI template whose regexp Go
// cannot compile.
var errMercureTemplateTooComplex = errors.New("URI template too complex")

// mercureTemplateRegexp compiles a URI template to the regexp that
// matches its expansions. uritemplate's Regexp uses regexp.MustCompile,
// which panics on some valid templates (an expression of more than 1001
// variables gives a repeat count Go's regexp refuses): that is an error
// here.
func mercureTemplateRegexp(raw string) (re *regexp.Regexp, err error) {
	t, err := uritemplate.New(raw)
	if err != nil {
		return nil, err
	}
	defer func() {
		if r := recover(); r != nil {
			re, err = nil, fmt.Errorf("%w: %v", errMercureTemplateTooComplex, r)
		}
	}()
	return t.Regexp(), nil
}

// mercureCompileURLPattern compiles a URL pattern without ignoreCase (the
// draft forbids it), recovering from a panic in the parser as an error.
// go-urlpattern compiles to Go's regexp (RE2), whose matching time is
// linear, as the draft requires against crafted patterns.
func mercureCompileURLPattern(raw, base string) (p *urlpattern.URLPattern, err error) {
	defer func() {
		if r := recover(); r != nil {
			p, err = nil, fmt.Errorf("urlpattern panic: %v", r)
		}
	}()
	return urlpattern.New(raw, base, nil)
}

// Kind is how the selector's text is read.
func (s *mercureSelector) Kind() mercureSelectorKind { return s.kind }

// String is the selector as given.
func (s *mercureSelector) String() string { return s.raw }

// Trivial reports whether Match is a string comparison (`*` or exact, or
// a legacy selector that is no template), not worth caching.
func (s *mercureSelector) Trivial() bool { return s.all || (s.re == nil && s.pat == nil) }

// Match reports whether topic matches the selector: `*` matches every
// topic; a topic equal to the selector always matches (so a template
// selects itself, as v0.21 and draft payload selection need); otherwise
// the template or the URL pattern decides. A topic that cannot be parsed
// as a URL (against the base) matches no URL pattern.
func (s *mercureSelector) Match(topic string) bool {
	switch {
	case s.all || topic == s.raw:
		return true
	case s.re != nil:
		return s.re.MatchString(topic)
	case s.pat != nil:
		return s.pat.Test(topic, s.base)
	}
	return false
}

// MatchAny reports whether any of topics matches the selector.
func (s *mercureSelector) MatchAny(topics []string) bool {
	for _, t := range topics {
		if s.Match(t) {
			return true
		}
	}
	return false
}

// mercureMatchCache memoizes (selector, topic) → Match, so that fanning
// an update out to many pattern subscribers costs about a map lookup each.
// It is bounded and safe for concurrent use; a nil cache matches without
// memoizing. Entries are keyed by the selector's kind, base and text, so
// two subscribers with the same selector share them.
//
// Each of its shards keeps two generations of at most perShard/2 entries:
// when the current one is full it becomes the old one and the previous old
// one is dropped; a hit in the old generation is moved to the current one.
// That keeps what is used and forgets the rest, with no list to maintain.
type mercureMatchCache struct {
	seed     maphash.Seed
	perShard int
	shards   [mercureCacheShards]mercureCacheShard
}

const mercureCacheShards = 32

type mercureMatchKey struct{ sel, topic string }

type mercureCacheShard struct {
	mu       sync.RWMutex
	cur, old map[mercureMatchKey]bool
	_        [24]byte // 64 bytes a shard: no false sharing between shards
}

// newMercureMatchCache makes a cache of about maxEntries entries (at
// least one per shard); maxEntries <= 0 gives nil: no cache.
func newMercureMatchCache(maxEntries int) *mercureMatchCache {
	if maxEntries <= 0 {
		return nil
	}
	c := &mercureMatchCache{seed: maphash.MakeSeed(), perShard: max(2, maxEntries/mercureCacheShards)}
	for i := range c.shards {
		c.shards[i].cur = make(map[mercureMatchKey]bool)
	}
	return c
}

// Match is s.Match(topic), memoized. Trivial selectors are not cached.
func (c *mercureMatchCache) Match(s *mercureSelector, topic string) bool {
	if c == nil || s.Trivial() || topic == s.raw {
		return s.Match(topic)
	}
	k := mercureMatchKey{s.key, topic}
	sh := &c.shards[maphash.Comparable(c.seed, k)%mercureCacheShards]
	sh.mu.RLock()
	v, ok := sh.cur[k]
	if ok {
		sh.mu.RUnlock()
		return v
	}
	v, ok = sh.old[k]
	sh.mu.RUnlock()
	if !ok {
		v = s.Match(topic)
	}
	sh.mu.Lock()
	sh.put(k, v, c.perShard/2)
	sh.mu.Unlock()
	return v
}

func (sh *mercureCacheShard) put(k mercureMatchKey, v bool, genSize int) {
	if len(sh.cur) >= genSize {
		sh.old, sh.cur = sh.cur, make(map[mercureMatchKey]bool, genSize)
	}
	sh.cur[k] = v
}

// MatchAny reports whether any of topics matches s, memoized per topic.
func (c *mercureMatchCache) MatchAny(s *mercureSelector, topics []string) bool {
	for _, t := range topics {
		if c.Match(s, t) {
			return true
		}
	}
	return false
}

// AnyMatchAny reports whether any of topics matches any of sels: the
// private-update and publish checks are made of it.
func (c *mercureMatchCache) AnyMatchAny(sels []*mercureSelector, topics []string) bool {
	for _, s := range sels {
		if c.MatchAny(s, topics) {
			return true
		}
	}
	return false
}

// Len counts the cached entries (both generations).
func (c *mercureMatchCache) Len() int {
	if c == nil {
		return 0
	}
	n := 0
	for i := range c.shards {
		sh := &c.shards[i]
		sh.mu.RLock()
		n += len(sh.cur) + len(sh.old)
		sh.mu.RUnlock()
	}
	return n
}
