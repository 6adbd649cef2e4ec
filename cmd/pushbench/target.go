package main

import (
	"fmt"
	"net"
	"net/url"
	"os"
	"strings"
)

// target is how to speak to one server under test.
type target struct {
	name   string
	subURL string // template: {topic} is replaced
	pubURL string // template too, for servers with the topic in the path
	form   bool   // publish topic=&data= as a form; else the payload is the body
	wsJSON bool   // WebSocket frames are caddy-push's JSON envelope, not the bare payload
	bearer string // publish credentials
}

func newTarget(c *config) (*target, error) {
	t := &target{name: c.target}
	ws := c.transport == "ws"
	switch c.target {
	case "caddy-push":
		t.subURL, t.pubURL, t.form, t.wsJSON = "http://{addr}/events?topic={topic}", "http://{addr}/publish", true, true
		if ws {
			t.subURL = "ws://{addr}/ws?topic={topic}"
		}
	case "nchan":
		// nchan serves every transport on the subscriber location
		t.subURL, t.pubURL = "http://{addr}/sub/{topic}", "http://{addr}/pub/{topic}"
		if ws {
			t.subURL = "ws://{addr}/sub/{topic}"
		}
	case "mercure":
		if ws {
			return nil, fmt.Errorf("mercure has no WebSocket transport: use -transport sse")
		}
		t.subURL, t.pubURL, t.form = "http://{addr}/.well-known/mercure?topic={topic}", "http://{addr}/.well-known/mercure", true
		t.bearer = os.Getenv("MERCURE_PUBLISHER_JWT")
		if t.bearer == "" {
			return nil, fmt.Errorf("mercure publishes with a JWT: set MERCURE_PUBLISHER_JWT")
		}
	default:
		return nil, fmt.Errorf("unknown -target %q: caddy-push, nchan or mercure", c.target)
	}
	if c.subURL != "" {
		t.subURL = c.subURL
	}
	if c.pubURL != "" {
		t.pubURL = c.pubURL
	}
	t.subURL = strings.ReplaceAll(t.subURL, "{addr}", c.addr)
	t.pubURL = strings.ReplaceAll(t.pubURL, "{addr}", c.addr)
	for _, tmpl := range []string{t.subURL, t.pubURL} {
		if _, err := t.endpoint(tmpl, "x", c.allowRemote); err != nil {
			return nil, err
		}
	}
	return t, nil
}

// endpoint is a URL split the way a raw HTTP/1.1 client needs it.
type endpoint struct {
	hostport   string // to dial
	host       string // the Host header
	requestURI string
}

func (t *target) endpoint(tmpl, topic string, allowRemote bool) (endpoint, error) {
	raw := strings.ReplaceAll(tmpl, "{topic}", url.PathEscape(topic))
	u, err := url.Parse(raw)
	if err != nil {
		return endpoint{}, fmt.Errorf("url %q: %v", raw, err)
	}
	if u.Scheme != "http" && u.Scheme != "ws" {
		return endpoint{}, fmt.Errorf("url %q: only http:// and ws:// (no TLS: it would measure the handshake, not the server)", raw)
	}
	hostport := u.Host
	if u.Port() == "" {
		hostport = net.JoinHostPort(u.Hostname(), "80")
	}
	if !allowRemote && !isLoopback(u.Hostname()) {
		return endpoint{}, fmt.Errorf("url %q is not on loopback; pass -allow-remote to load another machine", raw)
	}
	return endpoint{hostport: hostport, host: u.Host, requestURI: u.RequestURI()}, nil
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
