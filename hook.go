package push

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// Hook is an endpoint of the app that a handler calls (authorize, events,
// publish_proxy): one or more URLs, each tried in turn, starting with the
// one after the last that answered, until one answers (several
// upstreams, as reverse_proxy has them); a timeout for each call; and
// the headers of the client's request passed on.
type Hook struct {
	// The app's URLs (http or https); placeholders are expanded once, at
	// load ({env.APP_URL}). At least one.
	URLs []string `json:"urls,omitempty"`

	// How long one call may take, all URLs tried included. Default: 2s.
	Timeout caddy.Duration `json:"timeout,omitempty"`

	client *http.Client
	next   atomic.Uint32
}

// DefaultHookTimeout bounds a call to the app.
const DefaultHookTimeout = 2 * time.Second

// maxHookAnswer bounds what the app's answer may hold.
const maxHookAnswer = 64 << 10

// errHookUnavailable wraps a call no URL answered in time: the app is
// down, slow, or unreachable.
var errHookUnavailable = errors.New("the app did not answer")

// provision checks the URLs and readies the client. Calls never outlive
// ctx (the config), and never follow redirects: an answer is the app's.
func (h *Hook) provision(ctx caddy.Context, name string) error {
	if len(h.URLs) == 0 {
		return fmt.Errorf("%s needs the app's URL", name)
	}
	repl := caddy.NewReplacer()
	for i, raw := range h.URLs {
		u, err := url.Parse(repl.ReplaceKnown(raw, ""))
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return fmt.Errorf("%s: %q is not an http or https URL", name, raw)
		}
		h.URLs[i] = u.String()
	}
	if h.Timeout < 0 {
		return fmt.Errorf("%s: timeout must not be negative", name)
	}
	if h.Timeout == 0 {
		h.Timeout = caddy.Duration(DefaultHookTimeout)
	}
	tr := &http.Transport{
		Proxy:               nil, // the app is reached directly, never through an environment proxy
		DialContext:         (&net.Dialer{Timeout: time.Duration(h.Timeout)}).DialContext,
		MaxIdleConnsPerHost: 64,
		IdleConnTimeout:     90 * time.Second,
		ForceAttemptHTTP2:   true,
	}
	h.client = &http.Client{
		Transport:     tr,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	go func() {
		<-ctx.Done()
		tr.CloseIdleConnections()
	}()
	return nil
}

// hookAnswer is what the app answered.
type hookAnswer struct {
	Status int
	Header http.Header
	Body   []byte
}

// post sends body (JSON) with header to the app, and returns the first
// answer a URL gives. A URL that cannot be reached, or answers 502, 503
// or 504, passes the call to the next; when none answers within the
// timeout the error wraps errHookUnavailable.
func (h *Hook) post(ctx context.Context, body []byte, header http.Header) (hookAnswer, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Duration(h.Timeout))
	defer cancel()
	start := int(h.next.Load())
	var last error
	for i := range h.URLs {
		n := (start + i) % len(h.URLs)
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, h.URLs[n], bytes.NewReader(body))
		if err != nil {
			return hookAnswer{}, err
		}
		for k, v := range header {
			req.Header[k] = v
		}
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("User-Agent", "caddy-push")
		resp, err := h.client.Do(req)
		if err != nil {
			last = err
			if ctx.Err() != nil {
				break
			}
			continue
		}
		data, err := io.ReadAll(io.LimitReader(resp.Body, maxHookAnswer+1))
		resp.Body.Close()
		switch {
		case err != nil:
			last = err
			continue
		case len(data) > maxHookAnswer:
			return hookAnswer{}, fmt.Errorf("the app's answer is larger than %d bytes", maxHookAnswer)
		case resp.StatusCode == http.StatusBadGateway || resp.StatusCode == http.StatusServiceUnavailable || resp.StatusCode == http.StatusGatewayTimeout:
			last = fmt.Errorf("%s answered %d", h.URLs[n], resp.StatusCode)
			continue
		}
		h.next.Store(uint32(n))
		return hookAnswer{Status: resp.StatusCode, Header: resp.Header, Body: data}, nil
	}
	return hookAnswer{}, fmt.Errorf("%w: %v", errHookUnavailable, last)
}

// unmarshalHook reads `<directive> <url...> [{ timeout <d>; <more> }]`:
// the URLs, then a block whose options other than timeout go to more
// (which reports whether it knew the option).
func unmarshalHook(d *caddyfile.Dispenser, h *Hook, more func(opt string) (bool, error)) error {
	name := d.Val()
	h.URLs = d.RemainingArgs()
	if len(h.URLs) == 0 {
		return d.Errf("%s needs the app's URL", name)
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		opt := d.Val()
		if opt == "timeout" {
			if err := parseDuration(d, &h.Timeout); err != nil {
				return err
			}
			continue
		}
		ok := false
		var err error
		if more != nil {
			ok, err = more(opt)
		}
		if err != nil {
			return err
		}
		if !ok {
			return d.Errf("unrecognized %s option '%s'", name, opt)
		}
	}
	return nil
}

// hookReason is the app's reason for a refusal: {"reason": "..."} or its
// plain text, on one line, shortened.
func hookReason(a hookAnswer) string {
	var reason string
	if bytes.HasPrefix(bytes.TrimSpace(a.Body), []byte("{")) {
		var r struct {
			Reason string `json:"reason"`
		}
		if json.Unmarshal(a.Body, &r) == nil {
			reason = r.Reason
		}
	} else {
		reason = string(a.Body)
	}
	reason = strings.Join(strings.Fields(reason), " ")
	if len(reason) > 200 {
		reason = reason[:200]
	}
	if reason == "" {
		reason = http.StatusText(a.Status)
	}
	return reason
}
