package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
)

// Subscribers over HTTP/2 and HTTP/3 (-h2, -h3): an SSE stream each, on a
// connection of its own, as each visitor's browser has its own. They go
// through Go's HTTP/2 client and quic-go's HTTP/3 client, which cost more
// per connection than the raw HTTP/1.1 reader: the price of not writing
// two more protocols here.

// h2Transport makes the -h2 connections: each NewClientConn dials a new
// one (through d, so that it spreads over the source addresses) and keeps
// it out of any pool.
func (d *dialer) h2Transport(conf *tls.Config) *http.Transport {
	d.h2Once.Do(func() {
		var protocols http.Protocols
		protocols.SetHTTP2(true)
		d.h2 = &http.Transport{
			DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) {
				return d.dial(ctx, addr)
			},
			TLSClientConfig:     conf,
			TLSHandshakeTimeout: d.timeout,
			Protocols:           &protocols,
			DisableCompression:  true,
		}
	})
	return d.h2
}

func openH2(ctx context.Context, d *dialer, t *target, ep endpoint, topic string) (io.Closer, source, error) {
	dctx, cancel := context.WithTimeout(ctx, d.timeout)
	defer cancel()
	// the context bounds the dial and the TLS handshake, not the connection
	cc, err := d.h2Transport(t.subTLS).NewClientConn(dctx, "https", ep.hostport)
	if err != nil {
		return nil, nil, stageError{"dial", err}
	}
	src, body, err := sseStream(cc, func() { cc.Close() }, ep, 2, t.wrap, topic, d.timeout)
	if err != nil {
		cc.Close()
		return nil, nil, stageError{"handshake", err}
	}
	return &stream{body: body, conn: cc}, src, nil
}

// h3Transport only holds the settings of the -h3 client connections: each
// runs on a QUIC connection openH3 dials.
var h3Transport = &http3.Transport{DisableCompression: true}

// h3QUIC is http3's own client default: no streams from the server but
// its control streams, and a PING every 10 s so that a quiet stream's
// connection does not time out.
var h3QUIC = &quic.Config{MaxIncomingStreams: -1, KeepAlivePeriod: 10 * time.Second}

// h3Conn is one subscriber's QUIC connection and its UDP socket.
type h3Conn struct {
	qc   *quic.Conn
	udp  *net.UDPConn
	once sync.Once
}

func (c *h3Conn) Close() error {
	c.once.Do(func() {
		c.qc.CloseWithError(0, "")
		c.udp.Close()
	})
	return nil
}

func openH3(ctx context.Context, d *dialer, t *target, ep endpoint, topic string) (io.Closer, source, error) {
	raddr, err := net.ResolveUDPAddr("udp", ep.hostport)
	if err != nil {
		return nil, nil, stageError{"dial", err}
	}
	// a socket each, as each browser has: one address and port, one
	// connection
	var laddr *net.UDPAddr
	if src := d.source(); src != nil {
		laddr = &net.UDPAddr{IP: src}
	}
	udp, err := net.ListenUDP("udp", laddr)
	if err != nil {
		return nil, nil, stageError{"dial", err}
	}
	dctx, cancel := context.WithTimeout(ctx, d.timeout)
	defer cancel()
	// the context bounds the handshake, not the connection
	qc, err := quic.Dial(dctx, udp, raddr, t.subTLS, h3QUIC)
	if err != nil {
		udp.Close()
		return nil, nil, stageError{"dial", err}
	}
	c := &h3Conn{qc: qc, udp: udp}
	src, body, err := sseStream(h3Transport.NewClientConn(qc), func() { c.Close() }, ep, 3, t.wrap, topic, d.timeout)
	if err != nil {
		c.Close()
		return nil, nil, stageError{"handshake", err}
	}
	return &stream{body: body, conn: c}, src, nil
}

// stream is an SSE stream on a connection of its own. Closing it closes
// the response body first, which ends what the client keeps for the
// request (quic-go's http3 has a goroutine until then), then the
// connection.
type stream struct {
	body, conn io.Closer
}

func (s *stream) Close() error {
	s.body.Close()
	return s.conn.Close()
}

// sseStream sends the SSE request on rt, a single connection, and returns
// the stream and its response body once the response headers are in (for
// Centrifugo, its connect push too). If that takes longer than timeout it
// calls abort, which closes the connection.
func sseStream(rt http.RoundTripper, abort func(), ep endpoint, major int, wrap wrapKind, topic string, timeout time.Duration) (source, io.Closer, error) {
	req, err := http.NewRequest(http.MethodGet, ep.url, nil)
	if err != nil {
		return nil, nil, err
	}
	req.Header.Set("Accept", "text/event-stream")
	req.Header.Set("Cache-Control", "no-cache")
	timer := time.AfterFunc(timeout, abort)
	resp, err := rt.RoundTrip(req)
	var src source
	if err == nil {
		src, err = sseBody(resp, major, wrap, topic)
		if err != nil {
			resp.Body.Close()
		}
	}
	if !timer.Stop() {
		// the connection was closed under it: report the timeout
		if err == nil {
			resp.Body.Close()
		}
		err = os.ErrDeadlineExceeded
	}
	if err != nil {
		return nil, nil, err
	}
	return src, resp.Body, nil
}

func sseBody(resp *http.Response, major int, wrap wrapKind, topic string) (source, error) {
	if resp.ProtoMajor != major {
		return nil, fmt.Errorf("answered in %s, not HTTP/%d", resp.Proto, major)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, statusError(resp.StatusCode)
	}
	var src source = sseSource{newSSEReader(resp.Body, readBufferSize)}
	if wrap == wrapCentrifugo {
		return centrifugoStream(src, topic)
	}
	return src, nil
}
