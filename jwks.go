package push

import (
	"context"
	"fmt"
	"net/url"
	"sync"
	"time"

	"github.com/MicahParks/keyfunc/v3"
	"github.com/caddyserver/caddy/v2"
	"github.com/golang-jwt/jwt/v5"
	"go.uber.org/zap"
	"golang.org/x/time/rate"
)

// jwks is a JSON Web Key Set fetched from a URL, through keyfunc (which
// caches it, refreshes it every hour, and at once when a token names a
// key it does not hold). The set is fetched at the first token rather
// than at Provision, which caddy validate runs and which must not wait on
// the network; its refreshing ends with the config.
type jwks struct {
	url    string
	ctx    context.Context
	logger *zap.Logger

	once sync.Once
	kf   keyfunc.Keyfunc
	err  error
}

// jwksTimeout bounds a fetch of the key set: a token waits on at most
// one.
const jwksTimeout = 5 * time.Second

func newJWKS(ctx caddy.Context, raw string) (*jwks, error) {
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return nil, fmt.Errorf("jwks_url %q: want an http(s) URL", raw)
	}
	return &jwks{url: raw, ctx: ctx, logger: ctx.Logger()}, nil
}

// key finds the key a token names.
func (s *jwks) key(t *jwt.Token) (any, error) {
	s.once.Do(func() {
		s.kf, s.err = keyfunc.NewDefaultOverrideCtx(s.ctx, []string{s.url}, keyfunc.Override{
			HTTPTimeout: jwksTimeout,
			// a token naming a key the set lacks fetches it again, at most
			// every 10 s (tokens with made-up kids cannot flood the
			// provider), and waits at most a second for its turn rather
			// than hold its request
			RefreshUnknownKID: rate.NewLimiter(rate.Every(10*time.Second), 1),
			RateLimitWaitMax:  time.Second,
			RefreshErrorHandlerFunc: func(u string) func(context.Context, error) {
				return func(_ context.Context, err error) {
					s.logger.Warn("fetching the JWT key set failed", zap.String("url", u), zap.Error(err))
				}
			},
		})
	})
	if s.err != nil {
		return nil, fmt.Errorf("key set %s: %v", s.url, s.err)
	}
	return s.kf.Keyfunc(t)
}
