package push

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	_ "github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	_ "github.com/caddyserver/caddy/v2/modules/standard"

	"github.com/caddy-push/push/internal/testport"
)

func TestMain(m *testing.M) {
	if err := checkTestProto(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	if testOverTLS() {
		testClient = newSharedTestClient()
	}
	// cut stalled test clients off quickly; set before any server starts
	writeTimeoutSet.Store(int64(500 * time.Millisecond))
	code := m.Run()
	removeTestStorage()
	os.Exit(code)
}

// freePort is a port free for TCP and UDP: an HTTPS site also listens
// for HTTP/3 on it.
func freePort(t testing.TB) string { return testport.Free(t, true) }

// adapt turns a Caddyfile into Caddy's JSON config.
func adapt(t testing.TB, caddyfile string) []byte {
	t.Helper()
	cfg, warnings, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(caddyfile), nil)
	if err != nil {
		t.Fatalf("adapting Caddyfile: %v\n%s", err, caddyfile)
	}
	for _, w := range warnings {
		t.Logf("adapt warning: %s", w.String())
	}
	return cfg
}

// testCaddy is a real Caddy running in this process on loopback.
type testCaddy struct {
	t    testing.TB
	port string
	// URL is the base URL of the site, e.g. http://127.0.0.1:1234, or
	// https://127.0.0.1:1234 in the h2 and h3 test modes.
	URL string
	// admin is the admin endpoint's address; empty: admin off.
	admin string
}

// startCaddy loads a Caddyfile whose site address may use PORT, with
// the admin endpoint off, and stops Caddy when the test ends. In the h2
// and h3 test modes a site at http://127.0.0.1:PORT is served over HTTPS
// (see siteForTestProto). The
// default grace period (eternal) is kept on purpose: streams must still
// end promptly.
func startCaddy(t testing.TB, site string) *testCaddy {
	t.Helper()
	c := &testCaddy{t: t, port: freePort(t)}
	c.URL = "http://127.0.0.1:" + c.port
	if testOverTLS() {
		c.URL = "https://127.0.0.1:" + c.port
	}
	c.Load(site)
	t.Cleanup(func() {
		done := make(chan error, 1)
		go func() { done <- caddy.Stop() }()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("stopping caddy: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Errorf("caddy.Stop did not return within 10s")
		}
	})
	return c
}

// Load (re)loads the config, as `caddy reload` does.
func (c *testCaddy) Load(site string) {
	c.t.Helper()
	cf, tlsGlobals := siteForTestProto(strings.TrimSpace(site))
	cf = strings.ReplaceAll(cf, "PORT", c.port)
	admin := "off"
	if c.admin != "" {
		admin = c.admin
	}
	globals := "\n\tadmin " + admin + "\n\tpersist_config off\n" + tlsGlobals
	if strings.HasPrefix(cf, "{") {
		cf = "{" + globals + cf[1:]
	} else {
		cf = "{" + globals + "}\n" + cf
	}
	if err := caddy.Load(adapt(c.t, cf), true); err != nil {
		c.t.Fatalf("loading config: %v", err)
	}
	// the old server closes its idle connections, and the client would
	// not retry a POST on one; and while the listener passes from the old
	// server to the new, a new connection may be reset: wait until new
	// connections are served (over TLS, until the internal CA has issued
	// the site's certificate). A site at another address than c.URL
	// (startTLSCaddy's) waits for itself.
	testClient.CloseIdleConnections()
	if !strings.Contains(cf, c.URL) {
		return
	}
	for ok, deadline := 0, time.Now().Add(5*time.Second); ok < 3 && time.Now().Before(deadline); {
		if err := probe(c.URL + "/"); err == nil {
			ok++
		} else {
			ok = 0
			time.Sleep(10 * time.Millisecond)
		}
	}
}

// publish posts a form and returns the status and body.
func (c *testCaddy) publish(path string, form string) (int, string) {
	c.t.Helper()
	return c.post(path, "application/x-www-form-urlencoded", form)
}

func (c *testCaddy) post(path, contentType, body string) (int, string) {
	c.t.Helper()
	req, _ := http.NewRequest(http.MethodPost, c.URL+path, strings.NewReader(body))
	req.Header.Set("Content-Type", contentType)
	return do(c.t, req)
}

func do(t testing.TB, req *http.Request) (int, string) {
	t.Helper()
	resp, err := testClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", req.Method, req.URL, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// sseEvent is one dispatched event, as a browser's EventSource sees it.
type sseEvent struct {
	ID    string // the last event ID after this event
	Type  string
	Data  string
	Retry int // the reconnection time in force, ms; 0 if never set
}

// sseItem is anything a stream carries: an event, a comment, a retry
// field or an id-only dispatch.
type sseItem struct {
	Event   *sseEvent
	Comment string
	Retry   int    // set when a retry field was read
	ID      string // set when an id field was read
}

// parseSSE reads a text/event-stream as the WHATWG HTML standard says:
// lines end in CRLF, LF or CR; a leading BOM is skipped; comments start
// with ':'; one space after the colon is dropped; a blank line dispatches
// an event when its data buffer is not empty; an id holding NUL is
// ignored; retry takes ASCII digits only.
func parseSSE(r io.Reader, emit func(sseItem) bool) error {
	br := bufio.NewReader(r)
	var (
		data, typ strings.Builder
		hasData   bool
		retry     int
		first     = true
		lastIDStr string
	)
	for {
		line, err := readSSELine(br)
		if err != nil {
			return err
		}
		if first {
			line = strings.TrimPrefix(line, "\uFEFF")
			first = false
		}
		if line == "" {
			// dispatch
			if hasData {
				d := data.String()
				d = strings.TrimSuffix(d, "\n")
				t := typ.String()
				if t == "" {
					t = "message"
				}
				if !emit(sseItem{Event: &sseEvent{ID: lastIDStr, Type: t, Data: d, Retry: retry}}) {
					return nil
				}
			}
			data.Reset()
			typ.Reset()
			hasData = false
			continue
		}
		if line[0] == ':' {
			if !emit(sseItem{Comment: strings.TrimPrefix(line[1:], " ")}) {
				return nil
			}
			continue
		}
		name, value, _ := strings.Cut(line, ":")
		value = strings.TrimPrefix(value, " ")
		switch name {
		case "data":
			data.WriteString(value)
			data.WriteByte('\n')
			hasData = true
		case "event":
			typ.Reset()
			typ.WriteString(value)
		case "id":
			if !strings.ContainsRune(value, 0) {
				lastIDStr = value
				if !emit(sseItem{ID: value}) {
					return nil
				}
			}
		case "retry":
			if n, err := strconv.Atoi(value); err == nil && value != "" && strings.Trim(value, "0123456789") == "" {
				retry = n
				if !emit(sseItem{Retry: n}) {
					return nil
				}
			}
		}
	}
}

// readSSELine reads up to CRLF, LF or CR, without the terminator.
func readSSELine(br *bufio.Reader) (string, error) {
	var b strings.Builder
	for {
		c, err := br.ReadByte()
		if err != nil {
			if err == io.EOF && b.Len() > 0 {
				// an unterminated last line is discarded, as the standard says
				return "", io.EOF
			}
			return "", err
		}
		switch c {
		case '\n':
			return b.String(), nil
		case '\r':
			if next, err := br.Peek(1); err == nil && next[0] == '\n' {
				_, _ = br.ReadByte()
			}
			return b.String(), nil
		}
		b.WriteByte(c)
	}
}

// sseClient is an open event stream read in the background.
type sseClient struct {
	t      testing.TB
	Resp   *http.Response
	items  chan sseItem
	done   chan error
	cancel context.CancelFunc
}

// subscribe opens an event stream; header may set Last-Event-ID etc.
func subscribe(t testing.TB, url string, header http.Header) *sseClient {
	t.Helper()
	return subscribeWith(t, testClient, url, header)
}

func subscribeWith(t testing.TB, client *http.Client, url string, header http.Header) *sseClient {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := client.Do(req)
	if err != nil {
		cancel()
		t.Fatalf("GET %s: %v", url, err)
	}
	c := &sseClient{t: t, Resp: resp, items: make(chan sseItem, 10000), done: make(chan error, 1), cancel: cancel}
	t.Cleanup(c.Close)
	if resp.StatusCode != http.StatusOK {
		return c
	}
	go func() {
		defer close(c.items)
		c.done <- parseSSE(resp.Body, func(it sseItem) bool {
			c.items <- it
			return true
		})
	}()
	return c
}

// Close ends the stream from the client side.
func (c *sseClient) Close() {
	c.cancel()
	c.Resp.Body.Close()
}

// next returns the next item, failing the test after timeout.
func (c *sseClient) next(timeout time.Duration) (sseItem, bool) {
	c.t.Helper()
	select {
	case it, ok := <-c.items:
		return it, ok
	case <-time.After(timeout):
		c.t.Fatalf("no SSE item within %v", timeout)
		return sseItem{}, false
	}
}

// nextEvent skips comments, retry and id lines up to the next event.
func (c *sseClient) nextEvent(timeout time.Duration) sseEvent {
	c.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		it, ok := c.next(time.Until(deadline))
		if !ok {
			c.t.Fatalf("stream ended while waiting for an event")
		}
		if it.Event != nil {
			return *it.Event
		}
	}
}

// events collects n events.
func (c *sseClient) events(n int, timeout time.Duration) []sseEvent {
	c.t.Helper()
	out := make([]sseEvent, 0, n)
	deadline := time.Now().Add(timeout)
	for len(out) < n {
		out = append(out, c.nextEvent(time.Until(deadline)))
	}
	return out
}

// ended waits for the server to end the stream and returns everything
// it sent meanwhile.
func (c *sseClient) ended(timeout time.Duration) []sseItem {
	c.t.Helper()
	var items []sseItem
	deadline := time.After(timeout)
	for {
		select {
		case it, ok := <-c.items:
			if !ok {
				return items
			}
			items = append(items, it)
		case <-deadline:
			c.t.Fatalf("stream did not end within %v", timeout)
			return items
		}
	}
}

// quiet asserts no event arrives for d.
func (c *sseClient) quiet(d time.Duration) {
	c.t.Helper()
	deadline := time.After(d)
	for {
		select {
		case it, ok := <-c.items:
			if !ok {
				return
			}
			if it.Event != nil {
				c.t.Fatalf("unexpected event %+v", *it.Event)
			}
		case <-deadline:
			return
		}
	}
}

// caddyValidate provisions a config without running it, as `caddy
// validate` does.
func caddyValidate(cfgJSON []byte) error {
	var cfg caddy.Config
	if err := json.Unmarshal(cfgJSON, &cfg); err != nil {
		return err
	}
	return caddy.Validate(&cfg)
}

// pacedFlood publishes n events of size bytes to topic on the default hub
// through the Go API, never more than window ahead of a fast client:
// receive(i) returns once that client has event i. A slow client of the
// topic falls behind while the fast one keeps up.
func pacedFlood(t testing.TB, topic string, n, size, window int, receive func(i int)) {
	t.Helper()
	hub, _ := LookupHub("default")
	data := strings.Repeat("x", size)
	received := make(chan int, n)
	go func() {
		got := 0
		for i := range n {
			for ; got < i-window; got = <-received {
			}
			if _, err := hub.Publish(context.Background(), Message{Topics: []string{topic}, Data: data}); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	for i := range n {
		receive(i)
		received <- i
	}
}
