package push

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

func init() {
	caddy.RegisterModule(MercureHandler{})
}

// DefaultMercurePath is where a Mercure hub is found: the well-known URL
// every Mercure client uses.
const DefaultMercurePath = "/.well-known/mercure"

// DefaultMercureCookie is the cookie a Mercure subscriber's browser
// carries its token in, as Mercure's own hub names it.
const DefaultMercureCookie = "mercureAuthorization"

// DefaultMercureSelectors bounds the topic selectors of one Mercure
// subscription (Mercure's own hub allows as many).
const DefaultMercureSelectors = 100

// MercureHandler is a Mercure hub (push_mercure): it speaks the Mercure
// protocol, both the released v0.21 protocol deployed clients use and the
// current draft, at its path (/.well-known/mercure), over the same hub as
// push_sse, push_ws and push_publish, so an update published one way
// reaches subscribers of every kind. Requests for other paths go on to
// the next handler.
//
// Subscribers GET (or HEAD, or QUERY with a form body) the hub URL with
// match, match_<type> or (v0.21) topic selectors, and receive an SSE
// stream; publishers POST a form (topic, data, type, retry, id, private)
// with a JWT. Event ids the hub makes are shown as "#<id>"; a publisher's
// own id as given.
type MercureHandler struct {
	// The name of the hub. Mercure's `name`. Default: default.
	Hub string `json:"hub,omitempty"`

	// The hub's URL path. Default: /.well-known/mercure.
	Path string `json:"path,omitempty"`

	// How publishers' tokens are verified: a key and its algorithm, or a
	// JWK Set URL. Required.
	PublisherJWT MercureKey `json:"publisher_jwt,omitzero"`

	// How subscribers' tokens are verified. Required unless anonymous.
	SubscriberJWT MercureKey `json:"subscriber_jwt,omitzero"`

	// The audience every token must be issued for (the draft's resource
	// identifier, Mercure's `resource_identifier`). Default: not checked.
	JWTAudience string `json:"jwt_audience,omitempty"`

	// The issuer every token must come from. Default: not checked.
	JWTIssuer string `json:"jwt_issuer,omitempty"`

	// Whether subscribers without a token are served (public updates
	// only). Default: false (a token is required).
	Anonymous bool `json:"anonymous,omitempty"`

	// Whether subscriptions are tracked: each one's creation and end is
	// published as a private update of type "mercure", and the active
	// subscriptions API under the hub lists them, cluster-wide on Redis.
	// Default: false.
	Subscriptions bool `json:"subscriptions,omitempty"`

	// Whether the requests the handler passes on get the discovery
	// header, Link: <hub URL>; rel="mercure", on their responses.
	// Default: false.
	Discover bool `json:"discover,omitempty"`

	// Origins whose pages may subscribe from another origin (CORS), with
	// their cookies; "*" allows every origin, without cookies. Default: none.
	CORSOrigins []string `json:"cors_origins,omitempty"`

	// Origins whose pages may publish with a token from a cookie; "*"
	// allows every origin. Default: none (a cookie cannot publish).
	PublishOrigins []string `json:"publish_origins,omitempty"`

	// The cookie a browser's token may come in. Default: mercureAuthorization.
	CookieName string `json:"cookie_name,omitempty"`

	// How long a stream may be idle before a comment is sent. Default: 15s.
	Heartbeat caddy.Duration `json:"heartbeat,omitempty"`

	// How long a stream lasts (Mercure's write_timeout): it then ends, and
	// the client reconnects and resumes from its last event, losing
	// nothing. Default: 0 (no limit).
	WriteTimeout caddy.Duration `json:"write_timeout,omitempty"`

	// The reconnection delay sent to subscribers. Default: 3s.
	Retry caddy.Duration `json:"retry,omitempty"`

	// With write_timeout, how long a stream that reaches it stays away.
	// Default: 0 (it comes back within a second).
	PauseFor caddy.Duration `json:"pause_for,omitempty"`

	// The most open streams, and from one client address. Default: no limit.
	MaxConnections      int `json:"max_connections,omitempty"`
	MaxConnectionsPerIP int `json:"max_connections_per_ip,omitempty"`

	// The most topic selectors of one subscription. Default: 100.
	MaxSelectors int `json:"max_selectors,omitempty"`

	// The largest publish body. Mercure's max_request_body_size.
	// Default: 1MiB.
	MaxBody int64 `json:"max_body,omitempty"`

	// Asks the app, when a subscriber connects, whether it may subscribe,
	// with which of its selectors (their text, as topics), and who it is
	// (see AuthorizeHook). It runs after the token is verified and the
	// selectors are read. Default: none.
	Authorize *AuthorizeHook `json:"authorize,omitempty"`

	sse            SSEHandler
	publisherJWT   JWT
	subscriberJWT  *JWT // nil: anonymous only
	matches        *mercureMatchCache
	compiled       *selectorCache
	corsAll        bool
	publishAllowed func(origin string) bool
}

// MercureKey is how one role's tokens are verified: Key with Alg (an HMAC
// secret or a PEM public key; Alg defaults by the key, HS256 for a
// secret), or the URL of a JSON Web Key Set.
type MercureKey struct {
	Key     string `json:"key,omitempty"`
	Alg     string `json:"alg,omitempty"`
	JWKSURL string `json:"jwks_url,omitempty"`
}

func (k MercureKey) set() bool { return k.Key != "" || k.JWKSURL != "" }

// CaddyModule returns the Caddy module information.
func (MercureHandler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.push_mercure",
		New: func() caddy.Module { return new(MercureHandler) },
	}
}

// Provision checks the options and readies the hub's stream handler and
// token verifiers.
func (h *MercureHandler) Provision(ctx caddy.Context) error {
	if h.Path == "" {
		h.Path = DefaultMercurePath
	}
	if !strings.HasPrefix(h.Path, "/") || strings.HasSuffix(h.Path, "/") && h.Path != "/" {
		return fmt.Errorf("path %q must start with / and not end with one", h.Path)
	}
	if h.CookieName == "" {
		h.CookieName = DefaultMercureCookie
	}
	if h.MaxSelectors == 0 {
		h.MaxSelectors = DefaultMercureSelectors
	}
	if h.MaxBody == 0 {
		h.MaxBody = DefaultMaxBody
	}
	if h.MaxSelectors < 0 || h.MaxBody < 0 {
		return errors.New("max_selectors and max_body must not be negative")
	}
	if !h.PublisherJWT.set() {
		return errors.New("publisher_jwt (or publisher_jwks_url) is required: it verifies publishers' tokens")
	}
	if !h.SubscriberJWT.set() && !h.Anonymous {
		return errors.New("subscriber_jwt (or subscriber_jwks_url) is required unless anonymous is set")
	}
	for _, o := range h.CORSOrigins {
		if o == "*" {
			h.corsAll = true
		}
	}
	h.publishAllowed = func(origin string) bool {
		return origin != "" && slices.ContainsFunc(h.PublishOrigins, func(o string) bool { return o == "*" || o == origin })
	}
	h.publisherJWT = h.jwtFor(h.PublisherJWT)
	if err := h.publisherJWT.provisionJWT(ctx); err != nil {
		return fmt.Errorf("publisher_jwt: %v", err)
	}
	if h.SubscriberJWT.set() {
		j := h.jwtFor(h.SubscriberJWT)
		if err := j.provisionJWT(ctx); err != nil {
			return fmt.Errorf("subscriber_jwt: %v", err)
		}
		h.subscriberJWT = &j
	}
	h.matches = newMercureMatchCache(1 << 16)
	h.compiled = new(selectorCache)
	h.sse = SSEHandler{
		Endpoint: Endpoint{
			Hub:                 h.Hub,
			MaxConnections:      h.MaxConnections,
			MaxConnectionsPerIP: h.MaxConnectionsPerIP,
			MaxDuration:         h.WriteTimeout,
			PauseFor:            h.PauseFor,
			MaxTopics:           h.MaxSelectors,
			Authorize:           h.Authorize,
		},
		Retry:     h.Retry,
		Keepalive: h.Heartbeat,
		hashIDs:   true,
	}
	if err := h.sse.Provision(ctx); err != nil {
		return err
	}
	return h.sse.Validate()
}

// jwtFor is the verifier of one role, with the handler's audience,
// issuer and cookie.
func (h *MercureHandler) jwtFor(k MercureKey) JWT {
	return JWT{JWTKey: k.Key, JWTAlg: k.Alg, JWKSURL: k.JWKSURL, Audience: h.JWTAudience, Issuer: h.JWTIssuer, CookieName: h.CookieName}
}

// Cleanup ends the hub's streams when its config is unloaded.
func (h *MercureHandler) Cleanup() error { return h.sse.Cleanup() }

// ServeHTTP serves the hub URL and passes every other request on.
func (h *MercureHandler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	p := r.URL.Path
	if p == mercureMetadataPrefix+h.Path {
		return h.serveMetadata(w, r)
	}
	if p != h.Path && !strings.HasPrefix(p, h.Path+"/") {
		if h.Discover {
			w.Header().Add("Link", "<"+h.baseURL(r)+`>; rel="mercure"`)
		}
		return next.ServeHTTP(w, r)
	}
	preflight := h.cors(w, r)
	if h.Subscriptions && (p == h.Path+"/subscriptions" || strings.HasPrefix(p, h.Path+"/subscriptions/")) {
		if preflight {
			w.WriteHeader(http.StatusNoContent)
			return nil
		}
		return h.serveSubscriptions(w, r)
	}
	if p != h.Path {
		return writeError(w, r, http.StatusNotFound, fmt.Errorf("no such resource under the hub: %s", p))
	}
	switch r.Method {
	case http.MethodGet, http.MethodHead, "QUERY":
		return h.subscribe(w, r)
	case http.MethodPost:
		return h.publish(w, r)
	case http.MethodOptions:
		if preflight {
			w.WriteHeader(http.StatusNoContent)
			return nil
		}
	}
	w.Header().Set("Allow", "GET, HEAD, QUERY, POST, OPTIONS")
	return writeError(w, r, http.StatusMethodNotAllowed, fmt.Errorf("method %s not allowed: subscribe with GET, publish with POST", r.Method))
}

// cors answers the CORS protocol for an allowed Origin: its pages may
// read streams and publish answers, with their cookies (never for "*",
// which allows every origin without them). It reports whether r is a
// preflight from an allowed origin.
func (h *MercureHandler) cors(w http.ResponseWriter, r *http.Request) bool {
	origin := r.Header.Get("Origin")
	hdr := w.Header()
	hdr.Add("Vary", "Origin")
	if origin == "" {
		return false
	}
	switch {
	case slices.Contains(h.CORSOrigins, origin):
		hdr.Set("Access-Control-Allow-Origin", origin)
		hdr.Set("Access-Control-Allow-Credentials", "true")
	case h.corsAll:
		hdr.Set("Access-Control-Allow-Origin", "*")
	default:
		return false
	}
	if r.Method != http.MethodOptions || r.Header.Get("Access-Control-Request-Method") == "" {
		hdr.Set("Access-Control-Expose-Headers", "Last-Event-ID, Mercure-Last-Event-ID, Link, WWW-Authenticate")
		return false
	}
	hdr.Set("Access-Control-Allow-Methods", "GET, HEAD, QUERY, POST")
	hdr.Set("Access-Control-Allow-Headers", "Authorization, Cache-Control, Content-Type, Last-Event-ID")
	hdr.Set("Access-Control-Max-Age", "86400")
	return true
}

// mercureAuthError is a refusal for a token: 401 with a Bearer
// challenge (error="invalid_token", or none when no token was sent), or
// 403 with error="insufficient_scope".
func (h *MercureHandler) authError(w http.ResponseWriter, r *http.Request, status int, code string, err error) error {
	challenge := `Bearer resource_metadata="` + h.metadataURL(r) + `"`
	if code != "" {
		challenge += `, error="` + code + `"`
	}
	w.Header().Set("WWW-Authenticate", challenge)
	return writeError(w, r, status, err)
}

// mercureToken finds a request's token as Mercure's hub does: the
// Authorization header, else (v0.21) the authorization query parameter,
// else the cookie. A header wins over a cookie, which browsers send by
// themselves.
func (h *MercureHandler) token(r *http.Request, query func(string) string) (token string, fromCookie bool) {
	if scheme, t, ok := strings.Cut(r.Header.Get("Authorization"), " "); ok && strings.EqualFold(scheme, "Bearer") {
		return strings.TrimSpace(t), false
	}
	if t := query("authorization"); t != "" {
		return t, false
	}
	if c, err := r.Cookie(h.CookieName); err == nil && c.Value != "" {
		return c.Value, true
	}
	return "", false
}

// verify checks a token with j and reads its Mercure claims, either
// profile: a draft token (authorization_details) must also be typed
// at+jwt and carry exp, as the draft requires; a v0.21 token need not.
func (h *MercureHandler) verify(j *JWT, token, base string) (*Grant, error) {
	t, claims, err := j.verify(token)
	if err != nil {
		return nil, err
	}
	mc, err := parseMercureClaims(claims, mercureClaimsOptions{BaseURL: base, URITemplate: true})
	if err != nil {
		return nil, fmt.Errorf("invalid token: %v", err)
	}
	g := &Grant{Claims: claims, mercure: mc}
	exp, _ := claims.GetExpirationTime()
	if exp != nil {
		g.Expires = exp.Time
	}
	if mc.Profile == mercureProfileDraft {
		if !mercureTokenTypeOK(t.Header["typ"]) {
			return nil, errors.New(`invalid token: a token with authorization_details must be of type "at+jwt"`)
		}
		if exp == nil {
			return nil, errors.New("invalid token: a token with authorization_details must have an exp claim")
		}
	}
	return g, nil
}

// baseURL is the hub's URL as this request reaches it, against which
// relative URL patterns and topics resolve.
func (h *MercureHandler) baseURL(r *http.Request) string {
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	return scheme + "://" + r.Host + h.Path
}

// hashID is how the Mercure protocol shows an event id: the hub's own as a
// fragment, "#<id>", a publisher's as it is (it may not start with "#").
func hashID(id string) string {
	if _, _, ok := ParseID(id); ok {
		return "#" + id
	}
	return id
}

// Interface guards
var (
	_ caddy.Provisioner           = (*MercureHandler)(nil)
	_ caddy.CleanerUpper          = (*MercureHandler)(nil)
	_ caddyhttp.MiddlewareHandler = (*MercureHandler)(nil)
)

// mercureMetadataPrefix is where RFC 9728 puts a protected resource's
// metadata: this, then the resource's path.
const mercureMetadataPrefix = "/.well-known/oauth-protected-resource"

// metadataURL is where the hub's protected resource metadata is.
func (h *MercureHandler) metadataURL(r *http.Request) string {
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	return scheme + "://" + r.Host + mercureMetadataPrefix + h.Path
}

// serveMetadata answers the hub's OAuth 2.0 protected resource metadata
// (RFC 9728), as the draft describes it: the resource identifier (the
// audience tokens must name, jwt_audience, or else the hub's URL), the
// authorization detail type, how tokens are presented, the cookie, the
// matcher types and whether subscriptions are tracked.
func (h *MercureHandler) serveMetadata(w http.ResponseWriter, r *http.Request) error {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		return writeError(w, r, http.StatusMethodNotAllowed, errors.New("the metadata is read with GET"))
	}
	md := map[string]any{
		"resource":                              cmp.Or(caddy.NewReplacer().ReplaceKnown(h.JWTAudience, ""), h.baseURL(r)),
		"authorization_details_types_supported": []string{mercureDetailType},
		"bearer_methods_supported":              []string{"header"},
		"mercure_cookie":                        h.CookieName,
		"mercure_matcher_types_supported":       mercureTypes,
	}
	if h.Subscriptions {
		md["mercure_subscriptions"] = true
	}
	data, _ := json.Marshal(md)
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "max-age=3600")
	w.WriteHeader(http.StatusOK)
	if r.Method == http.MethodGet {
		_, _ = w.Write(data)
	}
	return nil
}
