package push

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"go.uber.org/zap"
)

// Mercure's active subscriptions (push_mercure's `subscriptions` option),
// built on the hub's presence: each subscription of a connection is also
// an exact topic of it, its key (<hub path>/subscriptions/<type>/<match>
// for the draft's selectors, <hub path>/subscriptions/<topic> for v0.21's
// topic=), so the hub's index and, on Redis, the cluster's roster know
// who holds it, on every node. A subscription's creation and end are
// published as private updates of type "mercure", and the API lists what
// the roster holds.

// MercureSubscriber is a push_mercure connection whose subscriptions are
// tracked: its subscriber id and its subscriptions.
type MercureSubscriber struct {
	// ID identifies the subscriber: urn:uuid:<random>, one per connection.
	ID string `json:"id"`
	// HubPath is the path of the hub's URL, under which the
	// subscriptions' documents live.
	HubPath string `json:"hub_path"`
	// Subscriptions are one per topic selector of the connection.
	Subscriptions []MercureSubscription `json:"subscriptions"`
}

// MercureSubscription is one subscription of a subscriber.
type MercureSubscription struct {
	// Key is the topic the connection holds for it (its collection's
	// path, or a digest of it when that is longer than a topic may be).
	Key string `json:"key"`
	// Type is the draft's matcher type (exact, urlpattern, uritemplate),
	// or "" for a v0.21 topic selector.
	Type string `json:"type,omitempty"`
	// Match is the selector as the subscriber gave it.
	Match string `json:"match"`
	// Payload is the payload its token gives it, if any.
	Payload json.RawMessage `json:"payload,omitempty"`
}

// mercureEscape percent-encodes a value as RFC 6570's simple expansion
// does: everything but the unreserved characters, once.
func mercureEscape(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '.' || c == '_' || c == '~' {
			b.WriteByte(c)
			continue
		}
		fmt.Fprintf(&b, "%%%02X", c)
	}
	return b.String()
}

// collection is the path of the subscriptions of one selector.
func (s MercureSubscription) collection(hubPath string) string {
	if s.Type == "" {
		return hubPath + "/subscriptions/" + mercureEscape(s.Match)
	}
	return hubPath + "/subscriptions/" + s.Type + "/" + mercureEscape(s.Match)
}

// mercureSubscriptionKey is the topic a subscription's holder follows: the
// collection's path, or when that is too long to be a topic, a digest.
func mercureSubscriptionKey(hubPath, typ, match string) string {
	k := MercureSubscription{Type: typ, Match: match}.collection(hubPath)
	if len(k) <= MaxTopicLength {
		return k
	}
	sum := sha256.Sum256([]byte(typ + "\x00" + match))
	return hubPath + "/subscriptions/~" + hex.EncodeToString(sum[:16])
}

// newMercureSubscriber makes the subscriber record of a connection with
// these selectors and claims.
func (h *MercureHandler) newMercureSubscriber(sels []*mercureSelector, claims *mercureClaims) *MercureSubscriber {
	var u [16]byte
	_, _ = rand.Read(u[:])
	u[6], u[8] = u[6]&0x0f|0x40, u[8]&0x3f|0x80 // a version 4 UUID
	id := fmt.Sprintf("urn:uuid:%x-%x-%x-%x-%x", u[0:4], u[4:6], u[6:8], u[8:10], u[10:])
	ms := &MercureSubscriber{ID: id, HubPath: h.Path}
	for _, sel := range sels {
		typ := sel.Kind().String()
		if sel.Kind() == mercureSelectorLegacy {
			typ = ""
		}
		s := MercureSubscription{Key: mercureSubscriptionKey(h.Path, typ, sel.String()), Type: typ, Match: sel.String()}
		if p, ok := claims.SubscriptionPayload(sel.String(), h.matches); ok {
			s.Payload, _ = json.Marshal(p)
		}
		ms.Subscriptions = append(ms.Subscriptions, s)
	}
	return ms
}

// mercureDoc is a subscription's document, in the draft's form (its
// `type` is "subscription") or, for a v0.21 subscription, v0.21's
// JSON-LD ("Subscription", with `topic`).
type mercureDoc struct {
	Context    string          `json:"@context,omitempty"`
	ID         string          `json:"id"`
	Type       string          `json:"type"`
	MatchType  string          `json:"match_type,omitempty"`
	Match      string          `json:"match,omitempty"`
	Topic      string          `json:"topic,omitempty"`
	Subscriber string          `json:"subscriber"`
	Active     bool            `json:"active"`
	Payload    json.RawMessage `json:"payload,omitempty"`
}

func (ms *MercureSubscriber) doc(s MercureSubscription, active bool) mercureDoc {
	d := mercureDoc{
		ID:         s.collection(ms.HubPath) + "/" + mercureEscape(ms.ID),
		Subscriber: ms.ID, Active: active, Payload: s.Payload,
	}
	if s.Type == "" {
		d.Type, d.Topic = "Subscription", s.Match
	} else {
		d.Type, d.MatchType, d.Match = "subscription", s.Type, s.Match
	}
	return d
}

// mercureSubscriptionEvents publishes a subscriber's subscriptions as
// active or ended: private updates of type "mercure" whose topic is the
// document's id, as both Mercure protocols have them. Publishers cannot
// send that type, nor (through push_mercure) to the hub's namespace.
func (h *Hub) mercureSubscriptionEvents(ms *MercureSubscriber, active bool) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, s := range ms.Subscriptions {
		d := ms.doc(s, active)
		if s.Type == "" {
			d.Context = "https://mercure.rocks/"
		}
		data, _ := json.Marshal(d)
		ev := &Event{Message: Message{Topics: []string{d.ID}, Type: "mercure", Data: string(data), Private: true}}
		if err := h.broker.Publish(ctx, ev); err != nil {
			h.logger.Warn("Mercure subscription event not published", zap.String("subscription", d.ID), zap.Error(err))
			return
		}
		h.stats.published.Add(1)
	}
}

// mercureTypes are the draft's matcher types this hub serves, which tell
// the draft's subscription paths from v0.21's.
var mercureTypes = []string{"exact", "urlpattern", "uritemplate"}

// serveSubscriptions answers the active subscriptions API under the hub:
// /subscriptions (every subscription), /subscriptions/{type}/{match} and
// /subscriptions/{type}/{match}/{subscriber} (the draft), or
// /subscriptions/{topic} and /subscriptions/{topic}/{subscriber} (v0.21).
// The client's token must allow subscribing to the path asked for.
func (h *MercureHandler) serveSubscriptions(w http.ResponseWriter, r *http.Request) error {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		return writeError(w, r, http.StatusMethodNotAllowed, errors.New("the subscriptions API is read with GET"))
	}
	base := h.baseURL(r)
	token, _ := h.token(r, r.URL.Query().Get)
	switch {
	case token == "":
		return h.authError(w, r, http.StatusUnauthorized, "", errors.New("a token is required to read subscriptions"))
	case h.subscriberJWT == nil:
		return h.authError(w, r, http.StatusUnauthorized, "invalid_token", errors.New("this hub has no subscriber key to check a token with"))
	}
	g, err := h.verify(h.subscriberJWT, token, base)
	if err != nil {
		return h.authError(w, r, http.StatusUnauthorized, "invalid_token", err)
	}
	path := r.URL.EscapedPath()
	if !g.mercure.CanReceivePrivate([]string{path}, h.matches) {
		return h.authError(w, r, http.StatusForbidden, "insufficient_scope", fmt.Errorf("the token may not subscribe to %s", path))
	}
	var parts []string
	if rest := strings.TrimPrefix(path, h.Path+"/subscriptions"); rest != "" {
		for _, p := range strings.Split(strings.TrimPrefix(rest, "/"), "/") {
			v, err := url.PathUnescape(p)
			if err != nil || v == "" {
				return writeError(w, r, http.StatusNotFound, fmt.Errorf("no such subscription resource: %s", path))
			}
			parts = append(parts, v)
		}
	}
	draft := g.mercure.Profile == mercureProfileDraft
	var typ, match, subscriber string
	switch {
	case len(parts) == 0:
	case len(parts) >= 2 && slices.Contains(mercureTypes, parts[0]) && len(parts) <= 3:
		draft, typ, match = true, parts[0], parts[1]
		if len(parts) == 3 {
			subscriber = parts[2]
		}
	case len(parts) <= 2:
		draft, match = false, parts[0]
		if len(parts) == 2 {
			subscriber = parts[1]
		}
	default:
		return writeError(w, r, http.StatusNotFound, fmt.Errorf("no such subscription resource: %s", path))
	}
	var keys []string
	if match == "" {
		infos, _, err := h.sse.hub.Topics(r.Context(), h.Path+"/subscriptions/", 100_000)
		if err != nil {
			return subscribeError(w, r, err)
		}
		for _, ti := range infos {
			keys = append(keys, ti.Topic)
		}
	} else {
		keys = []string{mercureSubscriptionKey(h.Path, typ, match)}
	}
	docs := []mercureDoc{}
	for _, key := range keys {
		members, _, _, err := h.sse.hub.members(r.Context(), key, 100_000, false)
		if err != nil {
			return subscribeError(w, r, err)
		}
		for _, m := range members {
			ms := m.Mercure
			if ms == nil || subscriber != "" && ms.ID != subscriber {
				continue
			}
			for _, s := range ms.Subscriptions {
				if s.Key == key && (match == "" || s.Type == typ && s.Match == match) {
					docs = append(docs, ms.doc(s, true))
				}
			}
		}
	}
	b, err := h.sse.hub.broker.Replay(r.Context(), nil, "")
	if err != nil {
		return subscribeError(w, r, err)
	}
	last := EarliestID
	if b.HeadSeq > 0 {
		last = hashID(b.Head)
	}
	hdr := w.Header()
	hdr.Set("Cache-Control", "must-revalidate")
	hdr.Set("Link", fmt.Sprintf(`<%s>; rel="mercure"; last-event-id=%q; type="mercure"; content-type="application/json"`, base, last))
	var body any
	switch {
	case subscriber != "" && len(docs) == 0:
		return writeError(w, r, http.StatusNotFound, fmt.Errorf("no active subscription %s", path))
	case subscriber != "" && draft:
		body = docs[0]
	case subscriber != "":
		d := docs[0]
		d.Context = "https://mercure.rocks/"
		body = struct {
			mercureDoc
			LastEventID string `json:"lastEventID"`
		}{d, last}
	case draft:
		body = map[string]any{"id": path, "type": "subscriptions", "subscriptions": docs}
	default:
		body = map[string]any{"@context": "https://mercure.rocks/", "id": path, "type": "Subscriptions", "lastEventID": last, "subscriptions": docs}
	}
	data, _ := json.Marshal(body)
	if draft {
		hdr.Set("Content-Type", "application/json")
	} else {
		hdr.Set("Content-Type", "application/ld+json")
	}
	w.WriteHeader(http.StatusOK)
	if r.Method == http.MethodGet {
		_, _ = w.Write(data)
	}
	return nil
}
