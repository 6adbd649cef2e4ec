package redis

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/caddy-push/push"
)

// openMatcher opens a broker on the test's Redis outside Caddy, with
// these history limits.
func openMatcher(t *testing.T, redisURL string, limits push.HistoryLimits) (push.Broker, push.MatchReplayer) {
	t.Helper()
	br, err := Broker{URL: redisURL}.OpenBroker(push.BrokerOptions{Hub: "patterns", History: limits,
		Deliver: func(*push.Event) {}, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = br.Close() })
	return br, br.(push.MatchReplayer)
}

func publishTo(t *testing.T, br push.Broker, data string, topics ...string) string {
	t.Helper()
	ev := &push.Event{Message: push.Message{Topics: topics, Data: data}}
	if err := br.Publish(context.Background(), ev); err != nil {
		t.Fatal(err)
	}
	return ev.ID
}

func isBook(topic string) bool { return strings.HasPrefix(topic, "books/") }

func replayMatching(t *testing.T, m push.MatchReplayer, lastID string) push.Backlog {
	t.Helper()
	b, err := m.ReplayMatching(context.Background(), isBook, lastID)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func backlogDatas(b push.Backlog) []string {
	out := make([]string, len(b.Events))
	for i, ev := range b.Events {
		out[i] = ev.Data
	}
	return out
}

// ReplayMatching reads the hub-wide stream: the matching events after the
// id, in order, each once; the events a matching topic's stream still
// holds from "earliest"; a reset from before what the topic streams or
// the hub-wide stream hold, or events older than history_ttl.
func TestReplayMatching(t *testing.T) {
	r := startRedis(t)
	br, m := openMatcher(t, r.url(), push.HistoryLimits{Events: 2, TTL: time.Hour})
	first := publishTo(t, br, "1", "books/1")
	publishTo(t, br, "2", "users/7")
	publishTo(t, br, "3", "books/1", "books/2")
	publishTo(t, br, "4", "other")
	last := publishTo(t, br, "5", "books/2")

	b := replayMatching(t, m, first)
	if got := backlogDatas(b); b.Reset != "" || !slices.Equal(got, []string{"3", "5"}) || b.HeadSeq != 5 {
		t.Fatalf("from the first id: %v %+v", got, b)
	}
	if b := replayMatching(t, m, last); b.Reset != "" || len(b.Events) != 0 {
		t.Fatalf("from the newest id: %+v", b)
	}
	if b := replayMatching(t, m, ""); b.Reset != "" || len(b.Events) != 0 || b.HeadSeq != 5 {
		t.Fatalf("without an id: %+v", b)
	}
	if b := replayMatching(t, m, "nope"); b.Reset != "unknown event id" {
		t.Fatalf("an unknown id: %+v", b)
	}

	// books/1 keeps 1 and 3, books/2 3 and 5; then 6 and 7 push 1 and 3 out of books/1
	publishTo(t, br, "6", "books/1")
	publishTo(t, br, "7", "books/1")
	if got := backlogDatas(replayMatching(t, m, "earliest")); !slices.Equal(got, []string{"3", "5", "6", "7"}) {
		t.Fatalf("from earliest: %v", got)
	}
	if b := replayMatching(t, m, first); b.Reset != "events after this id are no longer in history" {
		t.Fatalf("from before trimmed events: %+v", b)
	}
	if b := replayMatching(t, m, last); b.Reset != "" || !slices.Equal(backlogDatas(b), []string{"6", "7"}) {
		t.Fatalf("from after them: %+v", b)
	}

	// the hub-wide stream no longer reaching back to the id
	c := r.client(t)
	if err := c.XTrimMaxLen(context.Background(), "push:patterns:all", 1).Err(); err != nil {
		t.Fatal(err)
	}
	if b := replayMatching(t, m, last); b.Reset != "events after this id are no longer in history" {
		t.Fatalf("from before the hub-wide stream: %+v", b)
	}
	if got := backlogDatas(replayMatching(t, m, "earliest")); !slices.Equal(got, []string{"7"}) {
		t.Fatalf("from earliest after the trim: %v", got)
	}
}

// Matching events older than history_ttl are not replayed: a client
// resuming from before them is reset, one from "earliest" is not.
func TestReplayMatchingTTL(t *testing.T) {
	r := startRedis(t)
	br, m := openMatcher(t, r.url(), push.HistoryLimits{Events: 10, TTL: 300 * time.Millisecond})
	first := publishTo(t, br, "1", "books/1")
	publishTo(t, br, "2", "books/1")
	time.Sleep(400 * time.Millisecond)
	publishTo(t, br, "3", "books/2")
	if b := replayMatching(t, m, first); b.Reset != "events after this id are no longer in history" {
		t.Fatalf("from before expired events: %+v", b)
	}
	if b := replayMatching(t, m, "earliest"); b.Reset != "" || !slices.Equal(backlogDatas(b), []string{"3"}) {
		t.Fatalf("from earliest: %+v", b)
	}
}
