package push

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"os"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/gorilla/websocket"
	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
)

// The integration tests reach their Caddy over the path that
// CADDY_PUSH_TEST_PROTO names:
//
//	h1 (or unset)  cleartext HTTP/1.1, where the connection engine owns the streams
//	h2             HTTPS with tls internal: SSE and publish over HTTP/2
//	h3             HTTPS with tls internal: SSE and publish over HTTP/3
//
// Over h2 and h3 a WebSocket is an HTTP/1.1 upgrade over TLS: neither Go's
// client nor Caddy speaks RFC 8441 (WebSocket over HTTP/2).
var testProto = os.Getenv("CADDY_PUSH_TEST_PROTO")

// checkTestProto reports an unknown CADDY_PUSH_TEST_PROTO.
func checkTestProto() error {
	switch testProto {
	case "", "h1":
		testProto = "h1"
		return nil
	case "h2", "h3":
		return nil
	}
	return fmt.Errorf("CADDY_PUSH_TEST_PROTO=%q: want h1, h2 or h3", testProto)
}

// testOverTLS says whether the test sites are served over HTTPS.
func testOverTLS() bool { return testProto != "h1" }

// testClient is the client of the harness (do, subscribe, publish). Over
// cleartext it is http.DefaultClient, as it always was.
var testClient = http.DefaultClient

// testTLSConfig trusts the test's own Caddy, whose internal CA is made
// afresh for each run, on loopback.
func testTLSConfig() *tls.Config {
	return &tls.Config{InsecureSkipVerify: true}
}

// newTestClient returns a client with connections of its own that speaks
// the test mode's protocol, and only that: over h2 and h3 a response over
// any other protocol is an error, so a mode cannot silently fall back.
// Over h3 it opens a connection for every 90 open requests (see h3Conns).
func newTestClient() *http.Client {
	switch testProto {
	case "h2":
		var only http.Protocols
		only.SetHTTP2(true)
		return &http.Client{Transport: protocolCheck{major: 2, rt: &http.Transport{
			TLSClientConfig:     testTLSConfig(),
			Protocols:           &only,
			MaxIdleConnsPerHost: 1000,
		}}}
	case "h3":
		return &http.Client{Transport: protocolCheck{major: 3, rt: &h3Conns{}}}
	}
	return &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 1000}}
}

// newSharedTestClient returns the harness's client: newTestClient's, but
// over h3 one connection that all its requests share, as a browser's.
func newSharedTestClient() *http.Client {
	if testProto == "h3" {
		return &http.Client{Transport: protocolCheck{major: 3, rt: &http3.Transport{
			TLSClientConfig: testTLSConfig(),
		}}}
	}
	return newTestClient()
}

// h3Conns spreads requests over QUIC connections of its own, opening
// another when each of them carries streamsPerH3Conn open requests.
// quic-go's http3.Transport keeps one connection per host, and a server's
// connection takes 100 streams at once (quic-go's default, which Caddy
// keeps): a test that holds open more streams than that would wait
// forever for the 101st.
type h3Conns struct {
	quic  *quic.Config
	mu    sync.Mutex // held while dialing too, so waiting requests share the new connection
	conns map[*h3Conn]struct{}
}

const streamsPerH3Conn = 90

// h3Conn is one of h3Conns' connections.
type h3Conn struct {
	addr string
	qc   *quic.Conn
	cc   *http3.ClientConn
	open int // requests whose responses are not closed yet
}

func (h *h3Conns) RoundTrip(r *http.Request) (*http.Response, error) {
	c, err := h.take(r.Context(), r.URL.Host)
	if err != nil {
		return nil, err
	}
	release := sync.OnceFunc(func() { h.release(c) })
	stop := context.AfterFunc(r.Context(), release)
	resp, err := c.cc.RoundTrip(r)
	if err != nil {
		stop()
		release()
		return nil, err
	}
	resp.Body = bodyThen{ReadCloser: resp.Body, then: func() { stop(); release() }}
	return resp, nil
}

// take returns a connection to addr with room for one more request.
func (h *h3Conns) take(ctx context.Context, addr string) (*h3Conn, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for c := range h.conns {
		if c.addr == addr && c.open < streamsPerH3Conn && c.qc.Context().Err() == nil {
			c.open++
			return c, nil
		}
	}
	conf := testTLSConfig()
	conf.NextProtos = []string{http3.NextProtoH3}
	qc, err := quic.DialAddr(ctx, addr, conf, h.quic)
	if err != nil {
		return nil, err
	}
	c := &h3Conn{addr: addr, qc: qc, cc: (&http3.Transport{}).NewClientConn(qc), open: 1}
	if h.conns == nil {
		h.conns = map[*h3Conn]struct{}{}
	}
	h.conns[c] = struct{}{}
	return c, nil
}

func (h *h3Conns) release(c *h3Conn) {
	h.mu.Lock()
	c.open--
	h.mu.Unlock()
}

// CloseIdleConnections closes the connections that carry no request.
func (h *h3Conns) CloseIdleConnections() {
	h.mu.Lock()
	defer h.mu.Unlock()
	for c := range h.conns {
		if c.open == 0 {
			c.qc.CloseWithError(0, "")
			delete(h.conns, c)
		}
	}
}

// bodyThen runs then once the body is closed.
type bodyThen struct {
	io.ReadCloser
	then func()
}

func (b bodyThen) Close() error {
	err := b.ReadCloser.Close()
	b.then()
	return err
}

// protocolCheck fails a response that did not come over HTTP/major.
type protocolCheck struct {
	major int
	rt    http.RoundTripper
}

func (p protocolCheck) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := p.rt.RoundTrip(r)
	if err == nil && resp.ProtoMajor != p.major {
		resp.Body.Close()
		return nil, fmt.Errorf("answered over %s in the %s test mode, want HTTP/%d", resp.Proto, testProto, p.major)
	}
	return resp, err
}

// CloseIdleConnections closes the idle connections, but not those of an
// http3.Transport: quic-go counts a connection whose requests have their
// headers as idle, and would close it under the open streams.
func (p protocolCheck) CloseIdleConnections() {
	switch rt := p.rt.(type) {
	case *http.Transport:
		rt.CloseIdleConnections()
	case *h3Conns:
		rt.CloseIdleConnections()
	}
}

// newStalledClient is newTestClient for a client that will not read: the
// flow control of h2 and h3 lets only 64 KiB of unread data in before the
// server's writes wait.
func newStalledClient() *http.Client {
	const window = 64 << 10
	c := newTestClient()
	switch rt := c.Transport.(protocolCheck).rt.(type) {
	case *http.Transport:
		rt.HTTP2 = &http.HTTP2Config{MaxReceiveBufferPerConnection: window, MaxReceiveBufferPerStream: window}
	case *h3Conns:
		rt.quic = &quic.Config{
			InitialStreamReceiveWindow:     window,
			MaxStreamReceiveWindow:         window,
			InitialConnectionReceiveWindow: window,
			MaxConnectionReceiveWindow:     window,
		}
	}
	return c
}

// probe GETs url once on a connection of its own.
func probe(url string) error {
	c := newTestClient()
	c.Timeout = time.Second
	defer c.CloseIdleConnections()
	resp, err := c.Get(url)
	if err != nil {
		return err
	}
	resp.Body.Close()
	return nil
}

// wsDialer dials the test sites: over TLS in the h2 and h3 modes.
func wsDialer() *websocket.Dialer {
	d := *websocket.DefaultDialer
	if testOverTLS() {
		d.TLSClientConfig = testTLSConfig()
	}
	return &d
}

// wsURL turns a site's http(s) URL into its ws(s) URL.
func wsURL(url string) string {
	if rest, ok := strings.CutPrefix(url, "https://"); ok {
		return "wss://" + rest
	}
	return strings.Replace(url, "http://", "ws://", 1)
}

// cleartextSite is a test site's address line, as every test writes it.
var cleartextSite = regexp.MustCompile(`(?m)^http://127\.0\.0\.1:PORT \{$`)

// siteForTestProto serves a test Caddyfile's cleartext site over HTTPS
// with Caddy's internal CA in the h2 and h3 modes. It returns the
// Caddyfile and the global options that go with it.
func siteForTestProto(cf string) (string, string) {
	if !testOverTLS() || !cleartextSite.MatchString(cf) {
		return cf, ""
	}
	cf = cleartextSite.ReplaceAllLiteralString(cf, "https://127.0.0.1:PORT {\n\ttls internal")
	protocols := "h1 h2"
	if testProto == "h3" {
		protocols = "h1 h2 h3"
	}
	// nothing touches the system's trust store, the certificates live in
	// this run's directory, and no redirect server claims port 80
	return cf, "\tlocal_certs\n\tskip_install_trust\n\tstorage file_system " + testStorage() + "\n" +
		"\tauto_https disable_redirects\n\tservers {\n\t\tprotocols " + protocols + "\n\t}\n"
}

var (
	testStorageOnce sync.Once
	testStorageDir  string
)

// testStorage is this run's certificate storage: the internal CA is made
// once and serves every test.
func testStorage() string {
	testStorageOnce.Do(func() {
		dir, err := os.MkdirTemp("", "push-test-tls-")
		if err != nil {
			panic(err)
		}
		testStorageDir = dir
	})
	return testStorageDir
}

// removeTestStorage removes the run's certificate storage, if any.
func removeTestStorage() {
	if testStorageDir != "" {
		os.RemoveAll(testStorageDir)
	}
}
