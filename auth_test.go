package push

import (
	"github.com/caddyserver/caddy/v2"

	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

const testSecret = "a-test-secret-that-is-32-bytes-long!"

func TestMatchTopic(t *testing.T) {
	for _, tc := range []struct {
		pattern, topic string
		want           bool
	}{
		{"news", "news", true},
		{"news", "news/x", false},
		{"news/x", "news", false},
		{"*", "news", true},
		{"*", "a/b/c", true},
		{"chat/*", "chat/a", true},
		{"chat/*", "chat/a/b", true},
		{"chat/*", "chat", false},
		{"chat/*", "chat/", false},
		{"chat/*", "chatroom/a", false},
		{"user/*/inbox", "user/alice/inbox", true},
		{"user/*/inbox", "user/alice/x/inbox", false},
		{"user/*/inbox", "user//inbox", false},
		{"a*", "abc", false},
		{"https://example.com/books/*", "https://example.com/books/1", true},
	} {
		if got := MatchTopic(tc.pattern, tc.topic); got != tc.want {
			t.Errorf("MatchTopic(%q, %q) = %v", tc.pattern, tc.topic, got)
		}
	}
}

func pemOf(t *testing.T, pub any) string {
	t.Helper()
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
}

func TestJWTKeysAndPinnedAlgorithms(t *testing.T) {
	rsaKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	ecKey, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	edPub, edPriv, _ := ed25519.GenerateKey(rand.Reader)
	claims := jwt.MapClaims{"push": map[string]any{"subscribe": []string{"news"}}}
	for _, tc := range []struct {
		name, key, alg string
		method         jwt.SigningMethod
		signKey        any
		wantAlg        string
	}{
		{"hmac", testSecret, "", jwt.SigningMethodHS256, []byte(testSecret), "HS256"},
		{"hmac 512", testSecret, "HS512", jwt.SigningMethodHS512, []byte(testSecret), "HS512"},
		{"rsa", pemOf(t, &rsaKey.PublicKey), "", jwt.SigningMethodRS256, rsaKey, "RS256"},
		{"rsa pss", pemOf(t, &rsaKey.PublicKey), "PS256", jwt.SigningMethodPS256, rsaKey, "PS256"},
		{"ecdsa p384", pemOf(t, &ecKey.PublicKey), "", jwt.SigningMethodES384, ecKey, "ES384"},
		{"ed25519", pemOf(t, edPub), "", jwt.SigningMethodEdDSA, edPriv, "EdDSA"},
	} {
		j := JWT{JWTKey: tc.key, JWTAlg: tc.alg}
		if err := j.provisionJWT(caddy.Context{}); err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if j.JWTAlg != tc.wantAlg {
			t.Errorf("%s: pinned %s, want %s", tc.name, j.JWTAlg, tc.wantAlg)
		}
		token, err := jwt.NewWithClaims(tc.method, claims).SignedString(tc.signKey)
		if err != nil {
			t.Fatal(err)
		}
		g, err := j.authenticate(bearer(token))
		if err != nil || !g.CanSubscribe("news") || g.CanSubscribe("other") {
			t.Errorf("%s: grant %+v, err %v", tc.name, g, err)
		}
	}
}

func TestJWTProvisionErrors(t *testing.T) {
	rsaKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	for _, tc := range []struct{ key, alg, want string }{
		{"short", "", "at least 32 bytes"},
		{"-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----", "", "PEM"},
		{testSecret, "RS256", "does not fit"},
		{pemOf(t, &rsaKey.PublicKey), "HS256", "does not fit"},
		{testSecret, "none", "does not fit"},
		{"{env.PUSH_TEST_UNSET_KEY}", "", "empty"},
	} {
		j := JWT{JWTKey: tc.key, JWTAlg: tc.alg}
		if err := j.provisionJWT(caddy.Context{}); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("key %.20q alg %q: %v, want %q", tc.key, tc.alg, err, tc.want)
		}
	}
}

func bearer(token string) *http.Request {
	r, _ := http.NewRequest("GET", "http://x/events", nil)
	r.Header.Set("Authorization", "Bearer "+token)
	return r
}

func hs256(t testing.TB, claims jwt.MapClaims) string {
	t.Helper()
	s, err := jwt.NewWithClaims(jwt.SigningMethodHS256, claims).SignedString([]byte(testSecret))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestJWTRefusesBadTokens(t *testing.T) {
	rsaKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	rsaPEM := pemOf(t, &rsaKey.PublicKey)
	hmacJ := JWT{JWTKey: testSecret}
	rsaJ := JWT{JWTKey: rsaPEM}
	for _, j := range []*JWT{&hmacJ, &rsaJ} {
		if err := j.provisionJWT(caddy.Context{}); err != nil {
			t.Fatal(err)
		}
	}
	now := time.Now()
	none, _ := jwt.NewWithClaims(jwt.SigningMethodNone, jwt.MapClaims{}).SignedString(jwt.UnsafeAllowNoneSignatureType)
	hs512, _ := jwt.NewWithClaims(jwt.SigningMethodHS512, jwt.MapClaims{}).SignedString([]byte(testSecret))
	// the classic confusion: an HMAC token keyed with the RSA public key
	confused, _ := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{}).SignedString([]byte(rsaPEM))
	forged, _ := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{}).SignedString([]byte("another-secret-of-at-least-32-bytes"))
	for _, tc := range []struct {
		name  string
		j     *JWT
		token string
	}{
		{"none alg", &hmacJ, none},
		{"other hmac alg", &hmacJ, hs512},
		{"forged", &hmacJ, forged},
		{"alg confusion", &rsaJ, confused},
		{"expired", &hmacJ, hs256(t, jwt.MapClaims{"exp": now.Add(-time.Minute).Unix()})},
		{"not yet valid", &hmacJ, hs256(t, jwt.MapClaims{"nbf": now.Add(time.Minute).Unix()})},
		{"garbage", &hmacJ, "a.b.c"},
		{"push claim of wrong shape", &hmacJ, hs256(t, jwt.MapClaims{"push": map[string]any{"publish": "news"}})},
	} {
		if g, err := tc.j.authenticate(bearer(tc.token)); err == nil {
			t.Errorf("%s: accepted, grant %+v", tc.name, g)
		}
	}
}

func TestJWTClaimsAndSources(t *testing.T) {
	j := JWT{JWTKey: testSecret}
	if err := j.provisionJWT(caddy.Context{}); err != nil {
		t.Fatal(err)
	}
	token := hs256(t, jwt.MapClaims{
		"sub":     "alice",
		"exp":     time.Now().Add(time.Hour).Unix(),
		"push":    map[string]any{"publish": []string{"chat/*"}},
		"mercure": map[string]any{"subscribe": []string{"user/alice"}},
	})
	cookie, _ := http.NewRequest("GET", "http://x/events", nil)
	cookie.AddCookie(&http.Cookie{Name: DefaultCookieName, Value: token})
	query, _ := http.NewRequest("GET", "http://x/events?access_token="+token, nil)
	for name, r := range map[string]*http.Request{"header": bearer(token), "cookie": cookie, "query": query} {
		g, err := j.authenticate(r)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if !g.CanPublish("chat/1") || g.CanPublish("user/alice") || !g.CanSubscribe("user/alice") ||
			g.Claims["sub"] != "alice" || g.FromCookie != (name == "cookie") {
			t.Errorf("%s: grant %+v", name, g)
		}
	}
	none, _ := http.NewRequest("GET", "http://x/events", nil)
	if _, err := j.authenticate(none); err != errNoToken {
		t.Fatalf("no token: %v", err)
	}
}
