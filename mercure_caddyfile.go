package push

import (
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
)

func init() {
	httpcaddyfile.RegisterHandlerDirective("push_mercure", parseHandler[MercureHandler])
	httpcaddyfile.RegisterDirectiveOrder("push_mercure", httpcaddyfile.After, "encode")
}

// mercureNoMeaning are Mercure's hub options that have no meaning here,
// each with what to use instead: a site moved from `mercure {` to
// `push_mercure {` fails to load with this, rather than running without
// what the operator meant.
var mercureNoMeaning = map[string]string{
	"transport":                      "the push app's broker: the global option push { hub default { broker redis <url> } } (in memory by default)",
	"transport_url":                  "the push app's broker: the global option push { hub default { broker redis <url> } } (in memory by default)",
	"dispatch_timeout":               "nothing: the fan-out never waits on a subscriber (one that falls behind is cut off and resumes from its last event)",
	"topic_matcher_cache":            "nothing: the match cache is sized by caddy-push",
	"subscriber_list_cache_size":     "nothing: topics are an index, patterns a cache, sized by caddy-push",
	"lru_cache_size":                 "nothing: topics are an index, patterns a cache, sized by caddy-push",
	"protocol_version_compatibility": "nothing: v0.21 clients (topic=, lastEventID=, the mercure claim) are always served",
	"playground":                     "nothing: there is no playground; the docs (docs/mercure.md) show how to try the hub",
	"debugger":                       "nothing: there is no debugger; see the push app's admin API",
	"ui":                             "nothing: there is no UI; see the push app's admin API",
	"demo":                           "nothing: there is no demo mode",
	"public_urls":                    "nothing: the hub's URL is taken from each request",
	"issuer":                         "publisher_jwt and subscriber_jwt (or their jwks_url forms) with jwt_issuer",
}

// UnmarshalCaddyfile sets up the Mercure hub from Caddyfile tokens. Its
// options are Mercure's own, with their meanings, and caddy-push's:
//
//	push_mercure [<matcher>] {
//		publisher_jwt          <key> [<alg>]
//		publisher_jwks_url     <url>
//		subscriber_jwt         <key> [<alg>]
//		subscriber_jwks_url    <url>
//		jwt_audience           <aud>    (Mercure's resource_identifier)
//		jwt_issuer             <iss>
//		anonymous
//		subscriptions
//		discover
//		cors_origins           <origin...>
//		publish_origins        <origin...>
//		cookie_name            <name>
//		heartbeat              <duration>
//		write_timeout          <duration>   (or max_duration)
//		max_request_body_size  <size>   (or max_body)
//		hub                    <name>   (or Mercure's name)
//		path                   <path>
//		retry                  <duration>
//		pause_for              <duration>
//		max_connections        <count>
//		max_connections_per_ip <count>
//		max_selectors          <count>
//		authorize              <url...> {
//			timeout <duration>
//			cache   <duration>
//			headers <name...>
//		}
//	}
func (h *MercureHandler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	return unmarshalBlock(d, "push_mercure", func(opt string) (bool, error) {
		if instead, ok := mercureNoMeaning[opt]; ok {
			return true, d.Errf("push_mercure: Mercure's %s has no meaning here; use %s", opt, instead)
		}
		switch opt {
		case "publisher_jwt":
			return true, parseMercureKey(d, &h.PublisherJWT)
		case "subscriber_jwt":
			return true, parseMercureKey(d, &h.SubscriberJWT)
		case "publisher_jwks_url":
			return true, parseString(d, &h.PublisherJWT.JWKSURL)
		case "subscriber_jwks_url":
			return true, parseString(d, &h.SubscriberJWT.JWKSURL)
		case "jwt_audience", "resource_identifier":
			return true, parseString(d, &h.JWTAudience)
		case "jwt_issuer":
			return true, parseString(d, &h.JWTIssuer)
		case "anonymous":
			h.Anonymous = true
			return true, noArgs(d)
		case "subscriptions":
			h.Subscriptions = true
			return true, noArgs(d)
		case "discover":
			h.Discover = true
			return true, noArgs(d)
		case "cors_origins":
			return true, parseList(d, &h.CORSOrigins)
		case "publish_origins":
			return true, parseList(d, &h.PublishOrigins)
		case "cookie_name":
			return true, parseString(d, &h.CookieName)
		case "heartbeat":
			return true, parseDuration(d, &h.Heartbeat)
		case "write_timeout", "max_duration":
			return true, parseDuration(d, &h.WriteTimeout)
		case "max_request_body_size", "max_body":
			return true, parseSize(d, &h.MaxBody)
		case "hub", "name":
			return true, parseString(d, &h.Hub)
		case "path":
			return true, parseString(d, &h.Path)
		case "retry":
			return true, parseDuration(d, &h.Retry)
		case "pause_for":
			return true, parseDuration(d, &h.PauseFor)
		case "max_connections":
			return true, parseInt(d, &h.MaxConnections)
		case "max_connections_per_ip":
			return true, parseInt(d, &h.MaxConnectionsPerIP)
		case "max_selectors":
			return true, parseInt(d, &h.MaxSelectors)
		case "authorize":
			h.Authorize = new(AuthorizeHook)
			return true, h.Authorize.unmarshalCaddyfile(d)
		}
		return false, nil
	})
}

// parseMercureKey reads `<key> [<alg>]`.
func parseMercureKey(d *caddyfile.Dispenser, k *MercureKey) error {
	if !d.NextArg() {
		return d.ArgErr()
	}
	k.Key = d.Val()
	if d.NextArg() {
		k.Alg = d.Val()
	}
	if d.NextArg() {
		return d.ArgErr()
	}
	return nil
}

// Interface guards
var _ caddyfile.Unmarshaler = (*MercureHandler)(nil)
