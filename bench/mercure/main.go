// Command mercure is Caddy with its standard modules and Mercure's own hub
// (github.com/dunglas/mercure/caddy v0.21.4), as an xcaddy build of it
// would be: what bench/compare.sh measures caddy-push's push_mercure
// against (TARGETS=mercure, with bench/mercure/Caddyfile).
//
// It is a module of its own and deliberately not in go.work, so that
// Mercure's dependencies never change the versions the project's own
// modules build and test with; compare.sh builds it with GOWORK=off. Its
// go.mod asks for the Caddy caddy-push's modules use (v2.11.9; Mercure
// itself asks for an older one), so that both hubs run on the same server.
package main

import (
	caddycmd "github.com/caddyserver/caddy/v2/cmd"

	_ "github.com/caddyserver/caddy/v2/modules/standard"
	_ "github.com/dunglas/mercure/caddy"
)

func main() {
	caddycmd.Main()
}
