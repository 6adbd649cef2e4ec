package push

import (
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
)

func TestShouldTrim(t *testing.T) {
	const mib = 1 << 20
	for _, tc := range []struct {
		waste, live, recent uint64
		want                bool
	}{
		{400 * mib, 300 * mib, 1 * mib, true},    // idle after a burst
		{40 * mib, 10 * mib, 0, false},           // too little to be worth a collection
		{70 * mib, 300 * mib, 0, false},          // little waste next to the live heap
		{400 * mib, 300 * mib, 200 * mib, false}, // busy: it will use the free heap
	} {
		if got := shouldTrim(tc.waste, tc.live, tc.recent); got != tc.want {
			t.Errorf("shouldTrim(%d, %d, %d MiB) = %v", tc.waste/mib, tc.live/mib, tc.recent/mib, got)
		}
	}
}

// The trimmer runs while any hub is open, across a reload's overlap, and
// its goroutine ends with the last hub.
func TestTrimmerFollowsHubs(t *testing.T) {
	c := startCaddy(t, basicSite)
	if goroutinesIn("(*trimmer).run") != 1 {
		t.Fatal("no trimmer while a hub is open")
	}
	c.Load(basicSite) // a reload: the hub is kept
	if n := goroutinesIn("(*trimmer).run"); n != 1 {
		t.Fatalf("%d trimmers after a reload", n)
	}
	if err := caddy.Stop(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, time.Second, func() bool { return goroutinesIn("(*trimmer).run") == 0 })
}
