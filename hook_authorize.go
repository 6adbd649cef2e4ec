package push

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"go.uber.org/zap"
)

// DefaultAuthorizeCache is how long the app's answer is reused. A
// reconnect storm (a reload, a deploy, a network blip) brings each client
// back within a few seconds, so 10s turns it into one call per client;
// and a session the app ends still gets in for 10s at most, less than
// the connections it already has stay open (they are asked at connect
// only).
const DefaultAuthorizeCache = 10 * time.Second

// transportMercure is how the app is told a push_mercure subscriber
// asks.
const transportMercure = "mercure"

// Bounds of what the app's answer may hold: the user and meta live as long
// as the connection, in presence and (on Redis) in its roster.
const (
	maxAuthorizeUser  = 256
	maxAuthorizeMeta  = 4 << 10
	maxAuthorizeCache = 10_000
)

// AuthorizeHook asks the app, when a client connects and before anything
// is sent to it, whether it may subscribe: a POST of a small JSON body
// (transport, topics, remote_addr, path, host) with the client's
// credentials headers. The app answers 200 with a JSON object, which
// admits the client, maybe to fewer topics ("topics"), naming its user
// ("user") and attaching metadata ("meta"); or a 4xx, which refuses it
// with that status and the app's reason. No answer in time, or another
// status, refuses it with 503 and Retry-After (an EventSource: a pause).
type AuthorizeHook struct {
	Hook

	// How long an answer (an admission or a 4xx refusal) is reused for
	// requests with the same credentials headers, topics, transport, host
	// and path, so that clients coming back all at once do not all call
	// the app; 0 asks the app every time. Failures are never reused.
	// Default: 10s.
	Cache *caddy.Duration `json:"cache,omitempty"`

	// The client's request headers passed on to the app: they are what
	// tells one client from another, in the app and in the cache.
	// Default: Cookie, Authorization.
	Headers []string `json:"headers,omitempty"`

	ttl    time.Duration
	cache  *authorizeCache
	pooled string // the cache's key in authorizeCaches, once taken
	logger *zap.Logger
}

// authorizeCaches holds the hooks' caches, keyed by the app's URLs and the
// headers passed on, so that answers outlive a reload: the reconnect
// storm a reload brings then finds them, as the new config provisions
// before the old one cleans up.
var authorizeCaches = caddy.NewUsagePool()

// authorizeRequest is the body the app gets.
type authorizeRequest struct {
	Transport  string   `json:"transport"`
	Topics     []string `json:"topics"`
	RemoteAddr string   `json:"remote_addr"`
	Path       string   `json:"path"`
	Host       string   `json:"host"`
}

// authorizeAnswer is the body of the app's 200.
type authorizeAnswer struct {
	Topics []string        `json:"topics"`
	User   string          `json:"user"`
	Meta   json.RawMessage `json:"meta"`
}

// authorization is the app's word on one request: admitted (Status 0) to
// Topics, as User, with Meta; or refused with Status and Reason.
type authorization struct {
	Status int
	Reason string
	// Header holds the refusal's WWW-Authenticate and Retry-After, as
	// the app sent them
	Header http.Header
	Topics []string
	User   string
	Meta   json.RawMessage
}

// provision checks the options and applies the defaults.
func (h *AuthorizeHook) provision(ctx caddy.Context, logger *zap.Logger) error {
	if err := h.Hook.provision(ctx, "authorize"); err != nil {
		return err
	}
	h.ttl = DefaultAuthorizeCache
	if h.Cache != nil {
		h.ttl = time.Duration(*h.Cache)
	}
	if h.ttl < 0 {
		return errors.New("authorize: cache must not be negative")
	}
	if len(h.Headers) == 0 {
		h.Headers = []string{"Cookie", "Authorization"}
	}
	for i, name := range h.Headers {
		if name == "" || strings.ContainsFunc(name, func(r rune) bool { return r <= ' ' || r >= 0x7f || r == ':' }) {
			return fmt.Errorf("authorize: %q is not a header name", name)
		}
		h.Headers[i] = http.CanonicalHeaderKey(name)
	}
	h.logger = logger
	if h.ttl == 0 {
		return nil
	}
	name := strings.Join(h.URLs, " ") + "\x00" + strings.Join(h.Headers, " ")
	c, _, err := authorizeCaches.LoadOrNew(name, func() (caddy.Destructor, error) { return new(authorizeCache), nil })
	if err != nil {
		return err
	}
	h.cache, h.pooled = c.(*authorizeCache), name
	return nil
}

// cleanup lets go of the cache.
func (h *AuthorizeHook) cleanup() {
	if h.pooled != "" {
		_, _ = authorizeCaches.Delete(h.pooled)
		h.pooled = ""
	}
}

// ask is the app's word on r subscribing to topics (sorted) over
// transport: from the cache, or from the app. The error wraps
// errHookUnavailable when the app did not answer in time; otherwise it
// answered a status other than 200 and 4xx, or a 200 that cannot be
// read.
func (h *AuthorizeHook) ask(r *http.Request, transport string, topics []string) (authorization, error) {
	header := make(http.Header, len(h.Headers))
	for _, name := range h.Headers {
		v := r.Header.Values(name)
		if len(v) > 1 && name == "Cookie" {
			// HTTP/2 splits cookies; an HTTP/1 request joins them
			v = []string{strings.Join(v, "; ")}
		}
		if len(v) > 0 {
			header[name] = v
		}
	}
	body, err := json.Marshal(authorizeRequest{Transport: transport, Topics: topics, RemoteAddr: clientIP(r), Path: r.URL.Path, Host: r.Host})
	if err != nil {
		return authorization{}, err
	}
	call := func(ctx context.Context) (authorization, error) {
		az, err := h.call(ctx, body, header, topics)
		if err != nil {
			h.logFailure(r, err)
		}
		return az, err
	}
	if h.ttl == 0 {
		return call(r.Context())
	}
	key := h.key(header, transport, r.Host, r.URL.Path, topics)
	// the answer is shared with every request that waits for it and
	// cached: a client that leaves does not cut it short
	return h.cache.get(key, h.ttl, func() (authorization, error) { return call(context.WithoutCancel(r.Context())) })
}

// logFailure says why a client got 503.
func (h *AuthorizeHook) logFailure(r *http.Request, err error) {
	msg := "authorize: the app's answer is not one authorize takes; clients get 503"
	if errors.Is(err, errHookUnavailable) {
		msg = "authorize: the app did not answer; clients get 503"
	}
	h.logger.Error(msg, zap.Strings("urls", h.URLs), zap.String("path", r.URL.Path), zap.Error(err))
}

// call asks the app and reads its answer.
func (h *AuthorizeHook) call(ctx context.Context, body []byte, header http.Header, asked []string) (authorization, error) {
	a, err := h.post(ctx, body, header)
	switch {
	case err != nil:
		return authorization{}, err
	case a.Status == http.StatusOK:
		return readAuthorization(a.Body, asked)
	case a.Status >= 400 && a.Status < 500:
		az := authorization{Status: a.Status, Reason: hookReason(a), Header: make(http.Header)}
		for _, k := range []string{"WWW-Authenticate", "Retry-After"} {
			if v := a.Header.Values(k); len(v) > 0 {
				az.Header[k] = v
			}
		}
		return az, nil
	}
	return authorization{}, fmt.Errorf("the app answered %d: want 200 or a 4xx", a.Status)
}

// readAuthorization reads the body of the app's 200: topics narrow those
// asked (a topic not asked for is ignored, never added); none left is a
// refusal.
func readAuthorization(body []byte, asked []string) (authorization, error) {
	if !bytes.HasPrefix(bytes.TrimSpace(body), []byte("{")) {
		return authorization{}, fmt.Errorf("a 200 must hold a JSON object, got %.60q", body)
	}
	var ans authorizeAnswer
	if err := json.Unmarshal(body, &ans); err != nil {
		return authorization{}, fmt.Errorf("reading the 200: %v", err)
	}
	if err := validUser(ans.User); err != nil {
		return authorization{}, err
	}
	az := authorization{Topics: asked, User: ans.User}
	if meta := bytes.TrimSpace(ans.Meta); len(meta) > 0 && !bytes.Equal(meta, []byte("null")) {
		if meta[0] != '{' {
			return authorization{}, fmt.Errorf("meta must be a JSON object, got %.60q", meta)
		}
		var buf bytes.Buffer
		_ = json.Compact(&buf, meta) // valid: it was unmarshalled
		if buf.Len() > maxAuthorizeMeta {
			return authorization{}, fmt.Errorf("meta is larger than %d bytes", maxAuthorizeMeta)
		}
		az.Meta = buf.Bytes()
	}
	if ans.Topics != nil {
		az.Topics = slices.DeleteFunc(slices.Clone(asked), func(t string) bool { return !slices.Contains(ans.Topics, t) })
		if len(az.Topics) == 0 {
			return authorization{Status: http.StatusForbidden, Reason: "none of the topics asked for may be followed"}, nil
		}
	}
	return az, nil
}

// validUser refuses a user name that could not stand in a log line or a
// topic template.
func validUser(u string) error {
	switch {
	case len(u) > maxAuthorizeUser:
		return fmt.Errorf("user is longer than %d bytes", maxAuthorizeUser)
	case !utf8.ValidString(u):
		return errors.New("user is not valid UTF-8")
	case strings.ContainsFunc(u, unicode.IsControl):
		return fmt.Errorf("user %q has control characters", u)
	}
	return nil
}

// key is what tells one request from another in the cache: a hash, so the
// cache does not hold credentials.
func (h *AuthorizeHook) key(header http.Header, transport, host, path string, topics []string) [sha256.Size]byte {
	d := sha256.New()
	put := func(s string) {
		_ = binary.Write(d, binary.LittleEndian, uint32(len(s)))
		d.Write([]byte(s))
	}
	for _, name := range h.Headers {
		v := header[name]
		_ = binary.Write(d, binary.LittleEndian, uint32(len(v)))
		for _, s := range v {
			put(s)
		}
	}
	put(transport)
	put(host)
	put(path)
	for _, t := range topics {
		put(t)
	}
	var k [sha256.Size]byte
	d.Sum(k[:0])
	return k
}

// authorizeCache keeps the app's answers, and lets requests that ask what
// another is asking wait for its answer. It holds at most
// maxAuthorizeCache answers; when full it starts again.
type authorizeCache struct {
	mu      sync.Mutex
	answers map[[sha256.Size]byte]cachedAuthorization
	calls   map[[sha256.Size]byte]*authorizeCall
}

// Destruct has nothing to release: the answers go with the cache.
func (*authorizeCache) Destruct() error { return nil }

type cachedAuthorization struct {
	authorization
	expires time.Time
}

// authorizeCall is a call to the app under way.
type authorizeCall struct {
	done chan struct{}
	az   authorization
	err  error
}

// get returns the answer for key: the cached one, that of the call under
// way, or ask's, which it keeps for ttl unless it failed.
func (c *authorizeCache) get(key [sha256.Size]byte, ttl time.Duration, ask func() (authorization, error)) (authorization, error) {
	c.mu.Lock()
	if e, ok := c.answers[key]; ok {
		if time.Now().Before(e.expires) {
			c.mu.Unlock()
			return e.authorization, nil
		}
		delete(c.answers, key)
	}
	if call := c.calls[key]; call != nil {
		c.mu.Unlock()
		<-call.done
		return call.az, call.err
	}
	if c.calls == nil {
		c.calls = make(map[[sha256.Size]byte]*authorizeCall)
	}
	call := &authorizeCall{done: make(chan struct{})}
	c.calls[key] = call
	c.mu.Unlock()

	call.az, call.err = ask()
	c.mu.Lock()
	delete(c.calls, key)
	if call.err == nil {
		if c.answers == nil || len(c.answers) >= maxAuthorizeCache {
			c.answers = make(map[[sha256.Size]byte]cachedAuthorization)
		}
		c.answers[key] = cachedAuthorization{authorization: call.az, expires: time.Now().Add(ttl)}
	}
	c.mu.Unlock()
	close(call.done)
	return call.az, call.err
}

// unmarshalCaddyfile reads
//
//	authorize <url...> {
//		timeout <duration>
//		cache   <duration>
//		headers <name...>
//	}
func (h *AuthorizeHook) unmarshalCaddyfile(d *caddyfile.Dispenser) error {
	seen := make(map[string]bool)
	return unmarshalHook(d, &h.Hook, func(opt string) (bool, error) {
		if seen[opt] {
			return true, d.Errf("authorize option '%s' given more than once", opt)
		}
		seen[opt] = true
		switch opt {
		case "cache":
			h.Cache = new(caddy.Duration)
			return true, parseDuration(d, h.Cache)
		case "headers":
			return true, parseList(d, &h.Headers)
		}
		return false, nil
	})
}
