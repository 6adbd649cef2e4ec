package push

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
)

func init() {
	caddy.RegisterModule(adminAPI{})
}

// adminAPI is the admin.api.push module: the /push/ routes of Caddy's
// admin endpoint, which ride on its listener and its access rules
// (localhost by default, remote admin with mTLS when configured).
type adminAPI struct{}

// CaddyModule returns the Caddy module information.
func (adminAPI) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "admin.api.push",
		New: func() caddy.Module { return new(adminAPI) },
	}
}

// Routes returns the admin API's routes:
//
//	GET  /push/hubs
//	GET  /push/hubs/<hub>/topics?prefix=<p>&limit=<n>
//	GET  /push/hubs/<hub>/presence?topic=<t>&limit=<n>
//	POST /push/hubs/<hub>/pause       {"topics":[...],"for":"5m","jitter":"30s","fraction":0.5}
//	POST /push/hubs/<hub>/disconnect  {"user":"..."} or {"connection":"..."}, "for":"1m" optional
//	POST /push/hubs/<hub>/publish     the publish API's JSON body
func (a adminAPI) Routes() []caddy.AdminRoute {
	return []caddy.AdminRoute{
		{Pattern: "/push/hubs", Handler: caddy.AdminHandlerFunc(a.handleHubs)},
		{Pattern: "/push/hubs/", Handler: caddy.AdminHandlerFunc(a.handleHub)},
	}
}

// Bounds of the admin API's lists and bodies.
const (
	defaultAdminTopics = 100
	maxAdminList       = 10000
)

func (adminAPI) handleHubs(w http.ResponseWriter, r *http.Request) error {
	if err := allowMethod(w, r, http.MethodGet); err != nil {
		return err
	}
	var names []string
	live.Range(func(k, _ any) bool {
		names = append(names, k.(string))
		return true
	})
	slices.Sort(names)
	out := struct {
		Scope string    `json:"scope"`
		Hubs  []HubInfo `json:"hubs"`
	}{Scope: ScopeCluster, Hubs: []HubInfo{}}
	for _, name := range names {
		hub, ok := LookupHub(name)
		if !ok {
			continue // unloaded meanwhile
		}
		info, err := hub.Info(r.Context())
		if err != nil {
			return apiError(http.StatusServiceUnavailable, fmt.Errorf("hub %q: %v", name, err))
		}
		if info.Scope == ScopeNode {
			out.Scope = ScopeNode
		}
		out.Hubs = append(out.Hubs, info)
	}
	if len(out.Hubs) == 0 {
		out.Scope = ScopeNode
	}
	return writeJSON(w, out)
}

// handleHub serves /push/hubs/<hub>/<action>.
func (a adminAPI) handleHub(w http.ResponseWriter, r *http.Request) error {
	rest := strings.TrimPrefix(r.URL.EscapedPath(), "/push/hubs/")
	escaped, action, _ := strings.Cut(rest, "/")
	name, err := url.PathUnescape(escaped)
	if err != nil || name == "" {
		return apiError(http.StatusNotFound, errors.New("no such route: want /push/hubs/<hub>/<topics|presence|pause|disconnect|publish>"))
	}
	var handle func(http.ResponseWriter, *http.Request, *Hub) error
	method := http.MethodPost
	switch action {
	case "topics":
		handle, method = a.topics, http.MethodGet
	case "presence":
		handle, method = a.presence, http.MethodGet
	case "pause":
		handle = a.pause
	case "disconnect":
		handle = a.disconnect
	case "publish":
		handle = a.publish
	default:
		return apiError(http.StatusNotFound, fmt.Errorf("no such route %q: want topics, presence, pause, disconnect or publish", action))
	}
	hub, ok := LookupHub(name)
	if !ok {
		return apiError(http.StatusNotFound, fmt.Errorf("unknown hub %q", name))
	}
	if err := allowMethod(w, r, method); err != nil {
		return err
	}
	return handle(w, r, hub)
}

func (adminAPI) topics(w http.ResponseWriter, r *http.Request, hub *Hub) error {
	q := r.URL.Query()
	limit, err := queryLimit(q, defaultAdminTopics)
	if err != nil {
		return err
	}
	topics, scope, err := hub.Topics(r.Context(), q.Get("prefix"), limit+1)
	if err != nil {
		return apiError(http.StatusServiceUnavailable, err)
	}
	truncated := len(topics) > limit
	topics = topics[:min(len(topics), limit)]
	return writeJSON(w, struct {
		Hub       string      `json:"hub"`
		Scope     string      `json:"scope"`
		Topics    []TopicInfo `json:"topics"`
		Truncated bool        `json:"truncated"`
	}{hub.Name(), scope, topics, truncated})
}

func (adminAPI) presence(w http.ResponseWriter, r *http.Request, hub *Hub) error {
	q := r.URL.Query()
	topic := q.Get("topic")
	if topic == "" {
		return apiError(http.StatusBadRequest, errors.New("missing topic: /presence?topic=<topic>"))
	}
	if err := ValidateTopic(topic); err != nil {
		return apiError(http.StatusBadRequest, err)
	}
	limit, err := queryLimit(q, DefaultPresenceLimit)
	if err != nil {
		return err
	}
	members, count, scope, err := hub.Presence(r.Context(), topic, limit)
	if err != nil {
		return apiError(http.StatusServiceUnavailable, err)
	}
	return writeJSON(w, struct {
		Hub     string   `json:"hub"`
		Scope   string   `json:"scope"`
		Topic   string   `json:"topic"`
		Count   int      `json:"count"`
		Members []Member `json:"members"`
	}{hub.Name(), scope, topic, count, members})
}

// pauseBody is the pause route's body; durations as in Caddy's JSON
// ("5m", or nanoseconds).
type pauseBody struct {
	Topics   []string       `json:"topics"`
	For      caddy.Duration `json:"for"`
	Jitter   caddy.Duration `json:"jitter"`
	Fraction float64        `json:"fraction"`
}

func (adminAPI) pause(w http.ResponseWriter, r *http.Request, hub *Hub) error {
	var b pauseBody
	if err := decodeBody(w, r, &b); err != nil {
		return err
	}
	p := PauseRequest{Topics: b.Topics, For: time.Duration(b.For), Jitter: time.Duration(b.Jitter), Fraction: b.Fraction}
	if err := p.Validate(); err != nil {
		return apiError(http.StatusBadRequest, err)
	}
	n, scope, err := hub.broadcast(r.Context(), Command{Pause: &p})
	if err != nil {
		return apiError(http.StatusServiceUnavailable, err)
	}
	return writeJSON(w, struct {
		Hub    string `json:"hub"`
		Scope  string `json:"scope"`
		Paused int    `json:"paused"`
	}{hub.Name(), scope, n})
}

// disconnectBody is the disconnect route's body.
type disconnectBody struct {
	User       string         `json:"user"`
	Connection string         `json:"connection"`
	For        caddy.Duration `json:"for"`
}

func (adminAPI) disconnect(w http.ResponseWriter, r *http.Request, hub *Hub) error {
	var b disconnectBody
	if err := decodeBody(w, r, &b); err != nil {
		return err
	}
	d := DisconnectRequest{User: b.User, Connection: b.Connection, For: time.Duration(b.For)}
	if err := d.Validate(); err != nil {
		return apiError(http.StatusBadRequest, err)
	}
	n, scope, err := hub.broadcast(r.Context(), Command{Disconnect: &d})
	if err != nil {
		return apiError(http.StatusServiceUnavailable, err)
	}
	return writeJSON(w, struct {
		Hub          string `json:"hub"`
		Scope        string `json:"scope"`
		Disconnected int    `json:"disconnected"`
	}{hub.Name(), scope, n})
}

func (adminAPI) publish(w http.ResponseWriter, r *http.Request, hub *Hub) error {
	body, err := readBody(w, r)
	if err != nil {
		return err
	}
	key, err := idempotencyKey(r)
	if err != nil {
		return apiError(http.StatusBadRequest, err)
	}
	m, err := parseJSONMessage(body)
	m.IdempotencyKey = key
	if err == nil {
		err = hub.Validate(m)
	}
	if err != nil {
		return apiError(http.StatusBadRequest, err)
	}
	if len(m.Data) > DefaultMaxData {
		return apiError(http.StatusRequestEntityTooLarge, fmt.Errorf("data is larger than %d bytes", DefaultMaxData))
	}
	// the admin endpoint's publishers share one scope of keys
	p, err := hub.PublishAs(r.Context(), m, "admin")
	if err != nil {
		return apiError(publishStatus(err))
	}
	if p.Replayed {
		w.Header().Set("Idempotent-Replayed", "true")
	}
	return writeJSON(w, struct {
		Hub      string `json:"hub"`
		Scope    string `json:"scope"`
		ID       string `json:"id"`
		Replayed bool   `json:"replayed,omitempty"`
	}{hub.Name(), hub.scope(), p.ID, p.Replayed})
}

// allowMethod refuses any other method with 405 and an Allow header.
func allowMethod(w http.ResponseWriter, r *http.Request, method string) error {
	if r.Method == method {
		return nil
	}
	w.Header().Set("Allow", method)
	return apiError(http.StatusMethodNotAllowed, fmt.Errorf("method %s not allowed: use %s", r.Method, method))
}

// queryLimit reads the limit parameter: a whole number from 1 to
// maxAdminList, def when absent.
func queryLimit(q url.Values, def int) (int, error) {
	s := q.Get("limit")
	if s == "" {
		return def, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 || n > maxAdminList {
		return 0, apiError(http.StatusBadRequest, fmt.Errorf("invalid limit %q: want a whole number from 1 to %d", s, maxAdminList))
	}
	return n, nil
}

// readBody reads a JSON request body of at most DefaultMaxBody bytes.
func readBody(w http.ResponseWriter, r *http.Request) ([]byte, error) {
	if ct := r.Header.Get("Content-Type"); ct != "" && !strings.HasPrefix(ct, "application/json") {
		return nil, apiError(http.StatusUnsupportedMediaType, errors.New("content type must be application/json"))
	}
	body, err := readLimited(w, r, DefaultMaxBody)
	if err != nil {
		if errors.As(err, new(*http.MaxBytesError)) {
			return nil, apiError(http.StatusRequestEntityTooLarge, fmt.Errorf("body is larger than %d bytes", DefaultMaxBody))
		}
		return nil, apiError(http.StatusBadRequest, fmt.Errorf("reading body: %v", err))
	}
	return body, nil
}

// decodeBody reads a JSON object into v, refusing unknown fields, so a
// misspelt field is an error and not a request for something else.
func decodeBody(w http.ResponseWriter, r *http.Request, v any) error {
	body, err := readBody(w, r)
	if err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return apiError(http.StatusBadRequest, fmt.Errorf("decoding request body: %v", err))
	}
	if dec.More() {
		return apiError(http.StatusBadRequest, errors.New("decoding request body: more than one JSON value"))
	}
	return nil
}

func apiError(status int, err error) error {
	return caddy.APIError{HTTPStatus: status, Err: err}
}

func writeJSON(w http.ResponseWriter, v any) error {
	w.Header().Set("Content-Type", "application/json")
	return json.NewEncoder(w).Encode(v)
}

// Interface guards
var _ caddy.AdminRouter = adminAPI{}
