package push

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// A hook tries its URLs in turn: one down or answering 503 passes the call
// on; the next call starts with the one that answered; none in time is
// errHookUnavailable.
func TestHookFailover(t *testing.T) {
	down := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	down.Close()
	busy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusServiceUnavailable)
	}))
	defer busy.Close()
	app := startTestApp(t)
	app.handle("/authorize", func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusForbidden)
		_, _ = io.WriteString(w, `{"reason":"not   you"}`)
	})
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-time.After(time.Second):
		}
	}))
	defer slow.Close()

	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	h := &Hook{URLs: []string{down.URL, busy.URL, app.URL + "/authorize"}}
	if err := h.provision(ctx, "authorize"); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		a, err := h.post(context.Background(), []byte(`{"x":1}`), http.Header{"Cookie": {"a=b"}})
		if err != nil || a.Status != 403 || hookReason(a) != "not you" {
			t.Fatalf("got %+v %v", a, err)
		}
	}
	got := app.requests("/authorize")
	if len(got) != 2 {
		t.Fatalf("the app got %d calls, want 2", len(got))
	}
	if r := got[0]; r.Header.Get("Content-Type") != "application/json" || r.Header.Get("Cookie") != "a=b" || string(r.Body) != `{"x":1}` {
		t.Errorf("the app got %v %s", r.Header, r.Body)
	}
	h = &Hook{URLs: []string{slow.URL}, Timeout: caddy.Duration(100 * time.Millisecond)}
	if err := h.provision(ctx, "authorize"); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if _, err := h.post(context.Background(), []byte(`{}`), nil); !errors.Is(err, errHookUnavailable) || time.Since(start) > 2*time.Second {
		t.Errorf("slow app: %v after %v", err, time.Since(start))
	}
	for _, bad := range []string{"ftp://x", "localhost:80", ""} {
		if err := (&Hook{URLs: []string{bad}}).provision(ctx, "authorize"); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestHookCaddyfile(t *testing.T) {
	d := caddyfile.NewTestDispenser("authorize http://a http://b {\n\ttimeout 3s\n\tcache 10s\n}")
	d.Next()
	var h Hook
	var cache caddy.Duration
	err := unmarshalHook(d, &h, func(opt string) (bool, error) {
		if opt == "cache" {
			return true, parseDuration(d, &cache)
		}
		return false, nil
	})
	if err != nil || len(h.URLs) != 2 || h.Timeout != caddy.Duration(3*time.Second) || cache != caddy.Duration(10*time.Second) {
		t.Fatalf("got %v %v %v %v", h.URLs, h.Timeout, cache, err)
	}
	for input, want := range map[string]string{
		"authorize":                       "needs the app's URL",
		"authorize http://a {\n\tnope\n}": "unrecognized authorize option 'nope'",
	} {
		d := caddyfile.NewTestDispenser(input)
		d.Next()
		if err := unmarshalHook(d, &Hook{}, nil); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: %v, want %q", input, err, want)
		}
	}
}
