package push

import (
	"cmp"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
	"slices"
	"sort"
	"sync"
)

// subscribe serves a Mercure subscription: GET (EventSource), HEAD (the
// checks and headers only), or QUERY with the parameters in a form body
// too. The parameters of both parts count, as the draft says.
func (h *MercureHandler) subscribe(w http.ResponseWriter, r *http.Request) error {
	query, body, status, err := h.subscribeParams(r)
	if err != nil {
		return writeError(w, r, status, err)
	}
	get := func(name string) string { return cmp.Or(query.Get(name), body.Get(name)) }
	base := h.baseURL(r)
	grant, status, code, err := h.authenticateSubscriber(r, get, base)
	if err != nil {
		return h.authError(w, r, status, code, err)
	}
	sels, err := h.selectors(base, query, body)
	if err != nil {
		return writeError(w, r, http.StatusBadRequest, err)
	}
	az, ok, err := h.authorize(w, r, sels)
	if !ok {
		return err
	}
	if h.Authorize != nil {
		sels = slices.DeleteFunc(sels, func(s *mercureSelector) bool { return !slices.Contains(az.Topics, s.String()) })
	}
	release, status, err := h.sse.reserve(r)
	if err != nil {
		return h.sse.pauseOverLimit(w, r, status, err)
	}
	if r.Method == http.MethodHead {
		release()
		h.sse.openStream(w)
		return nil
	}
	// the header first, then the draft's name, then v0.21's, then the
	// name push_sse and push_ws take
	lastID := cmp.Or(r.Header.Get("Last-Event-ID"), get("last_event_id"), get("lastEventID"), get("lastEventId"))
	a := &admission{LastEventID: lastID, Grant: grant, User: az.User, Meta: az.Meta, release: release}
	for _, sel := range sels {
		if sel.Trivial() && !sel.all && ValidateTopic(sel.String()) == nil {
			a.Topics = append(a.Topics, sel.String()) // an index lookup
		} else {
			a.Patterns = append(a.Patterns, sel)
		}
	}
	if h.Subscriptions {
		var claims *mercureClaims
		if grant != nil {
			claims = grant.mercure
		}
		a.mercure = h.newMercureSubscriber(sels, claims)
		for _, s := range a.mercure.Subscriptions {
			a.Topics = append(a.Topics, s.Key)
		}
	}
	slices.Sort(a.Topics)
	a.Topics = slices.Compact(a.Topics)
	a.opened = func(hdr http.Header, sub *Subscription) {
		if a.mercure != nil {
			h.sse.hub.mercureSubscriptionEvents(a.mercure, true)
		}
		if lastID != "" {
			// the event before the first one sent: the one asked for,
			// or "earliest" when the hub has nothing before what it sends
			at := lastID
			if sub.Backlog.Reset != "" || lastID == EarliestID {
				at = EarliestID
			}
			hdr.Set("Last-Event-ID", at)         // v0.21
			hdr.Set("Mercure-Last-Event-ID", at) // the draft
		}
	}
	return h.sse.serve(w, r, a)
}

// authorize asks the app's authorize hook, if the hub has one, about a
// subscription's selectors, each as its text: exact topics and patterns
// alike. Admitted, it reports true with the texts the app allows.
func (h *MercureHandler) authorize(w http.ResponseWriter, r *http.Request, sels []*mercureSelector) (authorization, bool, error) {
	asked := make([]string, len(sels))
	for i, sel := range sels {
		asked[i] = sel.String()
	}
	slices.Sort(asked)
	return h.sse.authorize(w, r, transportMercure, slices.Compact(asked))
}

// subscribeParams reads a subscription's query, and for QUERY its form
// body (at most max_body).
func (h *MercureHandler) subscribeParams(r *http.Request) (query, body url.Values, status int, err error) {
	query, err = parseQuery(r)
	if err != nil {
		return nil, nil, http.StatusBadRequest, err
	}
	if r.Method != "QUERY" {
		return query, url.Values{}, 0, nil
	}
	if mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); mt != "application/x-www-form-urlencoded" {
		return nil, nil, http.StatusUnsupportedMediaType, errors.New("a QUERY subscription's body must be application/x-www-form-urlencoded")
	}
	raw, err := io.ReadAll(io.LimitReader(r.Body, h.MaxBody+1))
	if err != nil {
		return nil, nil, http.StatusBadRequest, fmt.Errorf("reading the body: %v", err)
	}
	if int64(len(raw)) > h.MaxBody {
		return nil, nil, http.StatusRequestEntityTooLarge, fmt.Errorf("body larger than %d bytes", h.MaxBody)
	}
	if body, err = url.ParseQuery(string(raw)); err != nil {
		return nil, nil, http.StatusBadRequest, fmt.Errorf("malformed form body: %v", err)
	}
	return query, body, 0, nil
}

// authenticateSubscriber verifies a subscriber's token, if it sent one;
// without one it is anonymous, which needs the anonymous option. The code
// is the Bearer challenge's error.
func (h *MercureHandler) authenticateSubscriber(r *http.Request, get func(string) string, base string) (*Grant, int, string, error) {
	token, fromCookie := h.token(r, get)
	switch {
	case token == "" && h.Anonymous:
		return nil, 0, "", nil
	case token == "":
		return nil, http.StatusUnauthorized, "", errors.New("a token is required to subscribe (this hub is not anonymous)")
	case h.subscriberJWT == nil:
		// an anonymous-only hub has no key to check a token with: the
		// client is served as anonymous, as if it had sent none
		return nil, 0, "", nil
	}
	g, err := h.verify(h.subscriberJWT, token, base)
	if err == nil && g.expired() {
		err = errTokenExpired
	}
	if err != nil {
		return nil, http.StatusUnauthorized, "invalid_token", err
	}
	g.FromCookie = fromCookie
	return g, 0, "", nil
}

// selectors reads a subscription's topic selectors, from the query and the
// body: match and match_exact (exact topics), match_urlpattern,
// match_uritemplate, and v0.21's topic (exact, `*` or a URI template).
// Exact topics go to the hub's index; the others are matched against each
// event's topics (once per pattern and topic, cached). A name in the
// reserved match namespace that names no matcher type, a malformed or
// over-long value, too many selectors, or none at all is an error (400).
// A selector given twice counts once.
func (h *MercureHandler) selectors(base string, parts ...url.Values) ([]*mercureSelector, error) {
	n := 0
	var sels []*mercureSelector
	seen := make(map[string]bool)
	for _, part := range parts {
		names := make([]string, 0, len(part))
		for name := range part {
			names = append(names, name)
		}
		sort.Strings(names) // the same error for the same request
		for _, name := range names {
			kind, ok, err := mercureParamKind(name, true, true)
			if err != nil {
				return nil, fmt.Errorf("%v: use match, match_exact, match_urlpattern or match_uritemplate", err)
			}
			if !ok {
				continue
			}
			for _, v := range part[name] {
				if n++; n > h.MaxSelectors {
					return nil, fmt.Errorf("too many topic selectors: more than %d", h.MaxSelectors)
				}
				if len(v) > mercureMaxSelectorLen {
					return nil, fmt.Errorf("%s selector %.40q... is longer than %d bytes", kind, v, mercureMaxSelectorLen)
				}
				if v == "" {
					return nil, fmt.Errorf("empty %s selector", name)
				}
				sel, err := h.compiled.get(kind, v, base)
				if err != nil {
					return nil, err
				}
				if !seen[sel.key] {
					seen[sel.key] = true
					sels = append(sels, sel)
				}
			}
		}
	}
	if n == 0 {
		return nil, errors.New("no topic selector: add match=<topic> (or topic=<selector>, as v0.21 clients do)")
	}
	return sels, nil
}

// selectorCache keeps compiled selectors, which are immutable, so that
// the many subscribers of one pattern share one compiled pattern (a URL
// pattern is several regexps) instead of compiling and holding their own.
// It holds at most maxSelectorCache; when full it starts again.
type selectorCache struct {
	mu   sync.Mutex
	sels map[string]*mercureSelector
}

const maxSelectorCache = 10_000

func (c *selectorCache) get(kind mercureSelectorKind, raw, base string) (*mercureSelector, error) {
	k := string(rune('0'+kind)) + base + "\x00" + raw
	c.mu.Lock()
	sel := c.sels[k]
	c.mu.Unlock()
	if sel != nil {
		return sel, nil
	}
	sel, err := newMercureSelector(kind, raw, base)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	if c.sels == nil || len(c.sels) >= maxSelectorCache {
		c.sels = make(map[string]*mercureSelector)
	}
	c.sels[k] = sel
	c.mu.Unlock()
	return sel, nil
}
