package main

import (
	"cmp"
	"crypto/tls"
	"fmt"
	"net"
	"net/url"
	"os"
	"strings"
)

// target is how to speak to one server under test.
type target struct {
	name    string
	subURL  string   // template: {topic} is replaced
	pubURL  string   // template too, for servers with the topic in the path
	pubBody bodyKind // how a publish carries the topic and the payload
	pubWS   bool     // publish over WebSocket: pubURL is a ws:// template
	wrap    wrapKind // how a pushed message wraps the payload
	header  string   // extra publish header lines, CRLF between them, none at the end
	bearer  string   // publish credentials
	mercure bool     // the Mercure protocol: topics are IRIs, a publish answers the event's id
	proto   string   // how subscribers speak: protoHTTP, protoTLS, protoH2 or protoH3
	subTLS  *tls.Config
}

// The protocols subscribers speak, as results and tables name them.
const (
	protoHTTP = ""         // HTTP/1.1 in the clear
	protoTLS  = "https-h1" // HTTP/1.1 over TLS (-tls)
	protoH2   = "h2"       // HTTP/2 over TLS (-h2)
	protoH3   = "h3"       // HTTP/3 over QUIC (-h3)
)

// bodyKind is the shape of a publish request's body.
type bodyKind int

const (
	bodyRaw  bodyKind = iota // the payload is the body; the topic is in the URL
	bodyForm                 // topic=...&data=... as a form
	bodyJSON                 // {"channel":"...","data":"..."}: Centrifugo's server API
)

// wrapKind is what a subscriber unwraps to reach the payload.
type wrapKind int

const (
	wrapNone       wrapKind = iota // the SSE data or WebSocket message is the payload
	wrapCaddyPush                  // caddy-push's JSON envelope on WebSocket: {"id":..,"topic":..,"data":".."}
	wrapCentrifugo                 // Centrifugo's JSON pushes, on both uni_sse and uni_websocket
)

// centrifugoConnect is a Centrifugo connect request asking for a
// server-side subscription to {topic}, query-escaped for the cf_connect
// parameter of the unidirectional transports: {"subs":{"{topic}":{}}}.
const centrifugoConnect = "cf_connect=%7B%22subs%22%3A%7B%22{topic}%22%3A%7B%7D%7D%7D"

func newTarget(c *config) (*target, error) {
	t := &target{name: c.target, proto: c.protocol()}
	ws := c.transport == "ws"
	switch c.target {
	case "caddy-push":
		t.subURL, t.pubURL, t.pubBody = "http://{addr}/events?topic={topic}", "http://{addr}/publish", bodyForm
		if ws {
			t.wrap = wrapCaddyPush
			t.subURL = "ws://{addr}/ws?topic={topic}"
		}
	case "nchan":
		// nchan serves every transport on the subscriber location
		t.subURL, t.pubURL = "http://{addr}/sub/{topic}", "http://{addr}/pub/{topic}"
		if ws {
			t.subURL = "ws://{addr}/sub/{topic}"
		}
	case "centrifugo":
		// the unidirectional transports: the connect request in the URL
		// subscribes the connection; the server API publishes, and with
		// the transport error mode a failed publish is not a 200
		t.subURL, t.pubURL, t.pubBody, t.wrap = "http://{addr}/connection/uni_sse?"+centrifugoConnect, "http://{addr}/api/publish", bodyJSON, wrapCentrifugo
		if ws {
			t.subURL = "ws://{addr}/connection/uni_websocket?" + centrifugoConnect
		}
		t.header = "X-Centrifugo-Error-Mode: transport"
		if key := os.Getenv("CENTRIFUGO_API_KEY"); key != "" {
			t.header += "\r\nX-API-Key: " + key
		}
	case "mercure", "caddy-push-mercure":
		// Mercure's hub and caddy-push's push_mercure, the same protocol
		if ws {
			return nil, fmt.Errorf("-target %s: the Mercure protocol has no WebSocket transport: use -transport sse", c.target)
		}
		t.subURL, t.pubURL, t.pubBody = "http://{addr}/.well-known/mercure?topic={topic}", "http://{addr}/.well-known/mercure", bodyForm
		t.mercure = true
		var err error
		if t.bearer, err = mercureToken(c.jwtKey); err != nil {
			return nil, err
		}
	default:
		return nil, fmt.Errorf("unknown -target %q: caddy-push, nchan, centrifugo, mercure or caddy-push-mercure", c.target)
	}
	if c.pubWS {
		// a WebSocket per topic, each text message an event: the topic
		// is in the URL, so the body is the payload alone
		t.pubWS, t.pubBody = true, bodyRaw
		switch c.target {
		case "caddy-push":
			// a push_ws route whose publish template is {query.topic}
			t.pubURL = "ws://{addr}/ws-publish?topic={topic}"
		case "nchan":
			// nchan_publisher takes WebSocket connections too
			t.pubURL = "ws://{addr}/pub/{topic}"
		default:
			return nil, fmt.Errorf("-pub-ws: %s publishes over HTTP only here", c.target)
		}
	}
	if c.subURL != "" {
		t.subURL = c.subURL
	}
	if c.pubURL != "" {
		t.pubURL = c.pubURL
	}
	pubAddr := c.pubAddr
	if t.proto != protoHTTP {
		// the subscribers' TLS, whatever the template says
		t.subURL = secureScheme(t.subURL)
		if pubAddr == "" {
			// the one address given serves HTTPS only
			t.pubURL = secureScheme(t.pubURL)
		}
	}
	t.subURL = strings.ReplaceAll(t.subURL, "{addr}", c.addr)
	t.pubURL = strings.ReplaceAll(t.pubURL, "{addr}", cmp.Or(pubAddr, c.addr))
	for _, tmpl := range []string{t.subURL, t.pubURL} {
		if _, err := t.endpoint(tmpl, "x", c.allowRemote); err != nil {
			return nil, err
		}
	}
	if (t.proto == protoH2 || t.proto == protoH3) && !strings.HasPrefix(t.subURL, "https://") {
		return nil, fmt.Errorf("-sub-url %q: -h2 and -h3 subscribe over https:// only", t.subURL)
	}
	ep, _ := t.endpoint(t.subURL, "x", true)
	if ep.tls && t.proto == protoHTTP {
		// an https:// or wss:// -sub-url alone: HTTP/1.1 over TLS
		t.proto = protoTLS
	}
	if ep.tls {
		alpn := map[string]string{protoTLS: "http/1.1", protoH2: "h2", protoH3: "h3"}[t.proto]
		t.subTLS = tlsConfig(ep, alpn)
	}
	return t, nil
}

// secureScheme turns http:// into https:// and ws:// into wss://.
func secureScheme(u string) string {
	for plain, secure := range map[string]string{"http://": "https://", "ws://": "wss://"} {
		if rest, ok := strings.CutPrefix(u, plain); ok {
			return secure + rest
		}
	}
	return u
}

// endpoint is a URL split the way a raw HTTP/1.1 client needs it.
type endpoint struct {
	url        string
	hostport   string // to dial
	host       string // the Host header
	requestURI string
	tls        bool   // https:// or wss://
	serverName string // the host without the port, for TLS
}

func (t *target) endpoint(tmpl, topic string, allowRemote bool) (endpoint, error) {
	raw := strings.ReplaceAll(tmpl, "{topic}", url.PathEscape(topic))
	u, err := url.Parse(raw)
	if err != nil {
		return endpoint{}, fmt.Errorf("url %q: %v", raw, err)
	}
	var secure bool
	switch u.Scheme {
	case "http", "ws":
	case "https", "wss":
		secure = true
	default:
		return endpoint{}, fmt.Errorf("url %q: only http://, ws://, https:// and wss://", raw)
	}
	hostport := u.Host
	if u.Port() == "" {
		port := "80"
		if secure {
			port = "443"
		}
		hostport = net.JoinHostPort(u.Hostname(), port)
	}
	if !allowRemote && !isLoopback(u.Hostname()) {
		return endpoint{}, fmt.Errorf("url %q is not on loopback; pass -allow-remote to load another machine", raw)
	}
	return endpoint{url: raw, hostport: hostport, host: u.Host, requestURI: u.RequestURI(), tls: secure, serverName: u.Hostname()}, nil
}

// tlsConfig is a client's TLS for ep, offering the application protocol
// alpn. Certificates on loopback are not checked: the servers there have
// self-signed ones or a local CA's. Elsewhere (-allow-remote) they are.
// There is no session cache: each connection is a new visitor's, with a
// full handshake.
func tlsConfig(ep endpoint, alpn string) *tls.Config {
	return &tls.Config{
		ServerName:         ep.serverName,
		NextProtos:         []string{alpn},
		InsecureSkipVerify: isLoopback(ep.serverName),
	}
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
