package push

import (
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"math/big"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/golang-jwt/jwt/v5"
)

// identityProvider is an OpenID provider's key endpoint: a real HTTP
// server whose JSON Web Key Set can rotate.
type identityProvider struct {
	*httptest.Server
	mu      sync.Mutex
	keys    map[string]*rsa.PrivateKey // by kid, the ones published
	fetches int
}

func startIdentityProvider(t *testing.T) *identityProvider {
	p := &identityProvider{keys: map[string]*rsa.PrivateKey{}}
	p.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p.mu.Lock()
		defer p.mu.Unlock()
		p.fetches++
		set := struct {
			Keys []map[string]string `json:"keys"`
		}{Keys: []map[string]string{}}
		for kid, k := range p.keys {
			set.Keys = append(set.Keys, map[string]string{
				"kty": "RSA", "use": "sig", "alg": "RS256", "kid": kid,
				"n": base64.RawURLEncoding.EncodeToString(k.N.Bytes()),
				"e": base64.RawURLEncoding.EncodeToString(big.NewInt(int64(k.E)).Bytes()),
			})
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(set)
	}))
	t.Cleanup(p.Close)
	return p
}

// rotate publishes only a new key, under kid, and returns it.
func (p *identityProvider) rotate(t *testing.T, kid string) *rsa.PrivateKey {
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	p.mu.Lock()
	p.keys = map[string]*rsa.PrivateKey{kid: k}
	p.mu.Unlock()
	return k
}

func rs256(t *testing.T, key *rsa.PrivateKey, kid string, claims jwt.MapClaims) string {
	t.Helper()
	tok := jwt.NewWithClaims(jwt.SigningMethodRS256, claims)
	tok.Header["kid"] = kid
	s, err := tok.SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestJWKS: a handler verifies tokens with the keys of a JSON Web Key Set,
// checks audience and issuer when configured, refuses an HMAC token
// (whose "secret" would be a public key), and follows a key rotation
// without a reload.
func TestJWKS(t *testing.T) {
	idp := startIdentityProvider(t)
	k1 := idp.rotate(t, "k1")
	c := startCaddy(t, `
http://127.0.0.1:PORT {
	push_sse /events {
		private user/*
		jwks_url `+idp.URL+`/jwks
		jwt_audience push
		jwt_issuer https://idp.example
	}
	push_ws /ws {
		private user/*
		jwks_url `+idp.URL+`/jwks
		jwt_audience push
	}
	push_publish /publish {
		jwks_url `+idp.URL+`/jwks
		jwt_issuer https://idp.example
	}
}`)
	claims := func(aud, iss string) jwt.MapClaims {
		return jwt.MapClaims{"sub": "alice", "aud": aud, "iss": iss, "exp": time.Now().Add(time.Hour).Unix(),
			"push": map[string]any{"subscribe": []string{"user/alice"}}}
	}
	good := claims("push", "https://idp.example")
	status := func(token string) int {
		s := subscribe(t, c.URL+"/events?topic=user/alice", header("Authorization", "Bearer "+token))
		defer s.Close()
		return s.Resp.StatusCode
	}
	for _, tc := range []struct {
		name   string
		token  string
		status int
	}{
		{"key of the set", rs256(t, k1, "k1", good), 200},
		{"other audience", rs256(t, k1, "k1", claims("other", "https://idp.example")), 401},
		{"other issuer", rs256(t, k1, "k1", claims("push", "https://evil.example")), 401},
		{"hmac with the public key as secret", hs256(t, good), 401},
	} {
		if got := status(tc.token); got != tc.status {
			t.Errorf("%s: %d, want %d", tc.name, got, tc.status)
		}
	}
	// push_ws and push_publish verify with the set too, and check what
	// they are told to
	if ws, err := dialWS(t, c.URL+"/ws?topic=user/alice", header("Authorization", "Bearer "+rs256(t, k1, "k1", good))); err != nil {
		t.Errorf("websocket with a key of the set: %v", err)
	} else {
		ws.conn.Close()
	}
	if ws, _ := dialWS(t, c.URL+"/ws?topic=user/alice", header("Authorization", "Bearer "+rs256(t, k1, "k1", claims("other", "https://idp.example")))); ws.Resp == nil || ws.Resp.StatusCode != 401 {
		t.Errorf("websocket with another audience: %v, want 401", ws.Resp)
	}
	publish := func(cl jwt.MapClaims) int {
		cl["push"] = map[string]any{"publish": []string{"news"}}
		req, _ := http.NewRequest("POST", c.URL+"/publish", strings.NewReader("topic=news&data=x"))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.Header.Set("Authorization", "Bearer "+rs256(t, k1, "k1", cl))
		resp, err := testClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if got := publish(claims("push", "https://idp.example")); got != 200 {
		t.Errorf("publish with a key of the set: %d, want 200", got)
	}
	if got := publish(claims("push", "https://evil.example")); got != 401 {
		t.Errorf("publish from another issuer: %d, want 401", got)
	}

	// the provider rotates: a token of the new key is taken at once (the
	// set is fetched again for its unknown kid), the old key is gone
	k2 := idp.rotate(t, "k2")
	if got := status(rs256(t, k2, "k2", good)); got != 200 {
		t.Fatalf("token of the rotated key: %d, want 200", got)
	}
	if got := status(rs256(t, k1, "k1", good)); got != 401 {
		t.Fatalf("token of the retired key: %d, want 401", got)
	}
	// a made-up kid, with the refresh just spent: refused, and its request
	// waits at most a second for a refresh, not the minute keyfunc would
	start := time.Now()
	if got := status(rs256(t, idp.keysFor(t), "k9", good)); got != 401 {
		t.Fatalf("token of an unknown key: %d, want 401", got)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("a token of an unknown key was held %v", took)
	}
}

// keysFor is a key the provider never published.
func (p *identityProvider) keysFor(t *testing.T) *rsa.PrivateKey {
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestJWKSConfig(t *testing.T) {
	for _, tc := range []struct {
		j    JWT
		want string
	}{
		{JWT{JWKSURL: "ftp://x/keys"}, "want an http(s) URL"},
		{JWT{JWKSURL: "https://x/keys", JWTKey: testSecret}, "not both"},
		{JWT{JWKSURL: "https://x/keys", JWTAlg: "HS256"}, "cannot be used with jwks_url"},
		{JWT{Audience: "push"}, "need jwt_key or jwks_url"},
	} {
		if err := tc.j.provisionJWT(caddy.Context{}); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: %v, want %q", tc.j, err, tc.want)
		}
	}
}
