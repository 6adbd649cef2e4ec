package push

import (
	"bytes"
	"cmp"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
)

func init() {
	caddy.RegisterModule(PublishHandler{})
}

// Defaults of the publish route's size limits.
const (
	DefaultMaxBody = 1 << 20
	DefaultMaxData = 64 << 10
)

// PublishHandler publishes events to a hub from HTTP POST requests, with
// Mercure's form fields or a JSON body.
type PublishHandler struct {
	// The name of the hub to publish to. Default: default.
	Hub string `json:"hub,omitempty"`

	// A Bearer token that may publish to any topic.
	// Placeholders are expanded once at load, so {env.PUSH_TOKEN} reads it
	// from the environment. Default: none.
	Token string `json:"token,omitempty"`

	JWT

	// Whether anyone may publish without credentials; without it, a route
	// with neither token nor jwt_key (or jwks_url) refuses to load.
	// Default: false.
	Anonymous bool `json:"anonymous,omitempty"`

	// The largest request body accepted, in bytes; larger
	// bodies get 413. Default: 1048576 (1 MiB).
	MaxBody int64 `json:"max_body,omitempty"`

	// The largest event data accepted, in bytes once decoded
	// from the form or JSON; larger data gets 413. Default: 65536 (64 KiB).
	MaxData int64 `json:"max_data,omitempty"`

	hub       *Hub
	tokenHash *[sha256.Size]byte
	logger    *zap.Logger
}

// CaddyModule returns the Caddy module information.
func (PublishHandler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.push_publish",
		New: func() caddy.Module { return new(PublishHandler) },
	}
}

// Provision resolves the hub and the token.
func (h *PublishHandler) Provision(ctx caddy.Context) error {
	h.logger = ctx.Logger()
	if h.MaxBody == 0 {
		h.MaxBody = DefaultMaxBody
	}
	if h.MaxData == 0 {
		h.MaxData = DefaultMaxData
	}
	if h.MaxBody < 0 || h.MaxData < 0 {
		return fmt.Errorf("max_body and max_data must not be negative")
	}
	if h.Token != "" {
		token := caddy.NewReplacer().ReplaceKnown(h.Token, "")
		if token == "" {
			return fmt.Errorf("token %q is empty once its placeholders are expanded", h.Token)
		}
		sum := sha256.Sum256([]byte(token))
		h.tokenHash = &sum
	}
	if err := h.provisionJWT(ctx); err != nil {
		return err
	}
	if h.Anonymous && (h.Token != "" || h.JWT.enabled()) {
		return fmt.Errorf("anonymous contradicts token and jwt_key: choose one")
	}
	switch {
	case h.Anonymous:
		h.logger.Warn("publish route is anonymous: anyone who can reach it may publish")
	case h.Token == "" && !h.JWT.enabled():
		return fmt.Errorf("push_publish needs token or jwt_key; write anonymous to let anyone publish")
	}
	appIface, err := ctx.App("push")
	if err != nil {
		return fmt.Errorf("loading push app: %v", err)
	}
	h.hub, err = appIface.(*App).Hub(h.Hub)
	return err
}

// ServeHTTP publishes one event and answers with its id (the publisher's,
// when it gave one). With an
// Idempotency-Key header, a repeat of a publish is answered with the first
// event's id and Idempotent-Replayed: true, and publishes nothing.
func (h *PublishHandler) ServeHTTP(w http.ResponseWriter, r *http.Request, _ caddyhttp.Handler) error {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		return writeError(w, r, http.StatusMethodNotAllowed, errors.New("method not allowed: publish with POST"))
	}
	grant, status, err := h.authorize(r)
	if err != nil {
		if status == http.StatusUnauthorized {
			w.Header().Set("WWW-Authenticate", `Bearer realm="push"`)
		}
		return writeError(w, r, status, err)
	}
	key, err := idempotencyKey(r)
	if err != nil {
		return writeError(w, r, http.StatusBadRequest, err)
	}
	mediaType, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil || mediaType != "application/x-www-form-urlencoded" && mediaType != "application/json" {
		return writeError(w, r, http.StatusUnsupportedMediaType,
			errors.New("content type must be application/x-www-form-urlencoded or application/json"))
	}
	if r.ContentLength > h.MaxBody {
		return writeError(w, r, http.StatusRequestEntityTooLarge, fmt.Errorf("body is larger than %d bytes", h.MaxBody))
	}
	body, err := readLimited(w, r, h.MaxBody)
	if err != nil {
		if errors.As(err, new(*http.MaxBytesError)) {
			return writeError(w, r, http.StatusRequestEntityTooLarge, fmt.Errorf("body is larger than %d bytes", h.MaxBody))
		}
		return writeError(w, r, http.StatusBadRequest, fmt.Errorf("reading body: %v", err))
	}
	var m Message
	if mediaType == "application/json" {
		m, err = parseJSONMessage(body)
	} else {
		m, err = parseFormMessage(body)
	}
	m.IdempotencyKey = key
	if err == nil {
		// PublishAs checks again; checked here, a bad message is a 400
		// before any other answer about it
		err = h.hub.Validate(m)
	}
	if err != nil {
		return writeError(w, r, http.StatusBadRequest, err)
	}
	if int64(len(m.Data)) > h.MaxData {
		return writeError(w, r, http.StatusRequestEntityTooLarge, fmt.Errorf("data is larger than %d bytes", h.MaxData))
	}
	if grant != nil {
		for _, t := range m.Topics {
			if !grant.CanPublish(t) {
				return writeError(w, r, http.StatusForbidden, fmt.Errorf("token may not publish to topic %q", t))
			}
		}
	}
	p, err := h.hub.PublishAs(r.Context(), m, h.publisher(r, grant))
	if err != nil {
		return h.publishError(w, r, m, err)
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	if p.Replayed {
		w.Header().Set("Idempotent-Replayed", "true")
	}
	w.WriteHeader(http.StatusOK)
	_, _ = io.WriteString(w, p.ID)
	return nil
}

// presize is the largest body read into a buffer of the size its
// Content-Length gives before a byte has come: a claimed length costs the
// client nothing, so a larger body grows only as it arrives.
const presize = 64 << 10

// readLimited reads a request body of at most max bytes: a small body
// whose length the request gives (a publish, usually) into a buffer of
// its size, any other growing as it comes. Past max, the error is an
// *http.MaxBytesError.
func readLimited(w http.ResponseWriter, r *http.Request, max int64) ([]byte, error) {
	if n := r.ContentLength; n >= 0 && n <= min(max, presize) {
		// one byte more than the length, to see the body end there, as
		// reading to the end would (HTTP/2 and HTTP/3 bodies are not cut
		// at their Content-Length by the server)
		body := make([]byte, n+1)
		switch got, err := io.ReadFull(r.Body, body); {
		case got > int(n):
			return nil, errors.New("body is longer than its Content-Length")
		case err == io.EOF || err == io.ErrUnexpectedEOF:
			if got < int(n) {
				return nil, io.ErrUnexpectedEOF
			}
			return body[:n], nil
		default:
			return nil, err
		}
	}
	return io.ReadAll(http.MaxBytesReader(w, r.Body, max))
}

// publishError answers a publish the hub refused.
func (h *PublishHandler) publishError(w http.ResponseWriter, r *http.Request, m Message, err error) error {
	status, reason := publishStatus(err)
	if status == http.StatusConflict || status == http.StatusServiceUnavailable {
		w.Header().Set("Retry-After", "1")
	}
	if status >= http.StatusInternalServerError && status != http.StatusNotImplemented {
		h.logger.Error("publish failed", zap.Strings("topics", m.Topics), zap.Error(err))
	}
	return writeError(w, r, status, reason)
}

// publishStatus is the status and one-line reason of a publish the hub
// refused, for the publish route and the admin API alike.
func publishStatus(err error) (int, error) {
	switch {
	case errors.Is(err, ErrInvalidMessage):
		return http.StatusBadRequest, err
	case errors.Is(err, ErrIdempotencyConflict):
		return http.StatusUnprocessableEntity,
			errors.New("Idempotency-Key was already used for a different message: use a new key for a new message")
	case errors.Is(err, ErrIdempotencyInFlight):
		return http.StatusConflict,
			errors.New("a publish with this Idempotency-Key is still in progress: retry later with the same key")
	case errors.Is(err, ErrIdempotencyUnsupported):
		return http.StatusNotImplemented, err
	case errors.Is(err, ErrUnavailable):
		return http.StatusServiceUnavailable, err
	}
	return http.StatusInternalServerError, err
}

// idempotencyKey reads the Idempotency-Key header: "" when there is none.
func idempotencyKey(r *http.Request) (string, error) {
	values := r.Header.Values("Idempotency-Key")
	switch len(values) {
	case 0:
		return "", nil
	case 1:
		if err := ValidateIdempotencyKey(values[0]); err != nil {
			return "", fmt.Errorf("Idempotency-Key: %v", err)
		}
		return values[0], nil
	}
	return "", errors.New("Idempotency-Key is given more than once")
}

// publisher names who publishes, to scope idempotency keys: the static
// token (by its hash), the JWT's subject (or the token's hash when it has
// none), or on an anonymous route the client's address.
func (h *PublishHandler) publisher(r *http.Request, grant *Grant) string {
	switch {
	case grant != nil:
		if sub, ok := grant.Claims["sub"].(string); ok && sub != "" {
			return "user:" + sub
		}
		token, _ := h.JWT.findToken(r)
		sum := sha256.Sum256([]byte(token))
		return "jwt:" + hex.EncodeToString(sum[:])
	case h.tokenHash != nil:
		return "token:" + hex.EncodeToString(h.tokenHash[:])
	}
	return anonymousPublisher(clientIP(r))
}

// anonymousPublisher scopes the idempotency keys of a publisher without
// credentials to its address (IPv6: its /64, which a device keeps when
// its privacy address changes), so a client retrying after a reconnect
// finds its key and a client elsewhere cannot claim it.
func anonymousPublisher(ip string) string {
	return "anonymous:" + ipKey(ip, 64)
}

// authorize checks the request's credentials. A nil grant with no error
// may publish anywhere: the static token, or an anonymous route. A JWT
// gives a grant whose publish patterns each topic must match.
func (h *PublishHandler) authorize(r *http.Request) (*Grant, int, error) {
	if h.tokenHash == nil && !h.JWT.enabled() {
		return nil, 0, nil
	}
	if h.tokenHash != nil && h.tokenMatches(r) {
		return nil, 0, nil
	}
	if h.JWT.enabled() {
		g, err := h.authenticate(r)
		switch {
		case err == nil && g.FromCookie && !sameOrigin(r):
			return nil, http.StatusForbidden, errors.New("a token from a cookie needs a same-origin request (Origin header)")
		case err == nil:
			return g, 0, nil
		case err != errNoToken:
			return nil, http.StatusUnauthorized, err
		}
	}
	return nil, http.StatusUnauthorized, errors.New("missing or invalid bearer token")
}

// tokenMatches compares hashes, so the comparison takes the same time
// whatever the token's length and content.
func (h *PublishHandler) tokenMatches(r *http.Request) bool {
	scheme, token, ok := strings.Cut(r.Header.Get("Authorization"), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return false
	}
	sum := sha256.Sum256([]byte(strings.TrimSpace(token)))
	return subtle.ConstantTimeCompare(sum[:], h.tokenHash[:]) == 1
}

// maxFormFields bounds the fields of a form body, as url.ParseQuery
// does by default.
const maxFormFields = 10000

var errSemicolon = errors.New("invalid semicolon separator in query")

// parseFormMessage reads Mercure's publish fields: topic (repeatable),
// data, type, retry, id and private. It reads the form as url.ParseQuery
// does, and in body order, but straight from the body's bytes and with
// no map: a malformed form (a bad escape, a semicolon) is reported
// before any field's problem, and otherwise the first field's problem is.
func parseFormMessage(body []byte) (Message, error) {
	if bytes.Count(body, []byte("&"))+1 > maxFormFields {
		return Message{}, fmt.Errorf("malformed form body: more than %d fields", maxFormFields)
	}
	var (
		m                  Message
		malformed, invalid error
		given              [4]bool // data, type, retry, id
	)
	for q := body; len(q) > 0; {
		var part []byte
		part, q, _ = bytes.Cut(q, []byte("&"))
		if bytes.IndexByte(part, ';') >= 0 {
			// as url.ParseQuery has it: this one replaces an earlier
			// error, where a bad escape does not
			malformed = errSemicolon
			continue
		}
		if len(part) == 0 {
			continue
		}
		rawField, rawValue, _ := bytes.Cut(part, []byte("="))
		field, err := formField(rawField)
		if err != nil {
			malformed = cmp.Or(malformed, err)
			continue
		}
		value, err := unescapeForm(rawValue)
		if err != nil {
			malformed = cmp.Or(malformed, err)
			continue
		}
		if invalid == nil {
			invalid = m.setFormField(field, value, &given)
		}
	}
	switch {
	case malformed != nil:
		return Message{}, fmt.Errorf("malformed form body: %v", malformed)
	case invalid != nil:
		return Message{}, invalid
	}
	return m, nil
}

// formField is a form field's name, unescaped; the known ones cost no
// allocation.
func formField(b []byte) (string, error) {
	switch string(b) {
	case "topic":
		return "topic", nil
	case "data":
		return "data", nil
	case "type":
		return "type", nil
	case "retry":
		return "retry", nil
	case "id":
		return "id", nil
	}
	return unescapeForm(b)
}

// unescapeForm is url.QueryUnescape of b, with the same errors, in one
// allocation.
func unescapeForm(b []byte) (string, error) {
	escapes, plus := 0, false
	for i := 0; i < len(b); i++ {
		switch b[i] {
		case '%':
			if i+2 >= len(b) || !isHex(b[i+1]) || !isHex(b[i+2]) {
				return "", url.EscapeError(b[i:min(i+3, len(b))])
			}
			escapes++
			i += 2
		case '+':
			plus = true
		}
	}
	if escapes == 0 && !plus {
		return string(b), nil
	}
	var t strings.Builder
	t.Grow(len(b) - 2*escapes)
	for i := 0; i < len(b); i++ {
		switch c := b[i]; c {
		case '%':
			t.WriteByte(unHex(b[i+1])<<4 | unHex(b[i+2]))
			i += 2
		case '+':
			t.WriteByte(' ')
		default:
			t.WriteByte(c)
		}
	}
	return t.String(), nil
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

func unHex(c byte) byte {
	switch {
	case c <= '9':
		return c - '0'
	case c <= 'F':
		return c - 'A' + 10
	}
	return c - 'a' + 10
}

// setFormField sets one field of a form body on m; given tracks the
// fields that may appear only once.
func (m *Message) setFormField(field, value string, given *[4]bool) error {
	once := func(i int) error {
		if given[i] {
			return fmt.Errorf("field %q is given more than once", field)
		}
		given[i] = true
		return nil
	}
	var err error
	switch field {
	case "topic":
		m.Topics = append(m.Topics, value)
	case "data":
		if err = once(0); err == nil {
			m.Data = value
		}
	case "type":
		if err = once(1); err == nil {
			m.Type = value
		}
	case "retry":
		if err = once(2); err == nil {
			if m.Retry, err = strconv.ParseInt(value, 10, 64); err != nil || m.Retry < 0 {
				err = fmt.Errorf("retry %q is not a number of milliseconds", value)
			}
		}
	case "id":
		if err = once(3); err == nil {
			m.CustomID = value
		}
	case "private":
		// as Mercure has it: present at all, with any value, even empty
		m.Private = true
	default:
		err = fmt.Errorf("unknown field %q", field)
	}
	return err
}

// jsonMessage is the JSON publish body.
type jsonMessage struct {
	Topics  []string        `json:"topics"`
	Topic   string          `json:"topic"`
	Event   string          `json:"event"`
	Data    json.RawMessage `json:"data"`
	Retry   int64           `json:"retry"`
	ID      string          `json:"id"`
	Private bool            `json:"private"`
}

// parseJSONMessage reads
// {"topics":[...],"event":"...","data":...,"retry":N,"id":"...","private":true};
// "topic" may name a single topic, and data that is not a string is sent
// as compact JSON.
func parseJSONMessage(body []byte) (Message, error) {
	if !utf8.Valid(body) {
		// encoding/json would quietly turn bad bytes into U+FFFD
		return Message{}, errors.New("body is not valid UTF-8")
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	var j jsonMessage
	if err := dec.Decode(&j); err != nil {
		return Message{}, fmt.Errorf("invalid JSON body: %v", err)
	}
	if dec.More() {
		return Message{}, errors.New("invalid JSON body: more than one value")
	}
	m := Message{Topics: j.Topics, Type: j.Event, Retry: j.Retry, CustomID: j.ID, Private: j.Private}
	if j.Topic != "" {
		m.Topics = append(m.Topics, j.Topic)
	}
	data, err := decodeData(j.Data)
	if err != nil {
		return Message{}, err
	}
	m.Data = data
	return m, nil
}

// decodeData turns a JSON "data" value into event data: a string as it
// is, any other value compactly serialised, none as empty.
func decodeData(raw json.RawMessage) (string, error) {
	if len(raw) == 0 {
		return "", nil
	}
	if raw[0] == '"' {
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return "", fmt.Errorf("invalid JSON: %v", err)
		}
		return s, nil
	}
	var buf bytes.Buffer
	if err := json.Compact(&buf, raw); err != nil {
		return "", fmt.Errorf("invalid JSON: %v", err)
	}
	return buf.String(), nil
}

// Interface guards
var (
	_ caddy.Provisioner           = (*PublishHandler)(nil)
	_ caddyhttp.MiddlewareHandler = (*PublishHandler)(nil)
)
