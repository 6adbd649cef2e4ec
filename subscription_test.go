package push

import (
	"strconv"
	"testing"
)

// Live events already in the backlog are dropped by Take.
func TestSubscriptionSkipsBacklogInLive(t *testing.T) {
	h := openHub(t, HistoryLimits{Events: 10})
	s := mustSubscribe(t, h, "", "t")
	s.skipThrough = 2 // as if the backlog ran to seq 2
	for i := range 4 {
		mustPublish(t, h, strconv.Itoa(i), "t")
	}
	if got := datas(s.Take(nil)); len(got) != 2 || got[0] != "2" || got[1] != "3" {
		t.Fatalf("got %v", got)
	}
}

func TestSubscriptionQueueBound(t *testing.T) {
	h := openHub(t, HistoryLimits{})
	s := mustSubscribe(t, h, "", "t")
	for range maxPending + 5 {
		mustPublish(t, h, "x", "t")
	}
	select {
	case <-s.Ended():
	default:
		t.Fatal("a full queue did not mark the subscriber slow")
	}
	if n := len(s.Take(nil)); n != maxPending {
		t.Fatalf("queue held %d events, want %d", n, maxPending)
	}
	if n := h.stats.of(TransportSSE).slow.Load(); n != 1 || !s.FellBehind() {
		t.Fatalf("slow disconnects counted %d times, fell behind: %v", n, s.FellBehind())
	}
}
