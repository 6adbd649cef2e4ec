package push

import (
	"bufio"
	"net"
	"net/http"
)

// hijack takes the connection from beneath every wrapper of Caddy's: the
// access log's recorder wraps a connection hijacked through it in one
// that counts the bytes written, for the log line Caddy writes when the
// handler returns. A stream outlives its handler (the engine, or the
// WebSocket's goroutines, carry it on), so its writes would race that
// count, and the engine would get a connection without a descriptor. A
// stream's access log line therefore counts what was written before the
// hijack: an SSE stream's opening, nothing of a WebSocket.
func hijack(w http.ResponseWriter) (net.Conn, *bufio.ReadWriter, error) {
	for {
		u, ok := w.(interface{ Unwrap() http.ResponseWriter })
		if !ok {
			break
		}
		w = u.Unwrap()
	}
	return http.NewResponseController(w).Hijack()
}
