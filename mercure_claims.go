package push

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
)

// The Mercure grants of a verified token, in either profile:
//
//   - v0.21: a `mercure` claim (or, taking precedence when present, the
//     namespaced `https://mercure.rocks/` claim) with `publish` and
//     `subscribe` arrays of v0.21 selectors and any `payload`:
//
//     {"mercure": {"publish": ["*"], "subscribe": ["https://example.com/books/{id}"], "payload": {"user": 1}}}
//
//   - the draft: RFC 9396 `authorization_details` in an RFC 9068 access
//     token (header typ "at+jwt"); each entry of type
//     "https://mercure.rocks/authorization-detail" grants its `actions`
//     ("publish", "subscribe"; others are ignored) on its `topics`, objects
//     {"match": ..., "match_type": "exact" (default) | "urlpattern"}, and
//     may carry a `payload`:
//
//     {"authorization_details": [{"type": "https://mercure.rocks/authorization-detail",
//     "actions": ["subscribe"], "topics": [{"match": "https://example.com/books/:id", "match_type": "urlpattern"}]}]}
//
// As Mercure's own draft hub does, the `mercure` claim is read only when
// the token has no (or an empty) authorization_details.

// mercureDetailType is the RFC 9396 type of a Mercure authorization
// detail, compared byte for byte.
const mercureDetailType = "https://mercure.rocks/authorization-detail"

// errMercureClaims is a token whose Mercure claims are malformed: the
// draft says 401 with error="invalid_token", and no partial acceptance.
var errMercureClaims = errors.New("invalid mercure claims")

// mercureProfile says where a token's grants came from.
type mercureProfile uint8

const (
	// mercureProfileNone: neither claim; the token grants nothing (its
	// holder still receives public updates).
	mercureProfileNone mercureProfile = iota
	// mercureProfileV021: the `mercure` claim.
	mercureProfileV021
	// mercureProfileDraft: authorization_details.
	mercureProfileDraft
)

func (p mercureProfile) String() string {
	switch p {
	case mercureProfileV021:
		return "mercure claim (v0.21)"
	case mercureProfileDraft:
		return "authorization_details (draft)"
	}
	return "none"
}

// mercureClaimsOptions are how parseMercureClaims reads claims.
type mercureClaimsOptions struct {
	// BaseURL is the hub's URL, against which relative URL patterns and
	// topics resolve; "" is mercureDefaultBaseURL.
	BaseURL string
	// NoV021 ignores the `mercure` claim; NoDraft ignores
	// authorization_details.
	NoV021, NoDraft bool
	// URITemplate accepts match_type "uritemplate" (the project's
	// extension). Without it, as with any unknown match_type, the token is
	// rejected.
	URITemplate bool
	// MaxDetails bounds the Mercure authorization details of a token and
	// MaxDetailTopics their topics, summed; 0 is 100 each (Mercure's draft
	// hub's bounds). MaxV021Selectors bounds each of mercure.publish and
	// mercure.subscribe; 0 is 1000.
	MaxDetails, MaxDetailTopics, MaxV021Selectors int
}

// mercureDetail is one Mercure authorization detail (or the v0.21 claim
// made into one), kept in order for payload selection.
type mercureDetail struct {
	publish, subscribe bool
	selectors          []*mercureSelector
	payload            any
}

// mercureClaims are a token's Mercure grants. A nil *mercureClaims is an
// anonymous subscriber: it may publish nothing and see no private update.
type mercureClaims struct {
	Profile mercureProfile
	// Publish: the token may publish an update when each of its topics
	// matches one of these. Subscribe: its holder may receive a private
	// update when one of the update's topics matches one of these.
	Publish, Subscribe []*mercureSelector
	// Payload is v0.21's mercure.payload, the same for every subscription;
	// nil in the draft, whose payloads are per detail (SubscriptionPayload).
	Payload any

	details []mercureDetail
}

// mercureTokenTypeOK reports whether a JWT header's typ is the draft's
// "at+jwt" (or "application/at+jwt"), compared case-insensitively, as the
// draft requires of every token (RFC 9068). v0.21 tokens have no such rule.
func mercureTokenTypeOK(typ any) bool {
	s, _ := typ.(string)
	if len(s) > len("application/") && strings.EqualFold(s[:len("application/")], "application/") {
		s = s[len("application/"):]
	}
	return strings.EqualFold(s, "at+jwt")
}

// parseMercureClaims reads the Mercure grants of a verified token's claims
// (golang-jwt's MapClaims, decoded JSON). A malformed grant fails the
// whole token with an error wrapping errMercureClaims (a 401); a token
// with neither claim gives a mercureClaims of profile none.
func parseMercureClaims(claims map[string]any, opt mercureClaimsOptions) (*mercureClaims, error) {
	if !opt.NoDraft {
		if ad, ok := claims["authorization_details"]; ok && ad != nil {
			list, ok := ad.([]any)
			if !ok {
				return nil, mercureClaimsErr("authorization_details is %s, not an array", mercureJSONKind(ad))
			}
			if len(list) > 0 {
				return parseMercureDetails(list, opt)
			}
		}
	}
	if !opt.NoV021 {
		v, ok := claims["https://mercure.rocks/"]
		name := "https://mercure.rocks/"
		if !ok || v == nil {
			v, ok, name = claims["mercure"], true, "mercure"
		}
		if ok && v != nil {
			return parseMercureV021(name, v, opt)
		}
	}
	return &mercureClaims{Profile: mercureProfileNone}, nil
}

func mercureClaimsErr(format string, args ...any) error {
	return fmt.Errorf("%w: %s", errMercureClaims, fmt.Sprintf(format, args...))
}

// mercureJSONKind names the JSON type of a decoded value, for messages: "a
// string", "an array", "null"...
func mercureJSONKind(v any) string {
	switch v.(type) {
	case nil:
		return "null"
	case string:
		return "a string"
	case bool:
		return "a boolean"
	case float64, int, int64, json.Number:
		return "a number"
	case []any:
		return "an array"
	case map[string]any:
		return "an object"
	}
	return fmt.Sprintf("a %T", v)
}

// parseMercureV021 reads v0.21's claim as its hub does (Go's JSON into
// []string): publish and subscribe are arrays of strings or null.
func parseMercureV021(name string, v any, opt mercureClaimsOptions) (*mercureClaims, error) {
	obj, ok := v.(map[string]any)
	if !ok {
		return nil, mercureClaimsErr("claim %q is %s, not an object", name, mercureJSONKind(v))
	}
	limit := opt.MaxV021Selectors
	if limit <= 0 {
		limit = 1000
	}
	c := &mercureClaims{Profile: mercureProfileV021, Payload: obj["payload"]}
	for _, action := range []string{"publish", "subscribe"} {
		raw, ok := obj[action].([]any)
		if !ok {
			if obj[action] != nil {
				return nil, mercureClaimsErr("%s.%s is %s, not an array", name, action, mercureJSONKind(obj[action]))
			}
			continue
		}
		if len(raw) > limit {
			return nil, mercureClaimsErr("%s.%s has %d selectors, more than %d", name, action, len(raw), limit)
		}
		sels := make([]*mercureSelector, 0, len(raw))
		for i, e := range raw {
			s, ok := e.(string)
			if !ok {
				return nil, mercureClaimsErr("%s.%s[%d] is %s, not a string", name, action, i, mercureJSONKind(e))
			}
			sel, err := newMercureSelector(mercureSelectorLegacy, s, opt.BaseURL)
			if err != nil {
				return nil, fmt.Errorf("%w: %s.%s[%d]: %w", errMercureClaims, name, action, i, err)
			}
			sels = append(sels, sel)
		}
		d := mercureDetail{selectors: sels}
		if action == "publish" {
			c.Publish, d.publish = sels, true
		} else {
			c.Subscribe, d.subscribe, d.payload = sels, true, c.Payload
		}
		c.details = append(c.details, d)
	}
	return c, nil
}

// parseMercureDetails reads authorization_details by the draft: entries of
// other types are skipped; a Mercure entry must have a non-empty `actions`
// array of strings and a non-empty `topics` array of {match, match_type}
// objects. Any fault in a Mercure entry rejects the token.
func parseMercureDetails(list []any, opt mercureClaimsOptions) (*mercureClaims, error) {
	maxDetails, maxTopics := opt.MaxDetails, opt.MaxDetailTopics
	if maxDetails <= 0 {
		maxDetails = 100
	}
	if maxTopics <= 0 {
		maxTopics = 100
	}
	c := &mercureClaims{Profile: mercureProfileDraft}
	var details, topics int
	for i, e := range list {
		obj, ok := e.(map[string]any)
		if !ok {
			return nil, mercureClaimsErr("authorization_details[%d] is %s, not an object", i, mercureJSONKind(e))
		}
		typ, ok := obj["type"].(string)
		if !ok && obj["type"] != nil {
			return nil, mercureClaimsErr("authorization_details[%d].type is %s, not a string", i, mercureJSONKind(obj["type"]))
		}
		if typ != mercureDetailType {
			continue
		}
		if details++; details > maxDetails {
			return nil, mercureClaimsErr("more than %d Mercure authorization details", maxDetails)
		}
		where := fmt.Sprintf("authorization_details[%d]", i)
		actions, ok := obj["actions"].([]any)
		if !ok || len(actions) == 0 {
			return nil, mercureClaimsErr("%s.actions must be a non-empty array of strings", where)
		}
		var d mercureDetail
		for j, a := range actions {
			switch a {
			case "publish":
				d.publish = true
			case "subscribe":
				d.subscribe = true
			default: // unknown actions grant nothing, but must be strings
				if _, ok := a.(string); !ok {
					return nil, mercureClaimsErr("%s.actions[%d] is %s, not a string", where, j, mercureJSONKind(a))
				}
			}
		}
		ts, ok := obj["topics"].([]any)
		if !ok || len(ts) == 0 {
			return nil, mercureClaimsErr(`%s.topics must be a non-empty array of {"match", "match_type"} objects`, where)
		}
		if topics += len(ts); topics > maxTopics {
			return nil, mercureClaimsErr("more than %d topics in Mercure authorization details", maxTopics)
		}
		for j, t := range ts {
			sel, err := parseMercureTopic(t, opt)
			if err != nil {
				return nil, fmt.Errorf("%w: %s.topics[%d]: %w", errMercureClaims, where, j, err)
			}
			d.selectors = append(d.selectors, sel)
		}
		d.payload = obj["payload"]
		if d.publish {
			c.Publish = append(c.Publish, d.selectors...)
		}
		if d.subscribe {
			c.Subscribe = append(c.Subscribe, d.selectors...)
		}
		c.details = append(c.details, d)
	}
	return c, nil
}

// parseMercureTopic reads one {match, match_type} object.
func parseMercureTopic(t any, opt mercureClaimsOptions) (*mercureSelector, error) {
	obj, ok := t.(map[string]any)
	if !ok {
		return nil, fmt.Errorf(`%s, not a {"match", "match_type"} object`, mercureJSONKind(t))
	}
	match, ok := obj["match"].(string)
	if !ok {
		return nil, fmt.Errorf(`"match" is %s, not a string`, mercureJSONKind(obj["match"]))
	}
	if match == "" {
		return nil, errors.New(`"match" is empty`)
	}
	mt, ok := obj["match_type"].(string)
	if !ok && obj["match_type"] != nil {
		return nil, fmt.Errorf(`"match_type" is %s, not a string`, mercureJSONKind(obj["match_type"]))
	}
	kind, ok := mercureMatchTypeKind(mt, opt.URITemplate)
	if !ok {
		return nil, fmt.Errorf("unsupported match_type %q", mt)
	}
	return newMercureSelector(kind, match, opt.BaseURL)
}

// CanPublish reports whether the token may publish an update with these
// topics: each of them (canonical and alternates) must match one of its
// publish selectors. Otherwise the hub must not dispatch the update (403
// in the draft; v0.21's hub answers 401).
func (c *mercureClaims) CanPublish(topics []string, cache *mercureMatchCache) bool {
	if c == nil || len(c.Publish) == 0 || len(topics) == 0 {
		return false
	}
	for _, t := range topics {
		if !slices.ContainsFunc(c.Publish, func(s *mercureSelector) bool { return cache.Match(s, t) }) {
			return false
		}
	}
	return true
}

// CanReceivePrivate reports whether the token's holder may receive a
// private update with these topics: by the union rule of both profiles,
// one of the topics (canonical or alternate) must match one of its
// subscribe selectors. The subscriber's own routing selectors (topic=,
// match...) play no part here.
func (c *mercureClaims) CanReceivePrivate(topics []string, cache *mercureMatchCache) bool {
	return c != nil && cache.AnyMatchAny(c.Subscribe, topics)
}

// mercureMaySee reports whether a subscriber holding claims (nil for an
// anonymous one) may be sent an update with these topics: a public update
// always, a private one by CanReceivePrivate. Whether the subscriber asked
// for the update (its routing selectors) is a separate check.
func mercureMaySee(claims *mercureClaims, topics []string, private bool, cache *mercureMatchCache) bool {
	return !private || claims.CanReceivePrivate(topics, cache)
}

// SubscriptionPayload gives the payload to show in a subscription's
// events and API document, for the subscription made by the selector
// text matcher. v0.21: mercure.payload, for every subscription. Draft: the
// payload of the first subscribe detail one of whose topics matches
// matcher taken as a topic (`*` matches every subscription). ok is false
// when there is no payload.
func (c *mercureClaims) SubscriptionPayload(matcher string, cache *mercureMatchCache) (payload any, ok bool) {
	if c == nil {
		return nil, false
	}
	if c.Profile == mercureProfileV021 {
		return c.Payload, c.Payload != nil
	}
	for _, d := range c.details {
		if d.subscribe && cache.AnyMatchAny(d.selectors, []string{matcher}) {
			return d.payload, d.payload != nil
		}
	}
	return nil, false
}
