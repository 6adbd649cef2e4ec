// Package testport finds free loopback ports for tests that start
// servers of their own (Caddy, redis-server).
package testport

import (
	"net"
	"strconv"
	"sync"
	"testing"
)

// given are the ports Free has returned: the kernel may offer a closed
// port again at once, and a test taking two would get it twice.
var given sync.Map

// Free returns a TCP port on 127.0.0.1 that nothing listens on and that
// Free has not returned before in this process. With udp it is free for
// UDP too, as an HTTPS site also binds its port for HTTP/3.
func Free(t testing.TB, udp bool) string {
	t.Helper()
	for range 20 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		var u net.PacketConn
		if udp {
			u, err = net.ListenPacket("udp", ":"+strconv.Itoa(port))
		}
		l.Close()
		if err != nil {
			continue
		}
		if u != nil {
			u.Close()
		}
		if _, taken := given.LoadOrStore(port, true); !taken {
			return strconv.Itoa(port)
		}
	}
	t.Fatal("no free port")
	return ""
}
