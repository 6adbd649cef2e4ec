package push

import (
	"strconv"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/dustin/go-humanize"
)

func init() {
	httpcaddyfile.RegisterGlobalOption("push", parseGlobalOption)
	httpcaddyfile.RegisterHandlerDirective("push_sse", parseHandler[SSEHandler])
	httpcaddyfile.RegisterHandlerDirective("push_ws", parseHandler[WSHandler])
	httpcaddyfile.RegisterHandlerDirective("push_publish", parseHandler[PublishHandler])
	// after encode and the auth handlers, so they wrap and guard push;
	// before every handler that responds. Registered in reverse, as each
	// lands right after encode.
	httpcaddyfile.RegisterDirectiveOrder("push_publish", httpcaddyfile.After, "encode")
	httpcaddyfile.RegisterDirectiveOrder("push_ws", httpcaddyfile.After, "encode")
	httpcaddyfile.RegisterDirectiveOrder("push_sse", httpcaddyfile.After, "encode")
}

// parseGlobalOption sets up the push app from the global option:
//
//	push {
//		engine   on|off
//		io_uring on|off
//		hub <name> {
//			history            <count>
//			history_ttl        <duration>
//			history_max_bytes  <size>
//			idempotency_window <duration>
//			max_publish_topics <count>
//			broker             <name> [<args...>]
//			events             <url...> {
//				secret   <key>
//				interval <duration>
//				batch    <count>
//				queue    <count>
//				timeout  <duration>
//			}
//		}
//	}
func parseGlobalOption(d *caddyfile.Dispenser, existing any) (any, error) {
	app := new(App)
	if existing != nil {
		return nil, d.Err("push global option given more than once")
	}
	if err := app.UnmarshalCaddyfile(d); err != nil {
		return nil, err
	}
	return httpcaddyfile.App{Name: "push", Value: caddyconfig.JSON(app, nil)}, nil
}

// UnmarshalCaddyfile sets up the app from Caddyfile tokens; see
// parseGlobalOption for the syntax.
func (a *App) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // consume option name
	if d.NextArg() {
		return d.ArgErr()
	}
	a.Hubs = make(map[string]*HubConfig)
	for d.NextBlock(0) {
		switch d.Val() {
		case "engine", "io_uring":
			opt := d.Val()
			var v string
			if err := parseString(d, &v); err != nil {
				return err
			}
			if v != "on" && v != "off" {
				return d.Errf("%s must be on or off, not '%s'", opt, v)
			}
			if opt == "engine" {
				a.Engine = v
			} else {
				a.IOURing = v
			}
			continue
		case "hub":
		default:
			return d.Errf("unrecognized push option '%s'", d.Val())
		}
		if !d.NextArg() {
			return d.ArgErr()
		}
		name := d.Val()
		if d.NextArg() {
			return d.ArgErr()
		}
		if err := validateHubName(name); err != nil {
			return d.Err(err.Error())
		}
		if _, dup := a.Hubs[name]; dup {
			return d.Errf("hub '%s' is defined more than once", name)
		}
		hc := new(HubConfig)
		if err := hc.unmarshalCaddyfile(d); err != nil {
			return err
		}
		a.Hubs[name] = hc
	}
	return nil
}

func (hc *HubConfig) unmarshalCaddyfile(d *caddyfile.Dispenser) error {
	seen := make(map[string]bool)
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		opt := d.Val()
		if seen[opt] {
			return d.Errf("hub option '%s' given more than once", opt)
		}
		seen[opt] = true
		switch opt {
		case "history":
			var n int
			if err := parseInt(d, &n); err != nil {
				return err
			}
			hc.History = &n
		case "history_ttl":
			if err := parseDuration(d, &hc.HistoryTTL); err != nil {
				return err
			}
		case "history_max_bytes":
			if err := parseSize(d, &hc.HistoryMaxBytes); err != nil {
				return err
			}
		case "idempotency_window":
			var w caddy.Duration
			if err := parseDuration(d, &w); err != nil {
				return err
			}
			hc.IdempotencyWindow = &w
		case "max_publish_topics":
			if err := parseInt(d, &hc.MaxPublishTopics); err != nil {
				return err
			}
			if hc.MaxPublishTopics == 0 {
				return d.Errf("invalid max_publish_topics '0': want 1 or more")
			}
		case "broker":
			if !d.NextArg() {
				return d.ArgErr()
			}
			name := d.Val()
			mod, err := caddyfile.UnmarshalModule(d, "push.brokers."+name)
			if err != nil {
				return err
			}
			hc.BrokerRaw = caddyconfig.JSONModuleObject(mod, "broker", name, nil)
		case "events":
			hc.Events = new(EventsHook)
			if err := hc.Events.unmarshalCaddyfile(d); err != nil {
				return err
			}
		default:
			return d.Errf("unrecognized hub option '%s'", opt)
		}
	}
	return nil
}

// UnmarshalCaddyfile takes no arguments: `broker memory`.
func (b *MemoryBroker) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // consume broker name
	if d.NextArg() {
		return d.ArgErr()
	}
	if d.NextBlock(d.Nesting()) {
		return d.Errf("broker memory takes no options, got '%s'", d.Val())
	}
	return nil
}

// handlerPtr is a handler module that can read its Caddyfile block.
type handlerPtr[T any] interface {
	*T
	caddyhttp.MiddlewareHandler
	caddyfile.Unmarshaler
}

func parseHandler[T any, P handlerPtr[T]](h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	p := P(new(T))
	err := p.UnmarshalCaddyfile(h.Dispenser)
	return p, err
}

// UnmarshalCaddyfile sets up the SSE handler from Caddyfile tokens:
//
//	push_sse [<matcher>] {
//		hub                    <name>
//		topics                 <template...>
//		retry                  <duration>
//		keepalive              <duration>
//		max_duration           <duration>
//		pause_for              <duration>
//		max_connections        <count>
//		max_connections_per_ip <count>
//		ipv6_prefix            <bits>
//		max_topics             <count>
//		presence               [<topic pattern...>]
//		presence_limit         <count>
//		private                <pattern...>
//		jwt_key                <secret or PEM public key>
//		jwt_alg                <algorithm>
//		jwks_url               <url of a JSON Web Key Set>
//		jwt_audience           <aud>
//		jwt_issuer             <iss>
//		cookie_name            <name>
//		authorize              <url...> {
//			timeout <duration>
//			cache   <duration>
//			headers <name...>
//		}
//	}
func (h *SSEHandler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	return unmarshalBlock(d, "push_sse", func(opt string) (bool, error) {
		if ok, err := h.Endpoint.unmarshalOption(d, opt); ok || err != nil {
			return ok, err
		}
		switch opt {
		case "retry":
			return true, parseDuration(d, &h.Retry)
		case "keepalive":
			return true, parseDuration(d, &h.Keepalive)
		}
		return false, nil
	})
}

// UnmarshalCaddyfile sets up the WebSocket handler from Caddyfile tokens:
//
//	push_ws [<matcher>] {
//		hub                    <name>
//		topics                 <template...>
//		publish                <template...>
//		subscribe              <topic pattern...>
//		ping_interval          <duration>
//		pong_timeout           <duration>
//		max_message_size       <size>
//		origins                <origin...>
//		format                 json|text
//		presence               [<topic pattern...>]
//		presence_limit         <count>
//		compression
//		publish_rate           <per second>
//		publish_burst          <count>
//		publish_proxy          <url...> {
//			timeout <duration>
//		}
//		max_duration           <duration>
//		pause_for              <duration>
//		max_connections        <count>
//		max_connections_per_ip <count>
//		ipv6_prefix            <bits>
//		max_topics             <count>
//		private                <pattern...>
//		jwt_key                <secret or PEM public key>
//		jwt_alg                <algorithm>
//		jwks_url               <url of a JSON Web Key Set>
//		jwt_audience           <aud>
//		jwt_issuer             <iss>
//		cookie_name            <name>
//		authorize              <url...> {
//			timeout <duration>
//			cache   <duration>
//			headers <name...>
//		}
//	}
func (h *WSHandler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	return unmarshalBlock(d, "push_ws", func(opt string) (bool, error) {
		if ok, err := h.Endpoint.unmarshalOption(d, opt); ok || err != nil {
			return ok, err
		}
		switch opt {
		case "publish":
			return true, parseList(d, &h.Publish)
		case "subscribe":
			return true, parseList(d, &h.Subscribe)
		case "origins":
			return true, parseList(d, &h.Origins)
		case "ping_interval":
			return true, parseDuration(d, &h.PingInterval)
		case "pong_timeout":
			return true, parseDuration(d, &h.PongTimeout)
		case "max_message_size":
			return true, parseSize(d, &h.MaxMessageSize)
		case "format":
			if err := parseString(d, &h.Format); err != nil {
				return true, err
			}
			if h.Format != FormatJSON && h.Format != FormatText {
				return true, d.Errf("invalid format '%s': want json or text", h.Format)
			}
			return true, nil
		case "compression":
			h.Compression = true
			return true, noArgs(d)
		case "publish_rate":
			var s string
			if err := parseString(d, &s); err != nil {
				return true, err
			}
			rate, err := strconv.ParseFloat(s, 64)
			if err != nil || rate <= 0 {
				return true, d.Errf("invalid publish_rate '%s': want messages per second, more than 0", s)
			}
			h.PublishRate = rate
			return true, nil
		case "publish_burst":
			return true, parseInt(d, &h.PublishBurst)
		case "publish_proxy":
			h.PublishProxy = new(Hook)
			return true, unmarshalHook(d, h.PublishProxy, nil)
		}
		return false, nil
	})
}

// UnmarshalCaddyfile sets up the publish handler from Caddyfile tokens:
//
//	push_publish [<matcher>] {
//		hub         <name>
//		token       <token>
//		jwt_key     <secret or PEM public key>
//		jwt_alg     <algorithm>
//		jwks_url    <url of a JSON Web Key Set>
//		jwt_audience<aud>
//		jwt_issuer  <iss>
//		cookie_name <name>
//		anonymous
//		max_body    <size>
//		max_data    <size>
//	}
func (h *PublishHandler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	return unmarshalBlock(d, "push_publish", func(opt string) (bool, error) {
		if ok, err := h.JWT.unmarshalOption(d, opt); ok || err != nil {
			return ok, err
		}
		switch opt {
		case "hub":
			return true, parseString(d, &h.Hub)
		case "token":
			return true, parseString(d, &h.Token)
		case "anonymous":
			h.Anonymous = true
			return true, noArgs(d)
		case "max_body":
			return true, parseSize(d, &h.MaxBody)
		case "max_data":
			return true, parseSize(d, &h.MaxData)
		}
		return false, nil
	})
}

// unmarshalOption parses the options every subscribe endpoint has.
func (e *Endpoint) unmarshalOption(d *caddyfile.Dispenser, opt string) (bool, error) {
	switch opt {
	case "hub":
		return true, parseString(d, &e.Hub)
	case "topics":
		return true, parseList(d, &e.Topics)
	case "max_connections":
		return true, parseInt(d, &e.MaxConnections)
	case "max_connections_per_ip":
		return true, parseInt(d, &e.MaxConnectionsPerIP)
	case "ipv6_prefix":
		if err := parseInt(d, &e.IPv6Prefix); err != nil {
			return true, err
		}
		if e.IPv6Prefix < 1 || e.IPv6Prefix > 128 {
			return true, d.Errf("invalid ipv6_prefix '%d': want bits from 1 to 128", e.IPv6Prefix)
		}
		return true, nil
	case "max_duration":
		return true, parseDuration(d, &e.MaxDuration)
	case "pause_for":
		return true, parseDuration(d, &e.PauseFor)
	case "max_topics":
		return true, parseInt(d, &e.MaxTopics)
	case "private":
		return true, parseList(d, &e.Private)
	case "presence":
		e.Presence = true
		e.PresenceTopics = d.RemainingArgs()
		return true, nil
	case "presence_limit":
		return true, parseInt(d, &e.PresenceLimit)
	case "authorize":
		e.Authorize = new(AuthorizeHook)
		return true, e.Authorize.unmarshalCaddyfile(d)
	}
	return e.JWT.unmarshalOption(d, opt)
}

// unmarshalOption parses the JWT options every handler has.
func (j *JWT) unmarshalOption(d *caddyfile.Dispenser, opt string) (bool, error) {
	switch opt {
	case "jwt_key":
		return true, parseString(d, &j.JWTKey)
	case "jwt_alg":
		return true, parseString(d, &j.JWTAlg)
	case "jwks_url":
		return true, parseString(d, &j.JWKSURL)
	case "jwt_audience":
		return true, parseString(d, &j.Audience)
	case "jwt_issuer":
		return true, parseString(d, &j.Issuer)
	case "cookie_name":
		return true, parseString(d, &j.CookieName)
	}
	return false, nil
}

// parseList reads one or more arguments.
func parseList(d *caddyfile.Dispenser, list *[]string) error {
	*list = d.RemainingArgs()
	if len(*list) == 0 {
		return d.ArgErr()
	}
	return nil
}

func noArgs(d *caddyfile.Dispenser) error {
	if d.NextArg() {
		return d.ArgErr()
	}
	return nil
}

// unmarshalBlock walks a handler directive: no arguments but the matcher
// (consumed by Caddy), then a block whose options each appear once.
func unmarshalBlock(d *caddyfile.Dispenser, directive string, option func(string) (bool, error)) error {
	d.Next() // consume directive name
	if d.NextArg() {
		return d.ArgErr()
	}
	seen := make(map[string]bool)
	for d.NextBlock(0) {
		opt := d.Val()
		if seen[opt] {
			return d.Errf("%s option '%s' given more than once", directive, opt)
		}
		seen[opt] = true
		ok, err := option(opt)
		if err != nil {
			return err
		}
		if !ok {
			return d.Errf("unrecognized %s subdirective '%s'", directive, opt)
		}
	}
	return nil
}

func parseString(d *caddyfile.Dispenser, s *string) error {
	if !d.NextArg() {
		return d.ArgErr()
	}
	*s = d.Val()
	if d.NextArg() {
		return d.ArgErr()
	}
	return nil
}

func parseInt(d *caddyfile.Dispenser, n *int) error {
	opt := d.Val()
	var s string
	if err := parseString(d, &s); err != nil {
		return err
	}
	v, err := strconv.Atoi(s)
	if err != nil || v < 0 {
		return d.Errf("invalid %s '%s': want a whole number, 0 or more", opt, s)
	}
	*n = v
	return nil
}

// parseSize reads a size such as 64KiB, 1MB or 1048576.
func parseSize(d *caddyfile.Dispenser, size *int64) error {
	opt := d.Val()
	var s string
	if err := parseString(d, &s); err != nil {
		return err
	}
	n, err := humanize.ParseBytes(s)
	if err != nil || n == 0 || n > 1<<40 {
		return d.Errf("invalid %s '%s': want a size such as 64KiB or 1MiB", opt, s)
	}
	*size = int64(n)
	return nil
}

func parseDuration(d *caddyfile.Dispenser, dur *caddy.Duration) error {
	opt := d.Val()
	var s string
	if err := parseString(d, &s); err != nil {
		return err
	}
	v, err := caddy.ParseDuration(s)
	if err != nil || v < 0 {
		return d.Errf("invalid %s '%s': want a duration such as 30s or 5m", opt, s)
	}
	*dur = caddy.Duration(v)
	return nil
}

// Interface guards
var (
	_ caddyfile.Unmarshaler = (*App)(nil)
	_ caddyfile.Unmarshaler = (*MemoryBroker)(nil)
	_ caddyfile.Unmarshaler = (*SSEHandler)(nil)
	_ caddyfile.Unmarshaler = (*WSHandler)(nil)
	_ caddyfile.Unmarshaler = (*PublishHandler)(nil)
)
