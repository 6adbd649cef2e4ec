package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// publishTimeout bounds one publish request.
const publishTimeout = 10 * time.Second

type job struct {
	topic int
	seq   uint64
}

// publisher sends events through the publish route over a few keep-alive
// connections, each owned by one worker goroutine; with -pub-ws, over a
// WebSocket per topic, which the workers share.
type publisher struct {
	t      *target
	topics []string
	eps    []endpoint  // per topic
	tls    *tls.Config // for an https:// publish URL
	size   int
	dialer *dialer
	jobs   chan job

	seq      []uint64 // last sequence number per topic; the dispatcher's alone
	next     int      // the topic of the next event, round robin
	inflight sync.WaitGroup
	workers  sync.WaitGroup

	ws      []wsPub // per topic, with -pub-ws
	readers sync.WaitGroup

	mu     sync.Mutex
	acked  []bitmap // per topic: publishes the server answered 2xx
	ackedN []int

	sent     atomic.Int64
	ok       atomic.Int64
	failures reasons
	rtt      atomicHist
}

func newPublisher(t *target, topics []string, size, conns int, timeout time.Duration) (*publisher, error) {
	p := &publisher{
		t: t, topics: topics, size: size,
		dialer: newDialer(timeout, 0),
		jobs:   make(chan job),
		seq:    make([]uint64, len(topics)),
		acked:  make([]bitmap, len(topics)),
		ackedN: make([]int, len(topics)),
	}
	for _, topic := range topics {
		ep, err := t.endpoint(t.pubURL, topic, true)
		if err != nil {
			return nil, err
		}
		p.eps = append(p.eps, ep)
		if ep.tls {
			p.tls = tlsConfig(ep, "http/1.1")
		}
	}
	if t.pubWS {
		p.ws = make([]wsPub, len(topics))
	}
	for range conns {
		p.workers.Go(p.work)
	}
	return p, nil
}

// run publishes at rate per second for d, spread round robin over the
// topics, and returns when every request has been answered or has failed.
// The publisher keeps at most one request in flight per connection, so a
// server that answers slowly gets fewer publishes, not a pile of them;
// what was not sent by the end of d is not sent.
func (p *publisher) run(ctx context.Context, rate float64, d time.Duration) {
	ctx, cancel := context.WithTimeout(ctx, d+10*time.Millisecond)
	defer cancel()
	pace(ctx, rate, int(rate*d.Seconds()), func(int) {
		if ctx.Err() != nil {
			return
		}
		p.inflight.Add(1)
		select {
		case p.jobs <- job{p.next, p.seq[p.next] + 1}:
			p.seq[p.next]++
			p.next = (p.next + 1) % len(p.topics)
		case <-ctx.Done():
			p.inflight.Done()
		}
	})
	p.inflight.Wait()
}

func (p *publisher) close() {
	close(p.jobs)
	p.workers.Wait()
	for i := range p.ws {
		if c := p.ws[i].conn; c != nil {
			c.Close()
		}
	}
	p.readers.Wait()
}

// snapshot returns the acknowledged publishes, per topic.
func (p *publisher) snapshot() (acked []bitmap, n []int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for i := range p.acked {
		acked = append(acked, append(bitmap(nil), p.acked[i]...))
	}
	return acked, append([]int(nil), p.ackedN...)
}

func (p *publisher) work() {
	var c *pubConn
	for j := range p.jobs {
		var err error
		if p.ws != nil {
			err = p.publishWS(j)
		} else {
			c, err = p.publish(c, j)
		}
		p.sent.Add(1)
		if err != nil {
			p.failures.add(err)
		} else {
			p.ok.Add(1)
			p.mu.Lock()
			p.acked[j.topic].set(j.seq)
			p.ackedN[j.topic]++
			p.mu.Unlock()
		}
		p.inflight.Done()
	}
	if c != nil {
		c.conn.Close()
	}
}

// pubConn is one keep-alive connection with its reusable buffers.
type pubConn struct {
	conn      net.Conn
	br        *bufio.Reader
	req, body []byte
	answer    bytes.Buffer
}

// publish sends job j over c, dialling first if c is nil, and returns the
// connection to use next (nil after an error or a Connection: close).
func (p *publisher) publish(c *pubConn, j job) (*pubConn, error) {
	ep := p.eps[j.topic]
	if c == nil {
		conn, err := p.dial(ep)
		if err != nil {
			return nil, err
		}
		c = &pubConn{conn: conn, br: bufio.NewReaderSize(conn, readBufferSize)}
	}
	start := time.Now()
	c.request(p.t, ep, p.topics[j.topic], j.seq, start.UnixNano(), p.size)
	_ = c.conn.SetDeadline(start.Add(publishTimeout))
	keep, err := c.roundTrip(p.t.mercure)
	if err != nil || !keep {
		c.conn.Close()
		c = nil
	}
	if err == nil {
		p.rtt.Record(int64(time.Since(start)))
	}
	return c, err
}

// dial connects to ep, over TLS for https:// and wss://.
func (p *publisher) dial(ep endpoint) (net.Conn, error) {
	conn, err := p.dialer.dial(context.Background(), ep.hostport)
	if err != nil {
		return nil, stageError{"dial", err}
	}
	if ep.tls {
		tc := tls.Client(conn, p.tls)
		_ = conn.SetDeadline(time.Now().Add(publishTimeout))
		if err := tc.Handshake(); err != nil {
			conn.Close()
			return nil, stageError{"tls", err}
		}
		conn = tc
	}
	return conn, nil
}

// wsPub is one topic's WebSocket publishing connection, with its
// reusable buffers.
type wsPub struct {
	mu          sync.Mutex
	conn        net.Conn
	body, frame []byte
}

// publishWS sends job j as one text message on its topic's WebSocket,
// opening it first if it is not open. A WebSocket publish has no answer
// to wait for (caddy-push answers only a refused message, with an error
// frame; nchan answers each with the channel's state, which tells no more
// than an HTTP 2xx would), so a message written is a message published,
// and an error frame counts as a failure besides.
func (p *publisher) publishWS(j job) error {
	c := &p.ws[j.topic]
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.conn == nil {
		conn, err := p.openWS(p.eps[j.topic], p.topics[j.topic])
		if err != nil {
			return err
		}
		c.conn = conn
	}
	start := time.Now()
	c.body = appendPayload(c.body[:0], j.seq, start.UnixNano(), p.size, ' ')
	c.frame = appendClientText(c.frame[:0], c.body)
	_ = c.conn.SetWriteDeadline(start.Add(publishTimeout))
	if _, err := c.conn.Write(c.frame); err != nil {
		c.conn.Close()
		c.conn = nil
		return err
	}
	return nil
}

// openWS opens a publishing WebSocket to ep, and a goroutine that reads
// what the server sends on it until it closes.
func (p *publisher) openWS(ep endpoint, topic string) (net.Conn, error) {
	conn, err := p.dial(ep)
	if err != nil {
		return nil, err
	}
	_ = conn.SetDeadline(time.Now().Add(publishTimeout))
	src, err := handshake(conn, ep, "ws", wrapNone, topic)
	if err != nil {
		conn.Close()
		return nil, stageError{"handshake", err}
	}
	_ = conn.SetDeadline(time.Time{})
	p.readers.Go(func() {
		for {
			msg, err := src.next()
			if err != nil {
				return
			}
			if bytes.HasPrefix(msg, []byte(`{"error"`)) {
				p.failures.add(fmt.Errorf("%s", msg))
			}
		}
	})
	return conn, nil
}

// appendClientText appends payload as one text frame from a client. A
// client's frames must be masked; a zero mask leaves the payload as it
// is.
func appendClientText(b, payload []byte) []byte {
	n := len(payload)
	switch {
	case n < 126:
		b = append(b, 0x81, 0x80|byte(n))
	case n <= 0xffff:
		b = append(b, 0x81, 0x80|126, byte(n>>8), byte(n))
	default:
		b = append(b, 0x81, 0x80|127)
		b = binary.BigEndian.AppendUint64(b, uint64(n))
	}
	return append(append(b, 0, 0, 0, 0), payload...)
}

func (c *pubConn) request(t *target, ep endpoint, topic string, seq uint64, nanos int64, size int) {
	ctype := "text/plain"
	switch t.pubBody {
	case bodyForm:
		ctype = "application/x-www-form-urlencoded"
		c.body = append(append(append(c.body[:0], "topic="...), url.QueryEscape(topic)...), "&data="...)
		c.body = appendPayload(c.body, seq, nanos, size, '+')
	case bodyJSON:
		// the payload needs no escaping in a JSON string
		ctype = "application/json"
		c.body = appendJSONString(append(c.body[:0], `{"channel":`...), topic)
		c.body = append(appendPayload(append(c.body, `,"data":"`...), seq, nanos, size, ' '), `"}`...)
	default:
		c.body = appendPayload(c.body[:0], seq, nanos, size, ' ')
	}
	b := append(c.req[:0], "POST "...)
	b = append(b, ep.requestURI...)
	b = append(b, " HTTP/1.1\r\nHost: "...)
	b = append(b, ep.host...)
	b = append(b, "\r\nContent-Type: "...)
	b = append(b, ctype...)
	b = append(b, "\r\nContent-Length: "...)
	b = strconv.AppendInt(b, int64(len(c.body)), 10)
	if t.header != "" {
		b = append(b, "\r\n"...)
		b = append(b, t.header...)
	}
	if t.bearer != "" {
		b = append(b, "\r\nAuthorization: Bearer "...)
		b = append(b, t.bearer...)
	}
	b = append(b, "\r\n\r\n"...)
	c.req = append(b, c.body...)
}

// errNoID is a Mercure publish answered 2xx without the event's id.
var errNoID = errors.New("publish answered no id")

// roundTrip writes the request and reads the answer; keep is whether the
// connection may carry the next one. With needID, a 2xx answer must have
// the event's id as its body, as a Mercure hub's does.
func (c *pubConn) roundTrip(needID bool) (keep bool, err error) {
	if _, err := c.conn.Write(c.req); err != nil {
		return false, err
	}
	resp, err := http.ReadResponse(c.br, nil)
	if err != nil {
		return false, err
	}
	c.answer.Reset()
	_, err = c.answer.ReadFrom(resp.Body)
	resp.Body.Close()
	if err != nil {
		return false, err
	}
	if resp.StatusCode/100 != 2 {
		return !resp.Close, statusError(resp.StatusCode)
	}
	if needID && len(bytes.TrimSpace(c.answer.Bytes())) == 0 {
		return !resp.Close, errNoID
	}
	return !resp.Close, nil
}
