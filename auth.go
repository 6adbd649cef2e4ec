package push

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/golang-jwt/jwt/v5"
)

// DefaultCookieName is the cookie a browser may carry its JWT in.
const DefaultCookieName = "pushAuthorization"

// JWT holds the JSON Web Token options every push handler has.
type JWT struct {
	// The key that verifies tokens: an HMAC secret, or a PEM public key (RSA,
	// ECDSA or Ed25519). Placeholders are expanded once at load, so
	// {env.PUSH_JWT_KEY} reads it from the environment. Default: none
	// (no JWT authentication).
	JWTKey string `json:"jwt_key,omitempty"`

	// The one signing algorithm accepted; tokens signed any
	// other way (including "none") are refused. Default: HS256 for a
	// secret, RS256 for an RSA key, ES256/ES384/ES512 by the curve of an
	// ECDSA key, EdDSA for an Ed25519 key.
	JWTAlg string `json:"jwt_alg,omitempty"`

	// The URL of a JSON Web Key Set (an OpenID Connect provider's
	// jwks_uri: Keycloak, Auth0, Zitadel...) whose keys verify tokens,
	// instead of jwt_key. Tokens name their key by "kid"; the set is
	// fetched at the first token, refreshed every hour, and at once (at
	// most every 10 s) when a token names a key it does not hold, so a
	// rotated key works without a reload. Only asymmetric algorithms are
	// accepted (jwt_alg narrows them). Default: none.
	JWKSURL string `json:"jwks_url,omitempty"`

	// The audience a token must be issued for: its "aud" claim must hold
	// this value. Default: not checked.
	Audience string `json:"jwt_audience,omitempty"`

	// The issuer a token must come from: its "iss" claim must equal this
	// value. Default: not checked.
	Issuer string `json:"jwt_issuer,omitempty"`

	// The cookie a token may come in, for browsers that
	// cannot set headers; a token from a cookie needs an allowed Origin.
	// Default: pushAuthorization.
	CookieName string `json:"cookie_name,omitempty"`

	key     any
	jwks    *jwks
	methods []string
	options []jwt.ParserOption
}

// Grant is what a verified token allows.
type Grant struct {
	// Publish and Subscribe are topic patterns (see MatchTopic).
	Publish   []string
	Subscribe []string
	// Claims are the token's claims, for placeholders.
	Claims map[string]any
	// FromCookie is set when the token came from the cookie, which a
	// browser sends on cross-site requests too.
	FromCookie bool
	// Expires is the token's exp; zero when it has none. A stream it
	// admitted ends then.
	Expires time.Time

	// mercure, set by push_mercure, are the token's Mercure claims: they
	// decide its private events instead of Subscribe
	mercure *mercureClaims
}

// expired reports whether the token's exp has passed. Verification
// allows a few seconds of clock skew, which suits a publish; a subscriber
// is refused from exp on, or a stream that its expiry ends would be let
// back in, and ended again, for those seconds.
func (g *Grant) expired() bool {
	return !g.Expires.IsZero() && !time.Now().Before(g.Expires)
}

// errTokenExpired refuses a subscriber whose token has expired: it must
// come back with a fresh one.
var errTokenExpired = errors.New("token expired: send a fresh one")

// topicClaims is the claim shape of caddy-push ("push") and Mercure
// ("mercure").
type topicClaims struct {
	Publish   []string `json:"publish"`
	Subscribe []string `json:"subscribe"`
}

// enabled reports whether JWT authentication is configured.
func (j *JWT) enabled() bool { return j.JWTKey != "" || j.JWKSURL != "" }

// provisionJWT reads the key and pins the algorithm, or readies the key
// set (fetched at the first token, refreshed until ctx ends).
func (j *JWT) provisionJWT(ctx caddy.Context) error {
	if j.CookieName == "" {
		j.CookieName = DefaultCookieName
	}
	if !j.enabled() {
		if j.Audience != "" || j.Issuer != "" {
			return errors.New("jwt_audience and jwt_issuer need jwt_key or jwks_url")
		}
		return nil
	}
	repl := caddy.NewReplacer()
	j.options = []jwt.ParserOption{jwt.WithLeeway(5 * time.Second)}
	if aud := repl.ReplaceKnown(j.Audience, ""); aud != "" {
		j.options = append(j.options, jwt.WithAudience(aud))
	}
	if iss := repl.ReplaceKnown(j.Issuer, ""); iss != "" {
		j.options = append(j.options, jwt.WithIssuer(iss))
	}
	if j.JWKSURL != "" {
		if j.JWTKey != "" {
			return errors.New("give jwt_key or jwks_url, not both")
		}
		j.methods = asymmetricAlgs
		if j.JWTAlg != "" {
			if !slices.Contains(asymmetricAlgs, j.JWTAlg) {
				return fmt.Errorf("jwt_alg %q cannot be used with jwks_url: want one of %s", j.JWTAlg, strings.Join(asymmetricAlgs, ", "))
			}
			j.methods = []string{j.JWTAlg}
		}
		set, err := newJWKS(ctx, repl.ReplaceKnown(j.JWKSURL, ""))
		j.jwks = set
		return err
	}
	raw := repl.ReplaceKnown(j.JWTKey, "")
	if raw == "" {
		return fmt.Errorf("jwt_key %q is empty once its placeholders are expanded", j.JWTKey)
	}
	key, alg, err := parseKey(raw)
	if err != nil {
		return fmt.Errorf("jwt_key: %v", err)
	}
	if j.JWTAlg == "" {
		j.JWTAlg = alg
	}
	if !algFits(j.JWTAlg, key) {
		return fmt.Errorf("jwt_alg %q does not fit a key of type %T", j.JWTAlg, key)
	}
	j.key, j.methods = key, []string{j.JWTAlg}
	return nil
}

// asymmetricAlgs are the algorithms a key set's keys may sign with: never
// an HMAC, whose "key" would be public.
var asymmetricAlgs = []string{"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}

// keyFor finds the key that verifies a token.
func (j *JWT) keyFor(t *jwt.Token) (any, error) {
	if j.jwks != nil {
		return j.jwks.key(t)
	}
	return j.key, nil
}

// parseKey reads a PEM public key, or takes the text as an HMAC secret,
// and says which algorithm that key signs with by default.
func parseKey(raw string) (any, string, error) {
	block, _ := pem.Decode([]byte(strings.TrimSpace(raw)))
	if block == nil {
		if strings.Contains(raw, "-----BEGIN") {
			return nil, "", errors.New("malformed PEM")
		}
		if len(raw) < 32 {
			return nil, "", errors.New("an HMAC secret must be at least 32 bytes")
		}
		return []byte(raw), "HS256", nil
	}
	pub, err := x509.ParsePKIXPublicKey(block.Bytes)
	if err != nil {
		if cert, cerr := x509.ParseCertificate(block.Bytes); cerr == nil {
			pub = cert.PublicKey
		} else {
			return nil, "", fmt.Errorf("not a PEM public key or certificate: %v", err)
		}
	}
	switch k := pub.(type) {
	case *rsa.PublicKey:
		return k, "RS256", nil
	case *ecdsa.PublicKey:
		switch k.Curve {
		case elliptic.P384():
			return k, "ES384", nil
		case elliptic.P521():
			return k, "ES512", nil
		}
		return k, "ES256", nil
	case ed25519.PublicKey:
		return k, "EdDSA", nil
	}
	return nil, "", fmt.Errorf("unsupported public key type %T", pub)
}

func algFits(alg string, key any) bool {
	switch key.(type) {
	case []byte:
		return slices.Contains([]string{"HS256", "HS384", "HS512"}, alg)
	case *rsa.PublicKey:
		return slices.Contains([]string{"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}, alg)
	case *ecdsa.PublicKey:
		return slices.Contains([]string{"ES256", "ES384", "ES512"}, alg)
	case ed25519.PublicKey:
		return alg == "EdDSA"
	}
	return false
}

// errNoToken means the request carries no token at all.
var errNoToken = errors.New("no token")

// authenticate finds and verifies the request's token: the Authorization
// header, then the cookie, then the access_token query parameter (for
// EventSource and WebSocket, which cannot set headers).
func (j *JWT) authenticate(r *http.Request) (*Grant, error) {
	token, fromCookie := j.findToken(r)
	if token == "" {
		return nil, errNoToken
	}
	_, claims, err := j.verify(token)
	if err != nil {
		return nil, err
	}
	g := &Grant{Claims: claims, FromCookie: fromCookie}
	if exp, err := claims.GetExpirationTime(); err == nil && exp != nil {
		g.Expires = exp.Time
	}
	for _, name := range []string{"push", "mercure"} {
		tc, err := claimTopics(claims[name])
		if err != nil {
			return nil, fmt.Errorf("invalid token: claim %q: %v", name, err)
		}
		g.Publish = append(g.Publish, tc.Publish...)
		g.Subscribe = append(g.Subscribe, tc.Subscribe...)
	}
	return g, nil
}

// verify checks a token's signature, algorithm, time claims and, when
// configured, audience and issuer.
func (j *JWT) verify(token string) (*jwt.Token, jwt.MapClaims, error) {
	claims := jwt.MapClaims{}
	t, err := jwt.ParseWithClaims(token, claims, j.keyFor, append(j.options, jwt.WithValidMethods(j.methods))...)
	if err != nil {
		return nil, nil, fmt.Errorf("invalid token: %v", err)
	}
	return t, claims, nil
}

func (j *JWT) findToken(r *http.Request) (token string, fromCookie bool) {
	if scheme, t, ok := strings.Cut(r.Header.Get("Authorization"), " "); ok && strings.EqualFold(scheme, "Bearer") {
		return strings.TrimSpace(t), false
	}
	if c, err := r.Cookie(j.CookieName); err == nil && c.Value != "" {
		return c.Value, true
	}
	return r.URL.Query().Get("access_token"), false
}

// sameOrigin reports whether the request's Origin is the site itself: a
// browser sends a cookie on cross-site requests too, but sets Origin.
func sameOrigin(r *http.Request) bool {
	o, err := url.Parse(r.Header.Get("Origin"))
	return err == nil && o.Host != "" && strings.EqualFold(o.Host, r.Host)
}

func claimTopics(v any) (topicClaims, error) {
	var tc topicClaims
	if v == nil {
		return tc, nil
	}
	b, err := json.Marshal(v)
	if err == nil {
		err = json.Unmarshal(b, &tc)
	}
	return tc, err
}

// CanPublish reports whether the grant allows publishing to topic.
func (g *Grant) CanPublish(topic string) bool { return matchAny(g.Publish, topic) }

// CanSubscribe reports whether the grant allows subscribing to topic.
func (g *Grant) CanSubscribe(topic string) bool { return matchAny(g.Subscribe, topic) }

func matchAny(patterns []string, topic string) bool {
	return slices.ContainsFunc(patterns, func(p string) bool { return MatchTopic(p, topic) })
}

// MatchTopic is the one pattern rule of caddy-push. Topics are split into
// segments on "/". A pattern matches a topic segment by segment: a
// segment "*" matches any one segment, and a "*" as the last segment
// matches one or more remaining segments. So "*" matches every topic,
// "chat/*" matches "chat/a" and "chat/a/b" but not "chat", and
// "user/*/inbox" matches "user/alice/inbox". Anything else must be equal.
func MatchTopic(pattern, topic string) bool {
	for {
		p, prest, pmore := strings.Cut(pattern, "/")
		s, srest, smore := strings.Cut(topic, "/")
		if p == "*" {
			if s == "" {
				return false
			}
			if !pmore {
				return true
			}
		} else if p != s {
			return false
		}
		if !pmore || !smore {
			return pmore == smore
		}
		pattern, topic = prest, srest
	}
}
