// Command caddy is Caddy with its standard modules and caddy-push, as xcaddy
// would build it, so that `go run ./cmd/caddy run --config Caddyfile` works
// with nothing but Go installed. It also has the demo's clock
// (push_demo_clock), which xcaddy builds of the module do not.
package main

import (
	caddycmd "github.com/caddyserver/caddy/v2/cmd"

	_ "github.com/caddy-push/push"
	_ "github.com/caddy-push/push/cmd/caddy/clock"
	_ "github.com/caddy-push/push/redis"

	_ "github.com/caddyserver/caddy/v2/modules/standard"
)

func main() {
	caddycmd.Main()
}
