package push

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
)

// testApp is a small HTTP app, as the backend of a site would be: the
// hooks' tests start one on loopback and program its answers per path.
// It records every request it gets.
type testApp struct {
	*httptest.Server
	mu     sync.Mutex
	routes map[string]http.HandlerFunc
	seen   map[string][]appRequest
}

// appRequest is a request the app got.
type appRequest struct {
	Header http.Header
	Body   []byte
}

// startTestApp starts an app that answers 404 until a path is handled.
func startTestApp(t testing.TB) *testApp {
	t.Helper()
	a := &testApp{routes: make(map[string]http.HandlerFunc), seen: make(map[string][]appRequest)}
	a.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		a.mu.Lock()
		a.seen[r.URL.Path] = append(a.seen[r.URL.Path], appRequest{Header: r.Header.Clone(), Body: body})
		h := a.routes[r.URL.Path]
		a.mu.Unlock()
		if h == nil {
			http.NotFound(w, r)
			return
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
		h(w, r)
	}))
	t.Cleanup(a.Close)
	return a
}

// handle sets how the app answers path.
func (a *testApp) handle(path string, h http.HandlerFunc) {
	a.mu.Lock()
	a.routes[path] = h
	a.mu.Unlock()
}

// requests returns what the app got on path so far.
func (a *testApp) requests(path string) []appRequest {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]appRequest(nil), a.seen[path]...)
}
