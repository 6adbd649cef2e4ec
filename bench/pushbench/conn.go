package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// readBufferSize is each connection's read buffer: a few events' worth,
// as 19,000 of them share the machine with the server.
const readBufferSize = 4096

// dialer spreads connections over several loopback source addresses. One
// address has about 28,000 ephemeral ports, and every connection the
// client closes first holds its port in TIME_WAIT for a minute: churn
// alone makes 40,000 in 20 s.
type dialer struct {
	timeout time.Duration
	sources []net.IP
	next    atomic.Uint64

	h2     *http.Transport // -h2: makes each subscriber's connection
	h2Once sync.Once
}

func newDialer(timeout time.Duration, sources int) *dialer {
	d := &dialer{timeout: timeout}
	for i := range sources {
		d.sources = append(d.sources, net.IPv4(127, 0, byte((i+2)>>8), byte(i+2)))
	}
	return d
}

// source is the next source address, nil for the default.
func (d *dialer) source() net.IP {
	if len(d.sources) == 0 {
		return nil
	}
	return d.sources[d.next.Add(1)%uint64(len(d.sources))]
}

func (d *dialer) dial(ctx context.Context, addr string) (net.Conn, error) {
	nd := net.Dialer{Timeout: d.timeout}
	if src := d.source(); src != nil {
		nd.LocalAddr = &net.TCPAddr{IP: src}
		// leave the port to connect(), which only needs the whole
		// 4-tuple to be unique, instead of bind(), which wants the port
		// free on that address for any destination
		nd.Control = func(_, _ string, c syscall.RawConn) error {
			var serr error
			err := c.Control(func(fd uintptr) {
				serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_BIND_ADDRESS_NO_PORT, 1)
			})
			return errors.Join(err, serr)
		}
	}
	return nd.DialContext(ctx, "tcp", addr)
}

// source yields a stream's payloads; a payload is valid until the next call.
type source interface {
	next() ([]byte, error)
}

type sseSource struct{ r *sseReader }

func (s sseSource) next() ([]byte, error) {
	ev, err := s.r.event()
	return ev.Data, err
}

// wsJSONSource takes the payload out of caddy-push's JSON frames.
type wsJSONSource struct{ r *wsReader }

func (s wsJSONSource) next() ([]byte, error) {
	frame, err := s.r.next()
	if err != nil {
		return nil, err
	}
	if data, ok := jsonData(frame); ok {
		return data, nil
	}
	return frame, nil
}

// statusError is an HTTP status other than the one a request needs; it
// is reported as the bare code ("503").
type statusError int

func (e statusError) Error() string { return strconv.Itoa(int(e)) }

// open connects and subscribes to topic; it returns once the stream is
// open (SSE response headers, or the WebSocket handshake, received; for
// Centrifugo, its connect push too). Closing what it returns ends the
// stream and its connection.
func open(ctx context.Context, d *dialer, t *target, transport, topic string) (io.Closer, source, error) {
	ep, err := t.endpoint(t.subURL, topic, true)
	if err != nil {
		return nil, nil, err
	}
	switch t.proto {
	case protoH2:
		return openH2(ctx, d, t, ep, topic)
	case protoH3:
		return openH3(ctx, d, t, ep, topic)
	}
	conn, err := d.dial(ctx, ep.hostport)
	if err != nil {
		return nil, nil, stageError{"dial", err}
	}
	_ = conn.SetDeadline(time.Now().Add(d.timeout))
	if ep.tls {
		// the same raw HTTP/1.1, over TLS
		tc := tls.Client(conn, t.subTLS)
		if err := tc.HandshakeContext(ctx); err != nil {
			conn.Close()
			return nil, nil, stageError{"tls", err}
		}
		conn = tc
	}
	src, err := handshake(conn, ep, transport, t.wrap, topic)
	if err != nil {
		conn.Close()
		return nil, nil, stageError{"handshake", err}
	}
	_ = conn.SetDeadline(time.Time{})
	return conn, src, nil
}

// handshake opens the stream. For Centrifugo it also reads the connect
// push, so that an open stream is a subscribed one, as with the others.
func handshake(conn net.Conn, ep endpoint, transport string, wrap wrapKind, topic string) (source, error) {
	req := "GET " + ep.requestURI + " HTTP/1.1\r\nHost: " + ep.host + "\r\n"
	var accept string
	if transport == "ws" {
		var key string
		key, accept = wsKey()
		req += "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: " + key + "\r\n"
	} else {
		req += "Accept: text/event-stream\r\nCache-Control: no-cache\r\n"
	}
	if _, err := io.WriteString(conn, req+"\r\n"); err != nil {
		return nil, err
	}
	br := bufio.NewReaderSize(conn, readBufferSize)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return nil, err
	}
	if transport == "ws" {
		if resp.StatusCode != http.StatusSwitchingProtocols {
			return nil, statusError(resp.StatusCode)
		}
		if resp.Header.Get("Sec-WebSocket-Accept") != accept {
			return nil, errors.New("bad Sec-WebSocket-Accept")
		}
		r := &wsReader{br: br, conn: conn}
		switch wrap {
		case wrapCaddyPush:
			return wsJSONSource{r}, nil
		case wrapCentrifugo:
			return centrifugoStream(r, topic)
		}
		return r, nil
	}
	if resp.StatusCode != http.StatusOK {
		return nil, statusError(resp.StatusCode)
	}
	src := sseSource{newSSEReader(resp.Body, readBufferSize)}
	if wrap == wrapCentrifugo {
		return centrifugoStream(src, topic)
	}
	return src, nil
}

func centrifugoStream(src source, topic string) (source, error) {
	s := &centrifugoSource{src: src}
	if err := s.connected(topic); err != nil {
		return nil, err
	}
	return s, nil
}

// stageError says where a connection failed: dial, tls or handshake.
type stageError struct {
	stage string
	err   error
}

func (e stageError) Error() string { return e.stage + ": " + e.err.Error() }
func (e stageError) Unwrap() error { return e.err }

// reason files an error under a short, stable name for counting:
// "503", "timeout", "dial: connection refused", "handshake: eof".
func reason(err error) string {
	var status statusError
	var ne net.Error
	var errno syscall.Errno
	var closed wsCloseError
	var disconnect centrifugoDisconnect
	stage := "read"
	var se stageError
	if errors.As(err, &se) {
		stage = se.stage
	}
	switch {
	case errors.As(err, &status):
		return status.Error()
	case errors.As(err, &closed):
		return closed.Error()
	case errors.As(err, &disconnect):
		return disconnect.Error()
	case errors.Is(err, context.Canceled):
		return "canceled"
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return "timeout"
	case errors.As(err, &errno):
		return stage + ": " + errno.Error()
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return stage + ": eof"
	}
	msg := err.Error()
	if errors.As(err, &se) {
		msg = se.err.Error()
	}
	return fmt.Sprintf("%s: %.60s", stage, msg)
}

// reasons counts failures by reason, from many goroutines.
type reasons struct {
	mu sync.Mutex
	m  map[string]int
}

func (r *reasons) add(err error) {
	k := reason(err)
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.m == nil {
		r.m = make(map[string]int)
	}
	r.m[k]++
}

func (r *reasons) snapshot() (map[string]int, int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	m, n := make(map[string]int, len(r.m)), 0
	for k, v := range r.m {
		m[k] = v
		n += v
	}
	return m, n
}
