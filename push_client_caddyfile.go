package push

import (
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
)

func init() {
	httpcaddyfile.RegisterDirective("push_client", parseClientDirective)
	httpcaddyfile.RegisterDirectiveOrder("push_client", httpcaddyfile.After, "encode")
}

// parseClientDirective sets up push_client from the Caddyfile:
//
//	push_client [<matcher>]
//
// A path (push_client /push.js) is push.js's own: the handler serves it
// and push.d.ts beside it and passes every other request on. It does not
// become the route's matcher, which would keep /push.d.ts from the
// handler. Any other matcher (a named one, a path with a wildcard) is the
// route's, and the handler serves push.d.ts for paths ending in .d.ts and
// push.js for the rest. Without a matcher: /push.js.
func parseClientDirective(h httpcaddyfile.Helper) ([]httpcaddyfile.ConfigValue, error) {
	h.Next() // consume directive name
	ch := new(ClientHandler)
	var matcher caddy.ModuleMap
	switch {
	case !h.NextArg():
		ch.Path = "/push.js"
	case strings.HasPrefix(h.Val(), "/") && !strings.Contains(h.Val(), "*"):
		ch.Path = h.Val()
	default:
		h.Prev()
		var err error
		if matcher, err = h.ExtractMatcherSet(); err != nil {
			return nil, err
		}
		h.Next() // the directive name again: ExtractMatcherSet rewinds
	}
	if h.NextArg() {
		return nil, h.ArgErr()
	}
	if h.NextBlock(0) {
		return nil, h.Errf("push_client takes no options, got '%s'", h.Val())
	}
	return h.NewRoute(matcher, ch), nil
}
