package push

import (
	"context"
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// pauseOf finds the pause event in what a stream sent and checks its
// shape: data is the unix ms to come back at, retry the ms until then,
// and it carries no id of its own.
func pauseOf(t testing.TB, items []sseItem, lastID string) (until time.Time, retry time.Duration) {
	t.Helper()
	for i, it := range items {
		if it.Event == nil || it.Event.Type != "pause" {
			continue
		}
		if i != len(items)-1 {
			t.Fatalf("the stream went on after its pause: %+v", items[i+1:])
		}
		if i > 0 && items[i-1].ID != "" {
			t.Fatalf("pause block carries an id: %+v", items[i-1])
		}
		if it.Event.ID != lastID {
			t.Fatalf("after the pause the last id is %q, want %q (the last real event's)", it.Event.ID, lastID)
		}
		ms, err := strconv.ParseInt(it.Event.Data, 10, 64)
		if err != nil {
			t.Fatalf("pause data %q is not unix ms", it.Event.Data)
		}
		until = time.UnixMilli(ms)
		retry = time.Duration(it.Event.Retry) * time.Millisecond
		if d := time.Until(until) - retry; d < -time.Second || d > time.Second {
			t.Fatalf("pause until %v but retry %v: they disagree by %v", until, retry, d)
		}
		return until, retry
	}
	t.Fatalf("no pause event in %+v", items)
	return
}

// At max_duration with pause_for, the stream pauses for pause_for (±10%)
// instead of saying goodbye; the client comes back with its last id and
// gets what was published during the pause.
func TestSSEPauseAtMaxDuration(t *testing.T) {
	c := startCaddy(t, `
http://127.0.0.1:PORT {
	push_sse /events {
		max_duration 300ms
		pause_for 3s
	}
	push_publish /publish {
		anonymous
	}
}`)
	s := subscribe(t, c.URL+"/events?topic=x", nil)
	_, id1 := c.publish("/publish", "topic=x&data=1")
	if ev := s.nextEvent(time.Second); ev.ID != id1 {
		t.Fatalf("got %+v, want %s", ev, id1)
	}
	_, retry := pauseOf(t, s.ended(2*time.Second), id1)
	if retry < 2500*time.Millisecond || retry > 3500*time.Millisecond {
		t.Fatalf("retry %v, want 3s ±10%%", retry)
	}
	_, id2 := c.publish("/publish", "topic=x&data=2")
	_, id3 := c.publish("/publish", "topic=x&data=3")
	s = subscribe(t, c.URL+"/events?topic=x&lastEventId="+id1, nil)
	if got := s.events(2, time.Second); got[0].ID != id2 || got[1].ID != id3 {
		t.Fatalf("resumed with %+v, want %s then %s", got, id2, id3)
	}
	s.quiet(100 * time.Millisecond)
}

// A stream with no event yet still pauses with the head id in force, so a
// client that keeps e.lastEventId resumes losslessly.
func TestSSEPauseOfFreshClientKeepsHead(t *testing.T) {
	c := startCaddy(t, `
http://127.0.0.1:PORT {
	push_sse /events {
		max_duration 200ms
		pause_for 1s
	}
	push_publish /publish {
		anonymous
	}
}`)
	_, id0 := c.publish("/publish", "topic=y&data=0")
	s := subscribe(t, c.URL+"/events?topic=x", nil)
	pauseOf(t, s.ended(2*time.Second), id0)
	_, id1 := c.publish("/publish", "topic=x&data=1")
	s = subscribe(t, c.URL+"/events?topic=x&lastEventId="+id0, nil)
	if ev := s.nextEvent(time.Second); ev.ID != id1 {
		t.Fatalf("resumed with %+v, want %s", ev, id1)
	}
}

// Over a limit, an EventSource (Accept: text/event-stream) gets 200 and a
// pause for Retry-After, since it would never retry a 503 or 429; other
// clients keep the status and Retry-After.
func TestSSEOverLimitPausesEventSource(t *testing.T) {
	c := startCaddy(t, `
http://127.0.0.1:PORT {
	push_sse /events {
		max_connections 1
	}
	push_sse /perip {
		max_connections_per_ip 1
	}
}`)
	accept := header("Accept", "text/event-stream")
	for _, tc := range []struct {
		path   string
		status int
	}{{"/events", http.StatusServiceUnavailable}, {"/perip", http.StatusTooManyRequests}} {
		subscribe(t, c.URL+tc.path+"?topic=x", nil)

		plain := subscribe(t, c.URL+tc.path+"?topic=x", nil)
		if plain.Resp.StatusCode != tc.status || plain.Resp.Header.Get("Retry-After") != "5" {
			t.Fatalf("%s without Accept: %d %v, want %d with Retry-After 5", tc.path, plain.Resp.StatusCode, plain.Resp.Header, tc.status)
		}
		plain.Close()

		es := subscribe(t, c.URL+tc.path+"?topic=x", accept)
		if es.Resp.StatusCode != http.StatusOK || !strings.HasPrefix(es.Resp.Header.Get("Content-Type"), "text/event-stream") {
			t.Fatalf("%s as EventSource: %d %v, want 200 text/event-stream", tc.path, es.Resp.StatusCode, es.Resp.Header)
		}
		start := time.Now()
		items := es.ended(2 * time.Second)
		if items[0].Retry == 0 {
			t.Fatalf("%s: no opening retry: %+v", tc.path, items)
		}
		until, retry := pauseOf(t, items, "")
		if d := until.Sub(start); d < 4400*time.Millisecond || d > 5600*time.Millisecond {
			t.Fatalf("%s: paused for %v, want 5s ±10%%", tc.path, d)
		}
		if retry < 4400*time.Millisecond || retry > 5600*time.Millisecond {
			t.Fatalf("%s: retry %v, want 5s ±10%%", tc.path, retry)
		}
	}
	// several media ranges, other case
	es := subscribe(t, c.URL+"/events?topic=x", header("Accept", "text/html, Text/Event-Stream;q=0.9"))
	if es.Resp.StatusCode != http.StatusOK {
		t.Fatalf("Accept with several ranges: %d, want 200 and a pause", es.Resp.StatusCode)
	}
}

func TestAcceptsEventStream(t *testing.T) {
	for accept, want := range map[string]bool{
		"text/event-stream":                 true,
		"TEXT/EVENT-STREAM":                 true,
		"text/html, text/event-stream;q=.5": true,
		" text/event-stream ; charset=utf8": true,
		"":                                  false,
		"*/*":                               false,
		"text/*":                            false,
		"text/event-streams":                false,
		"application/json":                  false,
	} {
		r, _ := http.NewRequest(http.MethodGet, "/", nil)
		if accept != "" {
			r.Header.Set("Accept", accept)
		}
		if got := acceptsEventStream(r); got != want {
			t.Errorf("Accept %q: %v, want %v", accept, got, want)
		}
	}
}

func TestPauseRequestValidate(t *testing.T) {
	for _, tc := range []struct {
		p   PauseRequest
		err string
	}{
		{PauseRequest{For: time.Second}, ""},
		{PauseRequest{For: time.Second, Jitter: time.Second, Fraction: 1, Topics: []string{"a"}}, ""},
		{PauseRequest{}, "positive duration"},
		{PauseRequest{For: -time.Second}, "positive duration"},
		{PauseRequest{For: time.Second, Jitter: -1}, "jitter"},
		{PauseRequest{For: time.Second, Fraction: 1.5}, "fraction"},
		{PauseRequest{For: time.Second, Fraction: -0.1}, "fraction"},
		{PauseRequest{For: time.Second, Topics: []string{""}}, "topic"},
	} {
		err := tc.p.Validate()
		if tc.err == "" && err != nil || tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)) {
			t.Errorf("%+v: %v, want %q", tc.p, err, tc.err)
		}
	}
}

// Hub.Pause with a fraction pauses that share of 1,000 real streams, picked
// at random, with return times spread over For ± Jitter; the others stay.
func TestHubPauseFraction(t *testing.T) {
	// as TestMaxConnectionsPerIP: 1,000 openings at once may take longer
	// than TestMain's short write timeout, which would end streams this
	// test counts; nothing here is about slow clients
	defer writeTimeoutSet.Store(writeTimeoutSet.Swap(int64(time.Minute)))
	c := startCaddy(t, `
http://127.0.0.1:PORT {
	push_sse /events {
		topics many
	}
	push_sse /other {
		topics other
	}
	push_publish /publish {
		anonymous
	}
}`)
	hub, ok := LookupHub("default")
	if !ok {
		t.Fatal("no default hub")
	}
	const n = 1000
	client := newTestClient()
	t.Cleanup(client.CloseIdleConnections)
	streams := make([]*sseClient, n)
	for i := range streams {
		streams[i] = subscribeWith(t, client, c.URL+"/events", nil)
		if streams[i].Resp.StatusCode != 200 {
			t.Fatalf("stream %d: %d", i, streams[i].Resp.StatusCode)
		}
	}
	other := subscribe(t, c.URL+"/other", nil)

	if _, err := hub.Pause(context.Background(), PauseRequest{For: time.Minute, Fraction: 2}); err == nil {
		t.Fatal("a fraction of 2 was accepted")
	}
	const pauseFor, jitter = 60 * time.Second, 20 * time.Second
	paused, err := hub.Pause(context.Background(), PauseRequest{Topics: []string{"many"}, For: pauseFor, Jitter: jitter, Fraction: 0.5})
	if err != nil {
		t.Fatal(err)
	}
	if paused < 450 || paused > 550 {
		t.Fatalf("paused %d of %d, want 450–550", paused, n)
	}
	_, id := c.publish("/publish", "topic=many&topic=other&data=after")

	var (
		mu      sync.Mutex
		retries []time.Duration
		live    int
		wg      sync.WaitGroup
	)
	for _, s := range streams {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				it, ok := <-s.items
				if !ok {
					return
				}
				if ev := it.Event; ev != nil {
					mu.Lock()
					if ev.Type == "pause" {
						retries = append(retries, time.Duration(ev.Retry)*time.Millisecond)
					} else if ev.ID == id {
						live++
					}
					mu.Unlock()
					return
				}
			}
		}()
	}
	wg.Wait()
	if len(retries) != paused || live != n-paused {
		t.Fatalf("%d streams paused and %d got the live event; want %d and %d", len(retries), live, paused, n-paused)
	}
	if ev := other.nextEvent(time.Second); ev.ID != id {
		t.Fatalf("a stream of another topic got %+v, want %s", ev, id)
	}
	// spread: every return time inside For ± Jitter, and both ends of the
	// window used (with 500 draws, each outer quarter is empty with
	// probability 2^-500)
	lo, hi := pauseFor, pauseFor
	for _, r := range retries {
		if r < pauseFor-jitter-time.Second || r > pauseFor+jitter {
			t.Fatalf("retry %v outside %v ± %v", r, pauseFor, jitter)
		}
		lo, hi = min(lo, r), max(hi, r)
	}
	if lo > pauseFor-jitter/2 || hi < pauseFor+jitter/2 {
		t.Fatalf("returns spread over %v–%v only, want most of %v ± %v", lo, hi, pauseFor, jitter)
	}
}

// A WebSocket at max_duration with pause_for gets the pause frame, then
// close 1013 naming the same time; it resumes with lastEventId, losing
// nothing. Without pause_for it closes with 1001.
func TestWSPause(t *testing.T) {
	c := startCaddy(t, `
http://127.0.0.1:PORT {
	push_ws /ws {
		max_duration 300ms
		pause_for 2s
	}
	push_ws /short {
		max_duration 300ms
	}
	push_publish /publish {
		anonymous
	}
}`)
	ws := mustDialWS(t, c.URL+"/ws?topic=x", nil)
	_, id1 := c.publish("/publish", "topic=x&data=1")
	if f := ws.nextFrame(time.Second); f.ID != id1 {
		t.Fatalf("got %+v, want %s", f, id1)
	}
	raw := string(ws.next(2 * time.Second))
	start := time.Now()
	var f struct{ ID, Event, Data *string }
	if err := json.Unmarshal([]byte(raw), &f); err != nil || f.ID != nil || f.Event == nil || *f.Event != "pause" || f.Data == nil {
		t.Fatalf("pause frame %s, want {\"event\":\"pause\",\"data\":\"<unix ms>\"}", raw)
	}
	ms, err := strconv.ParseInt(*f.Data, 10, 64)
	if err != nil {
		t.Fatalf("pause data %q is not unix ms", *f.Data)
	}
	if d := time.UnixMilli(ms).Sub(start); d < 1700*time.Millisecond || d > 2300*time.Millisecond { // 2s ±10%, less transit
		t.Fatalf("paused for %v, want 2s ±10%%", d)
	}
	ce := ws.closeError(2 * time.Second)
	if ce.Code != CloseTryAgainLater || !strings.Contains(ce.Text, *f.Data) {
		t.Fatalf("closed with %d %q, want 1013 naming %s", ce.Code, ce.Text, *f.Data)
	}
	_, id2 := c.publish("/publish", "topic=x&data=2")
	ws = mustDialWS(t, c.URL+"/ws?topic=x&lastEventId="+id1, nil)
	if f := ws.nextFrame(time.Second); f.ID != id2 {
		t.Fatalf("resumed with %+v, want %s", f, id2)
	}

	short := mustDialWS(t, c.URL+"/short?topic=x", nil)
	if code := short.closeCode(2 * time.Second); code != websocket.CloseGoingAway {
		t.Fatalf("max_duration without pause_for closed with %d, want 1001", code)
	}
}

// Hub.Pause reaches WebSocket connections too, by topic.
func TestWSHubPause(t *testing.T) {
	c := startCaddy(t, wsSite)
	a := mustDialWS(t, c.URL+"/ws?topic=a", nil)
	b := mustDialWS(t, c.URL+"/ws?topic=b", nil)
	hub, _ := LookupHub("default")
	waitFor(t, time.Second, func() bool { return hub.stats.of(TransportWS).connections.Load() == 2 })
	n, err := hub.Pause(context.Background(), PauseRequest{Topics: []string{"a"}, For: time.Minute})
	if err != nil || n != 1 {
		t.Fatalf("paused %d (%v), want 1", n, err)
	}
	if f := a.nextFrame(time.Second); f.Event != "pause" {
		t.Fatalf("got %+v, want the pause frame", f)
	}
	if code := a.closeCode(2 * time.Second); code != CloseTryAgainLater {
		t.Fatalf("closed with %d, want 1013", code)
	}
	_, id := c.publish("/publish", "topic=b&data=still")
	if f := b.nextFrame(time.Second); f.ID != id {
		t.Fatalf("the other connection got %+v, want %s", f, id)
	}
}

func TestPauseForNeedsMaxDuration(t *testing.T) {
	cfg := adapt(t, `
{
	admin off
}
http://127.0.0.1:0 {
	push_sse /events {
		pause_for 5s
	}
}`)
	if err := caddyValidate(cfg); err == nil || !strings.Contains(err.Error(), "pause_for needs max_duration") {
		t.Fatalf("got %v, want an error saying pause_for needs max_duration", err)
	}
}

// A stream resumed with ?lastEventId (a new EventSource, as the article's
// client opens) opens with that id, so a pause before any event still
// hands the pause listener the right e.lastEventId.
func TestSSEResumedStreamPausesWithItsID(t *testing.T) {
	c := startCaddy(t, `
http://127.0.0.1:PORT {
	push_sse /events {
		max_duration 200ms
		pause_for 1s
	}
	push_publish /publish {
		anonymous
	}
}`)
	_, id1 := c.publish("/publish", "topic=x&data=1")
	_, _ = c.publish("/publish", "topic=y&data=2") // the head moves on
	s := subscribe(t, c.URL+"/events?topic=x&lastEventId="+id1, nil)
	pauseOf(t, s.ended(2*time.Second), id1)
}
