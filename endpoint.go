package push

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
)

// DefaultMaxTopics bounds how many topics one connection follows.
const DefaultMaxTopics = 32

// DefaultIPv6Prefix is the IPv6 network max_connections_per_ip counts as
// one client.
const DefaultIPv6Prefix = 64

// Endpoint is what the SSE and WebSocket handlers share: the hub, the
// topics a connection follows, the connection limit, and the signal that
// ends every stream when the server shuts down or the config unloads.
type Endpoint struct {
	// The name of the hub to subscribe to. Default: default.
	Hub string `json:"hub,omitempty"`

	// Templates of the topics a connection follows; Caddy
	// placeholders such as {query.room} or {http.auth.user.id} are
	// expanded per request, and a template with a placeholder that is
	// unknown or empty is dropped. Without topics, the client names them
	// with repeated `topic` query parameters. Default: none.
	Topics []string `json:"topics,omitempty"`

	// The most open connections on this handler; beyond it the
	// server answers 503 with Retry-After, except that an SSE request
	// accepting text/event-stream (as every EventSource does) gets a pause
	// for that long, since EventSource never retries a non-200 answer.
	// Default: 0 (no limit).
	MaxConnections int `json:"max_connections,omitempty"`

	// The most open connections from one client IP (as
	// Caddy sees it, honouring trusted_proxies); beyond it the server
	// answers 429 with Retry-After, or pauses an EventSource as
	// max_connections does. IPv6 clients are counted by network, as
	// ipv6_prefix says. Default: 0 (no limit).
	MaxConnectionsPerIP int `json:"max_connections_per_ip,omitempty"`

	// How many leading bits of an IPv6 address
	// max_connections_per_ip counts as one client: a subscriber is
	// usually given a whole /64 and may connect from any address in it.
	// 128 counts every address apart; IPv4 addresses are always counted
	// whole. From 1 to 128. Default: 64.
	IPv6Prefix int `json:"ipv6_prefix,omitempty"`

	// How long a connection lasts: it ends after this long (±10% jitter, so
	// clients do not come back all at once); the client reconnects and
	// resumes from its last event, losing nothing. Default: 0 (off).
	MaxDuration caddy.Duration `json:"max_duration,omitempty"`

	// How long a connection that reaches max_duration pauses instead: its
	// client is told to come back after this long (±10% jitter), and
	// resumes from its last event. Default: 0 (off: it comes back within
	// a second).
	PauseFor caddy.Duration `json:"pause_for,omitempty"`

	// The most topics of one subscription; more get 400.
	// Default: 32.
	MaxTopics int `json:"max_topics,omitempty"`

	// Whether a connection's topics are told who is there: each connection
	// first gets a push.presence event per topic, listing its members (this
	// connection included), and its arrival and departure are sent as
	// push.join and push.leave events. Default: false.
	Presence bool `json:"presence,omitempty"`

	// With presence, topic patterns (see MatchTopic):
	// a connection is announced, listed and sent push.presence only on
	// those of its topics they match, so its user's name does not reach
	// the followers of its other topics (a public feed, say). Default:
	// none (every topic of the connection).
	PresenceTopics []string `json:"presence_topics,omitempty"`

	// The most members a push.presence event lists; a
	// topic with more gets their count only. Default: 1000.
	PresenceLimit int `json:"presence_limit,omitempty"`

	// Topic patterns (see MatchTopic) that only a client
	// whose JWT has a matching subscribe claim may follow; others get 401
	// without a token and 403 with one. Needs jwt_key or jwks_url.
	// Default: none.
	Private []string `json:"private,omitempty"`

	JWT

	// Asks the app, at connect, whether a client may subscribe, to which
	// of the topics it asks for, and who it is (see AuthorizeHook). It
	// runs after every check of the handler's own. Default: none (the
	// handler's checks alone decide).
	Authorize *AuthorizeHook `json:"authorize,omitempty"`

	hub    *Hub
	logger *zap.Logger
	conns  *connections
	// overLimit, when set, answers a request over a connection limit
	// instead of the error status
	overLimit func(w http.ResponseWriter, r *http.Request, status int, err error) error
}

// limitRetryAfter is when a client over a connection limit, or facing an
// unavailable hub backend, is told to try again.
const limitRetryAfter = 5 * time.Second

// expiresAt is when a connection opened now reaches max_duration (±10%),
// or zero without max_duration.
func (e *Endpoint) expiresAt() time.Time {
	if e.MaxDuration <= 0 {
		return time.Time{}
	}
	return time.Now().Add(jittered(time.Duration(e.MaxDuration)))
}

// jittered spreads d by ±10%, so clients told the same time do not all
// come back in the same instant.
func jittered(d time.Duration) time.Duration {
	return time.Duration(float64(d) * (0.9 + 0.2*rand.Float64()))
}

// expire ends a connection at max_duration: with pause_for it pauses the
// subscription, and reports true (the connection goes on to end as paused);
// otherwise it reports false and the connection says goodbye.
func (e *Endpoint) expire(sub *Subscription) bool {
	sub.endedFor(hookMaxDuration)
	if e.PauseFor <= 0 {
		return false
	}
	sub.Pause(time.Now().Add(jittered(time.Duration(e.PauseFor))))
	return true
}

// connections counts a handler's open connections and ends them all when
// the handler's server shuts down or its config unloads.
type connections struct {
	open     atomic.Int64
	stop     chan struct{}
	stopOnce sync.Once

	mu    sync.Mutex
	perIP map[string]int
}

func (e *Endpoint) provision(ctx caddy.Context, logger *zap.Logger) error {
	e.logger = logger
	e.conns = &connections{stop: make(chan struct{}), perIP: make(map[string]int)}
	if e.MaxConnections < 0 || e.MaxConnectionsPerIP < 0 || e.MaxTopics < 0 || e.MaxDuration < 0 || e.PauseFor < 0 || e.PresenceLimit < 0 {
		return fmt.Errorf("max_connections, max_connections_per_ip, max_topics, max_duration, pause_for and presence_limit must not be negative")
	}
	if e.PresenceLimit == 0 {
		e.PresenceLimit = DefaultPresenceLimit
	}
	if len(e.PresenceTopics) > 0 && !e.Presence {
		return fmt.Errorf("presence_topics needs presence")
	}
	for _, p := range e.PresenceTopics {
		if err := ValidateTopic(p); err != nil {
			return fmt.Errorf("presence pattern: %v", err)
		}
	}
	if e.IPv6Prefix == 0 {
		e.IPv6Prefix = DefaultIPv6Prefix
	}
	if e.IPv6Prefix < 1 || e.IPv6Prefix > 128 {
		return fmt.Errorf("ipv6_prefix must be from 1 to 128 bits, not %d", e.IPv6Prefix)
	}
	if e.PauseFor > 0 && e.MaxDuration == 0 {
		return fmt.Errorf("pause_for needs max_duration: streams pause when they reach it")
	}
	if e.MaxTopics == 0 {
		e.MaxTopics = DefaultMaxTopics
	}
	if err := e.provisionJWT(ctx); err != nil {
		return err
	}
	if e.Authorize != nil {
		if err := e.Authorize.provision(ctx, logger); err != nil {
			return err
		}
	}
	if len(e.Private) > 0 && !e.JWT.enabled() {
		return fmt.Errorf("private topics need jwt_key or jwks_url to verify subscribe claims")
	}
	for _, t := range e.Topics {
		if err := ValidateTopic(t); err != nil {
			return fmt.Errorf("topic template: %v", err)
		}
	}
	appIface, err := ctx.App("push")
	if err != nil {
		return fmt.Errorf("loading push app: %v", err)
	}
	if e.hub, err = appIface.(*App).Hub(e.Hub); err != nil {
		return err
	}
	// Streams never end on their own, so http.Server.Shutdown would wait
	// for them forever (the default grace period is eternal, and the
	// config context is cancelled only after Shutdown returns): end them
	// as soon as shutdown begins, and on cleanup in any case.
	if srv, ok := ctx.Value(caddyhttp.ServerCtxKey).(*caddyhttp.Server); ok {
		srv.RegisterOnShutdown(e.conns.shutdown)
	}
	return nil
}

// Cleanup ends the handler's streams when its config is unloaded (a
// reload, a stop): SSE streams with a short retry, WebSocket connections
// with 1001; each client resumes from its last event.
func (e *Endpoint) Cleanup() error {
	if e.conns != nil {
		e.conns.shutdown()
	}
	if e.Authorize != nil {
		e.Authorize.cleanup()
	}
	return nil
}

func (c *connections) shutdown() {
	c.stopOnce.Do(func() { close(c.stop) })
}

// stopping is closed when the handler's server shuts down or its config
// is unloaded; every stream must then end.
func (e *Endpoint) stopping() <-chan struct{} { return e.conns.stop }

// admission is a subscribe request that passed every check.
type admission struct {
	Topics []string
	// Patterns select topics besides Topics (a Mercure subscriber's
	// selectors).
	Patterns    []*mercureSelector
	LastEventID string
	// Grant is the client's verified JWT, if it sent one.
	Grant *Grant
	// User and Meta are what the app's authorize answer says of the
	// client, if it named its user or attached metadata.
	User string
	Meta json.RawMessage
	// opened, when set, adds response headers once the subscription is
	// made (push_mercure's Last-Event-ID)
	opened func(http.Header, *Subscription)
	// mercure, when set, is the connection's tracked Mercure
	// subscriptions (push_mercure with subscriptions)
	mercure *MercureSubscriber
	release func()
}

// Release frees the connection's place under the limits.
func (a *admission) Release() { a.release() }

// accept runs every check a subscribe request over transport must pass,
// cheapest and least revealing first, the app's authorize hook last. On
// failure it has written the answer, and the handler returns the error it
// gives.
func (e *Endpoint) accept(w http.ResponseWriter, r *http.Request, transport string) (*admission, error) {
	query, err := parseQuery(r)
	if err != nil {
		return nil, writeError(w, r, http.StatusBadRequest, err)
	}
	grant, status, err := e.authenticateSubscriber(r)
	if err != nil {
		return nil, writeError(w, r, status, err)
	}
	topics, err := e.subscriptionTopics(r, query)
	if err != nil {
		return nil, writeError(w, r, http.StatusBadRequest, err)
	}
	if status, err := e.checkPrivate(topics, grant); err != nil {
		return nil, writeError(w, r, status, err)
	}
	az, ok, err := e.authorize(w, r, transport, topics)
	if !ok {
		return nil, err
	}
	release, status, err := e.reserve(r)
	if err != nil {
		return nil, e.busy(w, r, status, err)
	}
	return &admission{Topics: az.Topics, User: az.User, Meta: az.Meta, LastEventID: lastEventID(r, query), Grant: grant, release: release}, nil
}

// busy answers a request the server cannot take now: status with
// Retry-After, or the endpoint's own answer (an EventSource's pause).
func (e *Endpoint) busy(w http.ResponseWriter, r *http.Request, status int, err error) error {
	if e.overLimit != nil {
		return e.overLimit(w, r, status, err)
	}
	w.Header().Set("Retry-After", strconv.Itoa(int(limitRetryAfter.Seconds())))
	return writeError(w, r, status, err)
}

// authorize asks the app, when the endpoint has an authorize hook, whether
// the client may follow topics, and sets {http.push.user} to the user it
// names. Admitted, it reports true with the topics the app allows; refused,
// it has written the answer. A request over a connection limit is refused
// before the app is asked, and without a place under the limits held
// while it answers.
func (e *Endpoint) authorize(w http.ResponseWriter, r *http.Request, transport string, topics []string) (authorization, bool, error) {
	if e.Authorize == nil {
		return authorization{Topics: topics}, true, nil
	}
	if status, err := e.full(r); err != nil {
		return authorization{}, false, e.busy(w, r, status, err)
	}
	az, err := e.Authorize.ask(r, transport, topics)
	switch {
	case err != nil:
		return az, false, e.busy(w, r, http.StatusServiceUnavailable, errors.New("authorization is unavailable: try again later"))
	case az.Status != 0:
		for k, v := range az.Header {
			w.Header()[k] = slices.Clone(v)
		}
		return az, false, writeError(w, r, az.Status, errors.New(az.Reason))
	}
	if az.User != "" {
		repl := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
		repl.Set("http.push.user", az.User)
	}
	return az, true, nil
}

// authenticateSubscriber verifies the client's JWT, if it sent one, and
// makes its string claims placeholders: {http.push.jwt.sub}, ...
func (e *Endpoint) authenticateSubscriber(r *http.Request) (*Grant, int, error) {
	if !e.JWT.enabled() {
		return nil, 0, nil
	}
	g, err := e.authenticate(r)
	switch {
	case err == errNoToken:
		return nil, 0, nil
	case err != nil:
		return nil, http.StatusUnauthorized, err
	case g.expired():
		return nil, http.StatusUnauthorized, errTokenExpired
	case g.FromCookie && !cookieRequestAllowed(r):
		return nil, http.StatusForbidden, errors.New("a token from a cookie needs a same-origin request")
	}
	repl := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	for k, v := range g.Claims {
		if s, ok := v.(string); ok {
			repl.Set("http.push.jwt."+k, s)
		}
	}
	return g, 0, nil
}

// cookieRequestAllowed: browsers send cookies on cross-site requests
// too, but then set Origin (CORS, WebSocket) or Sec-Fetch-Site. A
// same-origin EventSource GET carries no Origin, so Sec-Fetch-Site
// vouches for it.
func cookieRequestAllowed(r *http.Request) bool {
	if r.Header.Get("Origin") != "" {
		return sameOrigin(r)
	}
	return r.Header.Get("Sec-Fetch-Site") == "same-origin"
}

// checkPrivate refuses topics that match a private pattern unless the
// grant may subscribe to them.
func (e *Endpoint) checkPrivate(topics []string, g *Grant) (int, error) {
	for _, t := range topics {
		if !matchAny(e.Private, t) {
			continue
		}
		if g == nil {
			return http.StatusUnauthorized, fmt.Errorf("topic %q is private: send a token", t)
		}
		if !g.CanSubscribe(t) {
			return http.StatusForbidden, fmt.Errorf("token may not subscribe to private topic %q", t)
		}
	}
	return 0, nil
}

// errTooManyConnections refuses a connection over max_connections.
var errTooManyConnections = errors.New("too many connections")

// full reports, without taking a place, whether a connection would be over
// max_connections or max_connections_per_ip now.
func (e *Endpoint) full(r *http.Request) (int, error) {
	c := e.conns
	if e.MaxConnections > 0 && c.open.Load() >= int64(e.MaxConnections) {
		return http.StatusServiceUnavailable, errTooManyConnections
	}
	if e.MaxConnectionsPerIP == 0 {
		return 0, nil
	}
	ip := ipKey(clientIP(r), e.IPv6Prefix)
	c.mu.Lock()
	n := c.perIP[ip]
	c.mu.Unlock()
	if n >= e.MaxConnectionsPerIP {
		return http.StatusTooManyRequests, tooManyFrom(ip)
	}
	return 0, nil
}

func tooManyFrom(ip string) error { return fmt.Errorf("too many connections from %s", ip) }

// topicAdd is a topic a client asks to add to its open connection (a
// WebSocket client's subscribe message).
type topicAdd struct {
	Topic string
	// Held are the topics the connection follows now, Connect those it
	// was admitted with.
	Held, Connect []string
	// Grant is the client's verified JWT from the connect, if it sent one.
	Grant *Grant
	// Request is the connect's request, kept for the authorize hook (nil
	// without one): the app is asked about the topic with the same
	// credentials, path and address as at connect.
	Request *http.Request
}

// checkAddedTopic reports why a connection may not add a topic: the
// checks of a connect's topics, on the topic the client names. Without
// topics templates, a client may add any topic it could connect with;
// with them, one it was admitted with, or one that patterns (the
// handler's subscribe option) match. A private topic needs a grant
// allowing it, the connection may follow at most max_topics, and the
// authorize hook, when there is one, is asked about the topic as at
// connect. Every topic added to an open connection is checked here and
// only here.
func (e *Endpoint) checkAddedTopic(add topicAdd, patterns []string) error {
	t := add.Topic
	if err := ValidateTopic(t); err != nil {
		return err
	}
	if len(e.Topics) > 0 && !slices.Contains(add.Connect, t) {
		if len(patterns) == 0 {
			return errors.New(replyNoSubscribe)
		}
		if !matchAny(patterns, t) {
			return fmt.Errorf("may not subscribe to topic %q", t)
		}
	}
	if _, err := e.checkPrivate([]string{t}, add.Grant); err != nil {
		return err
	}
	if n := len(add.Held) + 1; n > e.MaxTopics {
		return fmt.Errorf("too many topics: %d (the limit is %d)", n, e.MaxTopics)
	}
	if e.Authorize != nil && add.Request != nil {
		az, err := e.Authorize.ask(add.Request, TransportWS, []string{t})
		switch {
		case err != nil:
			return errors.New("the app did not confirm the topic: try again")
		case az.Status != 0:
			return fmt.Errorf("may not subscribe to topic %q: %s", t, az.Reason)
		case !slices.Contains(az.Topics, t):
			return fmt.Errorf("may not subscribe to topic %q", t)
		}
	}
	return nil
}

// reserve takes a place under max_connections and max_connections_per_ip.
func (e *Endpoint) reserve(r *http.Request) (func(), int, error) {
	c := e.conns
	if n := c.open.Add(1); e.MaxConnections > 0 && n > int64(e.MaxConnections) {
		c.open.Add(-1)
		return nil, http.StatusServiceUnavailable, errTooManyConnections
	}
	if e.MaxConnectionsPerIP == 0 {
		return func() { c.open.Add(-1) }, 0, nil
	}
	ip := ipKey(clientIP(r), e.IPv6Prefix)
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.perIP[ip] >= e.MaxConnectionsPerIP {
		c.open.Add(-1)
		return nil, http.StatusTooManyRequests, tooManyFrom(ip)
	}
	c.perIP[ip]++
	return func() {
		c.mu.Lock()
		if c.perIP[ip]--; c.perIP[ip] <= 0 {
			delete(c.perIP, ip)
		}
		c.mu.Unlock()
		c.open.Add(-1)
	}, 0, nil
}

// clientIP is the client's address as Caddy determined it, which honours
// the server's trusted_proxies.
func clientIP(r *http.Request) string {
	if ip, ok := caddyhttp.GetVar(r.Context(), caddyhttp.ClientIPVarKey).(string); ok && ip != "" {
		return ip
	}
	host, _, _ := net.SplitHostPort(r.RemoteAddr)
	return host
}

// ipKey is what a client's address counts as: an IPv4 address (or an
// IPv4-mapped IPv6 one) whole, an IPv6 address by its first v6prefix
// bits, as one subscriber is given a whole /64 and picks addresses in it
// freely. Anything else (not an IP) counts as itself.
func ipKey(ip string, v6prefix int) string {
	addr, err := netip.ParseAddr(ip)
	if err != nil {
		return ip
	}
	if addr = addr.Unmap(); addr.Is4() {
		return addr.String()
	}
	p, err := addr.WithZone("").Prefix(v6prefix)
	if err != nil {
		return addr.String()
	}
	return p.String()
}

// subscriptionTopics resolves the topics of one request: the expanded
// templates, or the `topic` query parameters when there are none.
func (e *Endpoint) subscriptionTopics(r *http.Request, query url.Values) ([]string, error) {
	var topics []string
	if len(e.Topics) > 0 {
		repl := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
		for _, tmpl := range e.Topics {
			// an unknown or empty placeholder would widen the topic
			// ("user/" for every anonymous user): drop the template
			if t, err := repl.ReplaceOrErr(tmpl, true, true); err == nil && t != "" {
				topics = append(topics, t)
			}
		}
	} else {
		topics = query["topic"]
	}
	slices.Sort(topics)
	topics = slices.Compact(topics)
	if len(topics) == 0 {
		return nil, errors.New("no topic to subscribe to")
	}
	if len(topics) > e.MaxTopics {
		return nil, fmt.Errorf("too many topics: %d (the limit is %d)", len(topics), e.MaxTopics)
	}
	for _, t := range topics {
		if err := ValidateTopic(t); err != nil {
			return nil, err
		}
	}
	return topics, nil
}

// lastEventID is the id a client resumes from: the Last-Event-ID header,
// or for clients that cannot set headers the lastEventId query parameter,
// or last_event_id (the Mercure draft's name), in that order.
func lastEventID(r *http.Request, query url.Values) string {
	if id := r.Header.Get("Last-Event-ID"); id != "" {
		return id
	}
	return cmp.Or(query.Get("lastEventId"), query.Get("last_event_id"))
}

// parseQuery refuses malformed query strings rather than silently
// dropping the parameters it cannot decode.
func parseQuery(r *http.Request) (url.Values, error) {
	q, err := url.ParseQuery(r.URL.RawQuery)
	if err != nil {
		return nil, fmt.Errorf("malformed query string: %v", err)
	}
	return q, nil
}

// writeError answers with status and a one-line plain-text reason. When
// the site has handle_errors routes, it leaves the answer to them.
func writeError(w http.ResponseWriter, r *http.Request, status int, err error) error {
	if srv, ok := r.Context().Value(caddyhttp.ServerCtxKey).(*caddyhttp.Server); ok &&
		srv.Errors != nil && len(srv.Errors.Routes) > 0 {
		return caddyhttp.Error(status, err)
	}
	msg := strings.ReplaceAll(err.Error(), "\n", " ")
	h := w.Header()
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Content-Length", strconv.Itoa(len(msg)+1))
	w.WriteHeader(status)
	_, _ = io.WriteString(w, msg+"\n")
	return nil
}

// subscribeError maps a hub error to its status.
func subscribeError(w http.ResponseWriter, r *http.Request, err error) error {
	if errors.Is(err, ErrUnavailable) {
		w.Header().Set("Retry-After", strconv.Itoa(int(limitRetryAfter.Seconds())))
		return writeError(w, r, http.StatusServiceUnavailable, err)
	}
	return writeError(w, r, http.StatusInternalServerError, err)
}

// acceptsEventStream reports whether the request's Accept header names
// text/event-stream, as every EventSource's does.
func acceptsEventStream(r *http.Request) bool {
	for _, v := range r.Header.Values("Accept") {
		for part := range strings.SplitSeq(v, ",") {
			mt, _, _ := strings.Cut(part, ";")
			if strings.EqualFold(strings.TrimSpace(mt), "text/event-stream") {
				return true
			}
		}
	}
	return false
}

// Interface guards
var (
	_ caddy.CleanerUpper = (*SSEHandler)(nil)
	_ caddy.CleanerUpper = (*WSHandler)(nil)
)
