package push

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/gorilla/websocket"
)

func init() {
	caddy.RegisterModule(WSHandler{})
}

// Defaults of a WebSocket endpoint.
const (
	DefaultPingInterval   = 30 * time.Second
	DefaultPongTimeout    = 10 * time.Second
	DefaultMaxMessageSize = 64 << 10
	DefaultPublishRate    = 20
	DefaultPublishBurst   = 40
)

// Message formats of a WebSocket endpoint.
const (
	FormatJSON = "json"
	FormatText = "text"
)

// WSHandler serves WebSocket connections: the server pushes a hub's events,
// and clients may publish to the topics the handler allows.
//
// When a request carries a JWT that verifies (jwt_key or jwks_url), and
// when the app's authorize answer names the user, the handler sets these
// placeholders, which its topics templates (and, for push_ws, its publish
// templates) may use; {http.push.user} is set after the topics are asked
// of the app, so only publish templates and log_append (access logs) see it:
//
//	Placeholder       | Description
//	------------------|------------------------------------------------
//	{http.push.jwt.*} | each string claim of the token: {http.push.jwt.sub}
//	{http.push.user}  | the user the app's authorize answer names
type WSHandler struct {
	Endpoint

	// Templates of the topics a client's own messages may go to, expanded
	// like topics. A client may also publish to a topic it added with a
	// subscribe message, when a template with {query.*} placeholders
	// gives that topic for some value of them (the client chooses its
	// query: a connect with that value could publish there), and no more
	// to one it unsubscribed from; see docs/websocket.md. Default: none
	// (clients may not publish).
	Publish []string `json:"publish,omitempty"`

	// Topic patterns (see MatchTopic) a client of an endpoint with topics
	// templates may add to its connection with a subscribe message, each
	// checked as a connect's topics are (private, max_topics). Without
	// topics templates a client may add any topic it could connect with,
	// and this option is refused. Needs format json. Default: none (a
	// client may only come back to the topics it connected with).
	Subscribe []string `json:"subscribe,omitempty"`

	// How often the server pings. Default: 30s.
	PingInterval caddy.Duration `json:"ping_interval,omitempty"`

	// How long after a ping the server waits for a pong before it drops
	// the connection. Default: 10s.
	PongTimeout caddy.Duration `json:"pong_timeout,omitempty"`

	// The largest client message, in bytes; a larger one closes the
	// connection with 1009. Default: 65536 (64 KiB).
	MaxMessageSize int64 `json:"max_message_size,omitempty"`

	// The allowed values of the Origin header; "*" allows any. Default:
	// only the request's own host.
	Origins []string `json:"origins,omitempty"`

	// The message format: "json" (an envelope with id, topic, event and
	// data) or "text" (the data alone). Default: json.
	Format string `json:"format,omitempty"`

	// Whether to negotiate permessage-deflate, which saves bandwidth at
	// the cost of a compressor's memory per connection. Default: false.
	Compression bool `json:"compression,omitempty"`

	// How many messages per second a client may publish on average.
	// Default: 20.
	PublishRate float64 `json:"publish_rate,omitempty"`

	// How many messages a client may publish at once before publish_rate
	// applies; a client that keeps going beyond it is closed with 1008.
	// Default: 40.
	PublishBurst int `json:"publish_burst,omitempty"`

	// The app's endpoint that confirms each client message before it is
	// published: it gets the client's envelope with the connection's id
	// and user, and answers 200 with the envelope to publish (edited or
	// not), 204 to publish nothing, or a 4xx whose reason the client gets
	// in an error frame; no answer in time publishes nothing. Needs
	// publish. Default: none (client messages are published as sent).
	PublishProxy *Hook `json:"publish_proxy,omitempty"`

	upgrader websocket.Upgrader
	open     *openSockets
	engines  *handlerEngine
	// ctx ends when the config unloads; client publishes run under it,
	// since the request's context ends when ServeHTTP returns
	ctx context.Context
}

// writeBuffers are shared by every connection between writes, so an idle
// connection holds no write buffer.
var writeBuffers = new(sync.Pool)

// CaddyModule returns the Caddy module information.
func (WSHandler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.push_ws",
		New: func() caddy.Module { return new(WSHandler) },
	}
}

// Provision resolves the hub and applies defaults.
func (h *WSHandler) Provision(ctx caddy.Context) error {
	h.PingInterval = cmp.Or(h.PingInterval, caddy.Duration(DefaultPingInterval))
	h.PongTimeout = cmp.Or(h.PongTimeout, caddy.Duration(DefaultPongTimeout))
	h.MaxMessageSize = cmp.Or(h.MaxMessageSize, DefaultMaxMessageSize)
	h.Format = cmp.Or(h.Format, FormatJSON)
	h.PublishRate = cmp.Or(h.PublishRate, DefaultPublishRate)
	h.PublishBurst = cmp.Or(h.PublishBurst, DefaultPublishBurst)
	h.ctx = ctx
	logger := ctx.Logger()
	if err := h.provision(ctx, logger); err != nil {
		return err
	}
	for _, t := range h.Publish {
		if err := ValidateTopic(t); err != nil {
			return fmt.Errorf("publish template: %v", err)
		}
	}
	if err := h.provisionPublishProxy(ctx); err != nil {
		return err
	}
	if slices.Contains(h.Origins, "*") {
		logger.Warn("websocket accepts any origin: pages on other sites can connect with their visitors' cookies")
	}
	h.upgrader = websocket.Upgrader{
		ReadBufferSize:    1024,
		WriteBufferSize:   1024,
		WriteBufferPool:   writeBuffers,
		EnableCompression: h.Compression,
		CheckOrigin:       func(*http.Request) bool { return true }, // checked before, with a clear answer
	}
	h.open = &openSockets{conns: make(map[*websocket.Conn]struct{})}
	h.engines = new(handlerEngine)
	go func() {
		<-h.stopping()
		h.open.closeAll()
	}()
	return nil
}

// Validate checks the options.
func (h *WSHandler) Validate() error {
	if h.Format != FormatJSON && h.Format != FormatText {
		return fmt.Errorf("format must be json or text, not %q", h.Format)
	}
	if len(h.Subscribe) > 0 {
		if len(h.Topics) == 0 {
			return fmt.Errorf("subscribe needs topics: without them, a client may add any topic it could connect with")
		}
		if h.Format != FormatJSON {
			return fmt.Errorf("subscribe needs format json: text connections send no commands")
		}
	}
	for _, p := range h.Subscribe {
		if err := ValidateTopic(p); err != nil {
			return fmt.Errorf("subscribe pattern: %v", err)
		}
	}
	if h.PingInterval < 0 || h.PongTimeout < 0 || h.MaxMessageSize < 0 || h.PublishRate < 0 || h.PublishBurst < 0 {
		return fmt.Errorf("ping_interval, pong_timeout, max_message_size, publish_rate and publish_burst must not be negative")
	}
	return nil
}

// ServeHTTP upgrades the request and runs the connection.
func (h *WSHandler) ServeHTTP(w http.ResponseWriter, r *http.Request, _ caddyhttp.Handler) error {
	if !websocket.IsWebSocketUpgrade(r) {
		// Upgrade is HTTP/1.1's: over HTTP/3 it would make the response
		// malformed (RFC 9114, 4.2), and Go's HTTP/2 server drops it
		if r.ProtoMajor == 1 {
			w.Header().Set("Upgrade", "websocket")
		}
		return writeError(w, r, http.StatusUpgradeRequired, errors.New("this endpoint speaks WebSocket"))
	}
	if !h.originAllowed(r) {
		return writeError(w, r, http.StatusForbidden, fmt.Errorf("origin %q is not allowed", r.Header.Get("Origin")))
	}
	a, err := h.accept(w, r, TransportWS)
	if a == nil {
		return err
	}
	sub, err := h.subscribe(r.Context(), a, a.member(r, TransportWS))
	if err != nil {
		a.Release()
		return subscribeError(w, r, err)
	}
	conn, err := h.upgrader.Upgrade(hijacker{w}, r, nil)
	if err != nil {
		sub.Close()
		a.Release()
		return nil // the upgrader has answered
	}
	if engineServes(r, true) && h.handOff(conn, sub, a, r) {
		return nil // the engine owns the connection now, and ends it
	}
	s := &socket{conn: conn, out: conn.NetConn().(*batchConn), replies: make(chan []byte, 8),
		commands: make(chan func() bool), writerDone: make(chan struct{})}
	s.wsSession = newWSSession(h, sub, h.rights(r, a), s)
	h.open.add(conn)
	// The connection runs on goroutines of its own, as in gorilla's
	// examples, and this one returns: deep in Caddy's middleware, its
	// stack would be held for as long as the connection lasts (the access
	// log records the upgrade, 101).
	go func() {
		defer a.Release()
		defer sub.Close()
		defer h.open.remove(conn)
		s.run()
	}()
	return nil
}

// hijacker lets gorilla hijack through Caddy's wrapped ResponseWriter,
// which it cannot type-assert to http.Hijacker, and hands gorilla the
// connection as a batchConn.
type hijacker struct{ http.ResponseWriter }

func (h hijacker) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	conn, brw, err := hijack(h.ResponseWriter)
	if err != nil {
		return nil, nil, err
	}
	return &batchConn{Conn: conn}, brw, nil
}

// batchConn lets a connection's writer send a batch of events in one
// write. gorilla still writes every frame, so its protocol state holds
// (no data frame after a close frame); between hold and flush its writes
// are gathered, whole frames one after another, including the control
// frames other goroutines write meanwhile (the reader's pongs and closes,
// the 1001 of a reload), and go out together.
type batchConn struct {
	net.Conn
	mu      sync.Mutex
	holding bool
	buf     *[]byte // from batchBufs while holding, so an idle connection holds none
	// err is a failed flush: a batch may have gone out half, so nothing
	// more may be written (gorilla does the same after its own failures)
	err error
}

var batchBufs = sync.Pool{New: func() any { return new([]byte) }}

func (c *batchConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return 0, c.err
	}
	if c.holding {
		*c.buf = append(*c.buf, p...)
		c.mu.Unlock()
		return len(p), nil
	}
	c.mu.Unlock()
	return c.Conn.Write(p)
}

// hold gathers writes until flush.
func (c *batchConn) hold() {
	c.mu.Lock()
	c.holding = true
	c.buf = batchBufs.Get().(*[]byte)
	c.mu.Unlock()
}

// flush sends what was gathered, under the write deadline gorilla set.
// It writes under the lock, so a frame gorilla writes meanwhile (a close
// from the reader, say) waits and goes after the batch, never before it.
func (c *batchConn) flush() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	buf := c.buf
	c.holding, c.buf = false, nil
	var err error
	if len(*buf) > 0 {
		if _, err = c.Conn.Write(*buf); err != nil {
			c.err = err
		}
	}
	if cap(*buf) <= 64<<10 { // a huge batch is not worth keeping
		*buf = (*buf)[:0]
		batchBufs.Put(buf)
	}
	return err
}

// originAllowed: browsers send cookies on cross-site WebSocket handshakes,
// and nothing like CORS stops a page reading the connection, so the
// Origin must be ours or listed.
func (h *WSHandler) originAllowed(r *http.Request) bool {
	origin := r.Header.Get("Origin")
	if origin == "" {
		return true // not a browser
	}
	if len(h.Origins) == 0 {
		u, err := url.Parse(origin)
		return err == nil && strings.EqualFold(u.Host, r.Host)
	}
	return slices.ContainsFunc(h.Origins, func(o string) bool { return o == "*" || strings.EqualFold(o, origin) })
}

// wsRights are what a client was admitted with, and what it may do on
// its connection.
type wsRights struct {
	grant   *Grant   // its verified JWT, if it sent one
	connect []string // the topics it connected with
	// publish are the topics the publish templates gave, narrowed by
	// the JWT's publish claims when the handler verifies JWTs;
	// publishAny the templates with {query.*} placeholders, the others
	// expanded
	publish    []string
	publishAny []queryTemplate
	// request is the connect's request, for the authorize hook's
	// questions about added topics (nil without the hook); its context
	// outlives the request's end, for the connection's life
	request *http.Request
}

// rights reads what an admitted client may do.
func (h *WSHandler) rights(r *http.Request, a *admission) wsRights {
	repl := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	w := wsRights{grant: a.Grant, connect: a.Topics}
	if h.Authorize != nil {
		w.request = r.WithContext(context.WithoutCancel(r.Context()))
	}
	for _, tmpl := range h.Publish {
		if q, ok := parseQueryTemplate(tmpl, repl); ok {
			w.publishAny = append(w.publishAny, q)
		}
		t, err := repl.ReplaceOrErr(tmpl, true, true)
		if err != nil || t == "" || ValidateTopic(t) != nil || !h.mayPublish(a.Grant, t) {
			continue
		}
		w.publish = append(w.publish, t)
	}
	return w
}

// mayPublish reports whether the client's JWT, when the handler verifies
// JWTs, allows publishing to topic.
func (h *WSHandler) mayPublish(g *Grant, topic string) bool {
	return !h.JWT.enabled() || g != nil && g.CanPublish(topic)
}

// queryTemplate is a publish template with {query.*} placeholders (the
// request's own), the rest expanded: the literal parts, with a
// placeholder's value (any text) between each two.
type queryTemplate []string

// queryPlaceholder finds {query.*} placeholders, and their long form
// (the Caddyfile's {query.room} is {http.request.uri.query.room}).
var queryPlaceholder = regexp.MustCompile(`\{(?:http\.request\.uri\.)?query\.[^{}]+\}`)

// parseQueryTemplate reads tmpl as a queryTemplate; ok is false when it
// has no {query.*} placeholder, or another placeholder that is unknown
// or empty (it gives no topic, as expanding it does).
func parseQueryTemplate(tmpl string, repl *caddy.Replacer) (q queryTemplate, ok bool) {
	if !strings.Contains(tmpl, "query.") {
		return nil, false // the common case, at no cost
	}
	last := 0
	for _, m := range queryPlaceholder.FindAllStringIndex(tmpl, -1) {
		if m[0] > 0 && tmpl[m[0]-1] == '\\' {
			continue // an escaped brace: text
		}
		lit, err := repl.ReplaceOrErr(tmpl[last:m[0]], true, true)
		if err != nil {
			return nil, false
		}
		q, last = append(q, lit), m[1]
	}
	if len(q) == 0 {
		return nil, false
	}
	lit, err := repl.ReplaceOrErr(tmpl[last:], true, true)
	if err != nil {
		return nil, false
	}
	return append(q, lit), true
}

// gives reports whether the template gives topic for some value of its
// placeholders, each one byte or more (an empty placeholder drops the
// template). Each literal part is matched at its first place: that
// leaves the most to the parts after it.
func (q queryTemplate) gives(topic string) bool {
	first, last := q[0], q[len(q)-1]
	rest, ok := strings.CutPrefix(topic, first)
	if !ok {
		return false
	}
	for _, lit := range q[1 : len(q)-1] {
		if rest == "" {
			return false
		}
		i := strings.Index(rest[1:], lit)
		if i < 0 {
			return false
		}
		rest = rest[1+i+len(lit):]
	}
	return len(rest) > len(last) && strings.HasSuffix(rest, last)
}

// openSockets tracks hijacked connections: http.Server.Shutdown does not
// know them, so the handler closes them itself, with 1001, when its server
// shuts down or its config unloads.
type openSockets struct {
	mu     sync.Mutex
	conns  map[*websocket.Conn]struct{}
	closed bool
}

func (o *openSockets) add(c *websocket.Conn) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.closed {
		go goingAway(c)
		return
	}
	o.conns[c] = struct{}{}
}

func (o *openSockets) remove(c *websocket.Conn) {
	o.mu.Lock()
	delete(o.conns, c)
	o.mu.Unlock()
}

func (o *openSockets) closeAll() {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.closed = true
	for c := range o.conns {
		go goingAway(c)
	}
}

// goingAway tells a client the server is leaving and bounds everything
// the connection's goroutines still do to a second, so no write stuck on
// a client that does not read holds up a reload. WriteControl is safe
// beside the writer's writes.
func goingAway(c *websocket.Conn) {
	_ = c.NetConn().SetDeadline(time.Now().Add(closeGrace))
	_ = c.WriteControl(websocket.CloseMessage,
		websocket.FormatCloseMessage(websocket.CloseGoingAway, reasonGoingAway), time.Now().Add(closeGrace))
}

// socket is a WebSocket connection on goroutines of its own: one writer,
// which runs the connection, and one reader (gorilla allows one of each).
// It is its session's transport.
type socket struct {
	wsSession
	conn       *websocket.Conn
	out        *batchConn       // conn's net.Conn
	replies    chan []byte      // answers and error frames from the reader to the writer
	commands   chan func() bool // what the reader has the writer run (held)
	readerDone chan struct{}    // closed when the reader has ended
	writerDone chan struct{}    // closed when the writer has ended

	mu sync.Mutex
	// the close frame to send, set by whichever of the reader and the
	// writer decides first
	closing     bool
	closeCode   int
	closeReason string
}

func (s *socket) run() {
	s.readerDone = make(chan struct{})
	go func() {
		defer close(s.readerDone)
		s.read()
	}()
	s.write()
	close(s.writerDone)
	s.finish()
	s.closed()
}

// held runs fn on the writer, between two of its batches: the events
// offered meanwhile wait in the subscription's queue, and follow fn's
// writes. The reader waits for it, so client messages keep their order.
func (s *socket) held(fn func() bool) bool {
	done := make(chan bool, 1)
	select {
	case s.commands <- func() bool { ok := fn(); done <- ok; return ok }:
	case <-s.writerDone:
		return false
	}
	select {
	case ok := <-done:
		return ok
	case <-s.writerDone:
		return false
	}
}

// close decides the close frame; the writer sends it once it stops. The
// reader stops at once, and with it the writer, whoever calls close (the
// reader, the writer, or the session's calls to the app).
func (s *socket) close(code int, reason string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.closing {
		s.closing, s.closeCode, s.closeReason = true, code, reason
		_ = s.conn.NetConn().SetReadDeadline(time.Now())
	}
}

// finish sends the close frame, if any, and lets the client answer before
// the TCP connection closes: closing with unread client data would reset
// the connection, and the client would lose the close frame.
func (s *socket) finish() {
	netConn := s.conn.NetConn()
	_ = netConn.SetReadDeadline(time.Now().Add(closeGrace))
	s.mu.Lock()
	code, reason := s.closeCode, s.closeReason
	s.mu.Unlock()
	if code != 0 {
		_ = s.conn.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(code, reason), time.Now().Add(closeGrace))
	}
	<-s.readerDone
	_, _ = io.Copy(io.Discard, netConn) // what the reader left, until the client closes or the grace ends
	_ = s.conn.Close()
}

// write sends the opening, then live events, pings and error frames,
// until the connection must end.
func (s *socket) write() {
	if !s.open() {
		return
	}
	// one timer for pings and max_duration, and Ready also tells of the
	// end: the loop goes round once per delivery, and a select costs
	// by its cases
	pingEvery := time.Duration(s.h.PingInterval)
	nextPing := time.Now().Add(pingEvery)
	expires := s.h.expiresAt()
	next := func(now time.Time) time.Duration {
		d := nextPing.Sub(now)
		if !expires.IsZero() {
			d = min(d, expires.Sub(now))
		}
		return max(d, 0)
	}
	wake := time.NewTimer(next(time.Now()))
	defer wake.Stop()
	stopping := s.h.stopping()
	var batch []*Event
	for {
		select {
		case <-s.sub.Ready():
			// an ended subscription goes first, before the events it cannot take
			if s.sub.isEnded() {
				s.ended()
				return
			}
			batch = s.sub.Take(batch)
			if !s.writeEvents(batch) {
				s.failed()
				return
			}
		case frame := <-s.replies:
			if !s.writeText(frame) {
				return
			}
		case fn := <-s.commands:
			if !fn() {
				return
			}
		case now := <-wake.C:
			if !expires.IsZero() && !now.Before(expires) {
				expires = time.Time{}
				if !s.expire() {
					return
				}
				// ends as paused, through Ready
			}
			if !now.Before(nextPing) {
				if err := s.conn.WriteControl(websocket.PingMessage, nil, time.Now().Add(writeTimeout())); err != nil {
					return
				}
				nextPing = now.Add(pingEvery)
			}
			wake.Reset(next(time.Now()))
		case <-stopping:
			s.close(websocket.CloseGoingAway, reasonGoingAway)
			return
		case <-s.readerDone:
			// send the reader's last error frames before its close
			for len(s.replies) > 0 && s.writeText(<-s.replies) {
			}
			return
		}
	}
}

// failed closes, after a failed write, as the hub's end of the
// subscription asks: a subscriber cut off for being slow is told so.
// (After a write timed out, gorilla sends nothing more, rightly: the
// frame may have gone out half.)
func (s *socket) failed() {
	select {
	case <-s.sub.Ended():
		s.ended()
	default:
	}
}

func (s *socket) writeText(data []byte) bool {
	_ = s.conn.SetWriteDeadline(time.Now().Add(writeTimeout()))
	return s.conn.WriteMessage(websocket.TextMessage, data) == nil
}

// writeEvents sends a batch of events, their shared prepared frames
// gathered into one write.
func (s *socket) writeEvents(events []*Event) bool {
	if len(events) == 0 {
		return true
	}
	_ = s.conn.SetWriteDeadline(time.Now().Add(writeTimeout()))
	var err error
	s.out.hold()
	for _, ev := range events {
		if err = s.conn.WritePreparedMessage(ev.wsMessage(s.h.Format, s.sub.topics())); err != nil {
			break // a close frame went out first: what is gathered still goes
		}
	}
	if ferr := s.out.flush(); err == nil {
		err = ferr
	}
	if err != nil {
		return writeFailed(s.sub, err)
	}
	s.sub.Delivered(len(events))
	return true
}

// read handles pongs and client messages until the connection ends.
func (s *socket) read() {
	c := s.conn
	c.SetReadLimit(s.h.MaxMessageSize)
	deadline := func() time.Time {
		return time.Now().Add(time.Duration(s.h.PingInterval + s.h.PongTimeout))
	}
	_ = c.SetReadDeadline(deadline())
	c.SetPongHandler(func(string) error { return c.SetReadDeadline(deadline()) })
	for {
		kind, data, err := c.ReadMessage()
		if err != nil {
			if errors.Is(err, websocket.ErrReadLimit) {
				s.sub.endedFor(hookPolicy)
			}
			return // gorilla has answered a close, or sent 1009 for a message over the limit
		}
		_ = c.SetReadDeadline(deadline())
		if !s.message(kind == websocket.TextMessage, data) {
			return
		}
	}
}

// reply queues an answer or an error frame for the writer. It reports
// false when the queue is full: a client that provokes answers faster
// than they can be sent is closed rather than allowed to grow the queue.
func (s *socket) reply(frame []byte) bool {
	select {
	case s.replies <- frame:
		return true
	default:
		return false
	}
}

// publishFrame publishes a client's message to one of the topics it may
// publish to.
func publishFrame(ctx context.Context, sub *Subscription, allowed []string, frame []byte) error {
	if len(allowed) == 0 {
		return errors.New(replyNoPublish)
	}
	m, err := parseClientFrame(frame, allowed)
	if err != nil {
		return err
	}
	return publishMessage(ctx, sub, m)
}

// publishMessage publishes a client's message, checked, on behalf of the
// subscription's user (or of its address, for a client without one), who
// scopes its idempotency key.
func publishMessage(ctx context.Context, sub *Subscription, m Message) error {
	who := sub.Member()
	publisher := anonymousPublisher(who.RemoteAddr)
	if who.User != "" {
		publisher = "user:" + who.User
	}
	p, err := sub.hub.PublishAs(ctx, m, publisher)
	if err == nil && !p.Replayed {
		sub.hub.published(who, m, p.ID)
	}
	switch {
	case errors.Is(err, ErrIdempotencyConflict):
		return fmt.Errorf("key %q was already used for a different message: use a new key for a new message", m.IdempotencyKey)
	case errors.Is(err, ErrIdempotencyInFlight):
		return fmt.Errorf("a message with key %q is still being published: send it again later", m.IdempotencyKey)
	}
	return err
}

func connectionID() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// wsFrame is a server message in json format; one without an id (a
// presence event) does not move the client's resume point.
type wsFrame struct {
	ID    string `json:"id,omitempty"`
	Topic string `json:"topic,omitempty"`
	Event string `json:"event,omitempty"`
	Data  string `json:"data"`
}

// clientFrame is a client message: {"topic","event","data","id","key"}.
type clientFrame struct {
	Topic string          `json:"topic"`
	Event string          `json:"event,omitempty"`
	Data  json.RawMessage `json:"data"`
	ID    string          `json:"id,omitempty"`
	Key   *string         `json:"key,omitempty"`
}

// parseClientFrame reads a client message. An object with only the
// envelope's fields is the envelope; with a single allowed topic, any other
// text is the data. The topic must be one the client may publish to.
func parseClientFrame(frame []byte, allowed []string) (Message, error) {
	var f clientFrame
	if err := decodeStrict(frame, &f); err != nil {
		if len(allowed) == 1 {
			return Message{Topics: allowed, Data: string(frame)}, nil
		}
		return Message{}, errors.New(`a message must be {"topic":"...","event":"...","data":...}`)
	}
	return f.message(allowed)
}

// decodeStrict decodes one JSON value that has no fields v does not know.
func decodeStrict(b []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if dec.More() {
		return errors.New("more than one JSON value")
	}
	return nil
}

// message is the envelope as a message, checked: the topic must be one
// the client may publish to (the only one, when it names none).
func (f clientFrame) message(allowed []string) (Message, error) {
	switch {
	case f.Topic != "":
	case len(allowed) == 1:
		f.Topic = allowed[0]
	case len(allowed) > 1:
		return Message{}, errors.New("a message must name its topic: this connection may publish to several")
	}
	if !slices.Contains(allowed, f.Topic) {
		return Message{}, fmt.Errorf("may not publish to topic %q", f.Topic)
	}
	data, err := decodeData(f.Data)
	if err != nil {
		return Message{}, err
	}
	m := Message{Topics: []string{f.Topic}, Type: f.Event, Data: data, CustomID: f.ID}
	if f.Key != nil {
		if err := ValidateIdempotencyKey(*f.Key); err != nil {
			return Message{}, err
		}
		m.IdempotencyKey = *f.Key
	}
	return m, nil
}

// wsCommand is a client's subscribe or unsubscribe message.
type wsCommand struct {
	subscribe   bool // else unsubscribe
	topic       string
	lastEventID string
}

// parseCommand reads a client message that is a command: a JSON object
// with a "subscribe" or an "unsubscribe" key, which is never published.
// isCommand is false for any other message; err says what is wrong with
// a command.
func parseCommand(frame []byte) (c wsCommand, isCommand bool, err error) {
	if t := bytes.TrimLeft(frame, " \t\r\n"); len(t) == 0 || t[0] != '{' {
		return wsCommand{}, false, nil
	}
	var obj map[string]json.RawMessage
	if json.Unmarshal(frame, &obj) != nil {
		return wsCommand{}, false, nil
	}
	_, isSub := obj["subscribe"]
	_, isUnsub := obj["unsubscribe"]
	if !isSub && !isUnsub {
		return wsCommand{}, false, nil
	}
	bad := errors.New(replyCommand)
	if isSub == isUnsub {
		return wsCommand{}, true, bad
	}
	c.subscribe = isSub
	str := func(raw json.RawMessage, into *string) bool { return json.Unmarshal(raw, into) == nil }
	var camel, snake string
	for k, v := range obj {
		var ok bool
		switch k {
		case "subscribe":
			ok = str(v, &c.topic)
		case "unsubscribe":
			ok = str(v, &c.topic)
		case "lastEventId":
			ok = isSub && str(v, &camel)
		case "last_event_id":
			ok = isSub && str(v, &snake)
		}
		if !ok {
			return wsCommand{}, true, bad
		}
	}
	c.lastEventID = cmp.Or(camel, snake)
	return c, true, nil
}

// rateLimit is a token bucket: rate per second, up to burst at once. A
// client that keeps sending once the bucket is empty is abusing it.
type rateLimit struct {
	rate, tokens, burst float64
	last                time.Time
	refused             int
}

type rateVerdict int

const (
	rateOK rateVerdict = iota
	rateExceeded
	rateAbused
)

func newRateLimit(rate float64, burst int) *rateLimit {
	return &rateLimit{rate: rate, tokens: float64(burst), burst: float64(burst)}
}

func (l *rateLimit) take(now time.Time) rateVerdict {
	if !l.last.IsZero() {
		l.tokens = min(l.burst, l.tokens+now.Sub(l.last).Seconds()*l.rate)
	}
	l.last = now
	if l.tokens >= 1 {
		l.tokens--
		l.refused = 0
		return rateOK
	}
	if l.refused++; l.refused > int(l.burst) {
		return rateAbused
	}
	return rateExceeded
}

// Interface guards
var (
	_ caddy.Provisioner           = (*WSHandler)(nil)
	_ caddy.Validator             = (*WSHandler)(nil)
	_ caddyhttp.MiddlewareHandler = (*WSHandler)(nil)
)
