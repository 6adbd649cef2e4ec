package push

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/golang-jwt/jwt/v5"
)

const idempotencySite = `
{
	push {
		hub default {
			idempotency_window 1h
		}
	}
}
http://127.0.0.1:PORT {
	push_sse /events
	push_publish /publish {
		token {env.PUSH_TEST_TOKEN}
	}
	push_publish /other {
		token {env.PUSH_TEST_TOKEN2}
	}
	push_publish /jwt {
		jwt_key {env.PUSH_TEST_JWT}
	}
	push_publish /open {
		anonymous
	}
}
`

// heldSite is idempotencySite with the hub on the held broker.
var heldSite = strings.Replace(idempotencySite, "idempotency_window 1h", "idempotency_window 1h\n\t\t\tbroker held", 1)

func init() {
	caddy.RegisterModule(heldBroker{})
}

// heldBroker is the memory broker with a wait in PublishOnce, which a
// keyed publish reaches while its key is in flight on the hub, as it
// would wait for a slow backend.
type heldBroker struct{}

func (heldBroker) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "push.brokers.held",
		New: func() caddy.Module { return new(heldBroker) },
	}
}

// UnmarshalCaddyfile takes no arguments: `broker held`.
func (*heldBroker) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // consume broker name
	return nil
}

func (heldBroker) OpenBroker(o BrokerOptions) (Broker, error) {
	b, err := MemoryBroker{}.OpenBroker(o)
	if err != nil {
		return nil, err
	}
	return heldStore{b.(*memoryStore)}, nil
}

// holdPublishOnce, set by a test, runs in the held broker's PublishOnce
// before the event is stored.
var holdPublishOnce atomic.Pointer[func(*Event)]

type heldStore struct{ *memoryStore }

func (s heldStore) PublishOnce(ctx context.Context, ev *Event, k IdempotencyKey) (string, error) {
	if hold := holdPublishOnce.Load(); hold != nil {
		(*hold)(ev)
	}
	return s.memoryStore.PublishOnce(ctx, ev, k)
}

func startIdempotencyCaddy(t *testing.T, site string) *testCaddy {
	t.Helper()
	t.Setenv("PUSH_TEST_TOKEN", "s3cret")
	t.Setenv("PUSH_TEST_TOKEN2", "other-s3cret")
	t.Setenv("PUSH_TEST_JWT", testSecret)
	return startCaddy(t, site)
}

// keyed is a publish request: a form body with a bearer token and an
// Idempotency-Key.
type keyed struct {
	path, auth, key, body string
	ctype                 string // default: a form
}

// answer is the status, body and Idempotent-Replayed header of a publish.
type answer struct {
	status   int
	body     string
	replayed string
}

func (p keyed) request(ctx context.Context, base string) *http.Request {
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, base+p.path, strings.NewReader(p.body))
	req.Header.Set("Content-Type", cmp.Or(p.ctype, "application/x-www-form-urlencoded"))
	if p.auth != "" {
		req.Header.Set("Authorization", "Bearer "+p.auth)
	}
	if p.key != "" {
		req.Header.Set("Idempotency-Key", p.key)
	}
	return req
}

// send publishes once and fails the test on a transport error.
func (p keyed) send(t testing.TB, c *testCaddy) answer {
	t.Helper()
	a, err := p.try(testClient, c.URL)
	if err != nil {
		t.Fatalf("POST %s: %v", p.path, err)
	}
	return a
}

func (p keyed) try(client *http.Client, base string) (answer, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := client.Do(p.request(ctx, base))
	if err != nil {
		return answer{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return answer{}, err
	}
	return answer{resp.StatusCode, string(b), resp.Header.Get("Idempotent-Replayed")}, nil
}

func TestIdempotencyValidateKey(t *testing.T) {
	for _, tc := range []struct {
		key, err string
	}{
		{"a", ""},
		{"8e0c1f5e-5f3a-4c39-9a43-3b8c6c2f1f0d", ""},
		{"with inner space", ""},
		{"~!@#$%^&*()_+{}|:\"<>?`-=[]\\;',./", ""},
		{strings.Repeat("k", 255), ""},
		{"", "empty"},
		{strings.Repeat("k", 256), "longer than 255"},
		{" lead", "space"},
		{"trail ", "space"},
		{"tab\there", "printable ASCII"},
		{"nul\x00", "printable ASCII"},
		{"del\x7f", "printable ASCII"},
		{"é", "printable ASCII"},
	} {
		err := ValidateIdempotencyKey(tc.key)
		if tc.err == "" && err != nil || tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)) {
			t.Errorf("%.30q: %v, want %q", tc.key, err, tc.err)
		}
	}
}

// A repeat of a publish with its key answers 200 with the first id and
// Idempotent-Replayed, and publishes nothing; the same message as JSON is
// a repeat too (keys are compared on the message, not the bytes); a
// different message with the key is refused with 422.
func TestIdempotencyReplayAndConflict(t *testing.T) {
	c := startIdempotencyCaddy(t, idempotencySite)
	s := subscribe(t, c.URL+"/events?topic=a", nil)
	hub, _ := LookupHub("default")
	p := keyed{path: "/publish", auth: "s3cret", key: "order-1", body: "topic=a&data=hello"}
	first := p.send(t, c)
	if first.status != 200 || first.replayed != "" {
		t.Fatalf("first publish: %+v", first)
	}
	for _, repeat := range []keyed{p, {path: p.path, auth: p.auth, key: p.key, ctype: "application/json", body: `{"topic":"a","data":"hello"}`}} {
		if a := repeat.send(t, c); a != (answer{200, first.body, "true"}) {
			t.Fatalf("repeat %q: %+v, want 200 %q replayed", repeat.body, a, first.body)
		}
	}
	for _, body := range []string{"topic=a&data=changed", "topic=b&data=hello", "topic=a&data=hello&type=x", "topic=a&data=hello&retry=5", "topic=a&data=hello&private"} {
		a := keyed{path: p.path, auth: p.auth, key: p.key, body: body}.send(t, c)
		if a.status != 422 || !strings.Contains(a.body, "different message") || strings.Count(a.body, "\n") != 1 {
			t.Fatalf("changed body %q: %+v, want 422 with a reason", body, a)
		}
	}
	if ev := s.nextEvent(time.Second); ev.ID != first.body || ev.Data != "hello" {
		t.Fatalf("got %+v, want %s", ev, first.body)
	}
	s.quiet(200 * time.Millisecond)
	if r, cf := hub.stats.replays.Load(), hub.stats.conflicts[conflictDifferent].Load(); r != 2 || cf != 5 {
		t.Fatalf("%d replays and %d conflicts counted, want 2 and 5", r, cf)
	}
	// the Go API takes the key too, and answers a repeat the same way
	m := Message{Topics: []string{"a"}, Data: "from go", IdempotencyKey: "order-1"}
	p1, err1 := hub.PublishAs(context.Background(), m, "")
	p2, err2 := hub.PublishAs(context.Background(), m, "")
	if err1 != nil || err2 != nil || p1.Replayed || !p2.Replayed || p2.ID != p1.ID {
		t.Fatalf("Go API: %+v %v, then %+v %v", p1, err1, p2, err2)
	}
	m.Data = "changed"
	if _, err := hub.Publish(context.Background(), m); !errors.Is(err, ErrIdempotencyConflict) {
		t.Fatalf("Go API, changed message: %v, want ErrIdempotencyConflict", err)
	}
}

// Every bad key gets 400 with a one-line reason, and publishes nothing.
func TestIdempotencyBadKeys(t *testing.T) {
	c := startIdempotencyCaddy(t, idempotencySite)
	s := subscribe(t, c.URL+"/events?topic=a", nil)
	for name, values := range map[string][]string{
		"empty":          {""},
		"256 chars":      {strings.Repeat("k", 256)},
		"control char":   {"a\tb"},
		"non-ASCII":      {"clé"},
		"no-break space": {"\u00a0x"},
		"twice":          {"a", "b"},
	} {
		req := keyed{path: "/publish", auth: "s3cret", body: "topic=a&data=x"}.request(context.Background(), c.URL)
		req.Header["Idempotency-Key"] = values
		status, body := do(t, req)
		if status != 400 || !strings.Contains(body, "Idempotency-Key") || strings.Count(body, "\n") != 1 {
			t.Errorf("%s: %d %q, want 400 with a one-line reason", name, status, body)
		}
	}
	s.quiet(200 * time.Millisecond)
}

// A repeat while the first publish with the key is still in flight gets
// 409; the first then completes, once.
func TestIdempotencyInFlight(t *testing.T) {
	c := startIdempotencyCaddy(t, heldSite)
	s := subscribe(t, c.URL+"/events?topic=a", nil)
	held, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	hold := func(ev *Event) {
		if ev.Data == "x" {
			once.Do(func() {
				close(held)
				<-release
			})
		}
	}
	holdPublishOnce.Store(&hold)
	t.Cleanup(func() { holdPublishOnce.Store(nil) })
	p := keyed{path: "/publish", auth: "s3cret", key: "slow", body: "topic=a&data=x"}
	firstDone := make(chan answer, 1)
	go func() {
		a, err := p.try(testClient, c.URL)
		if err != nil {
			t.Error(err)
		}
		firstDone <- a
	}()
	<-held
	second := p.send(t, c)
	close(release)
	first := <-firstDone
	if second.status != 409 || !strings.Contains(second.body, "in progress") {
		t.Fatalf("second, while the first is in flight: %+v, want 409", second)
	}
	if first.status != 200 || first.replayed != "" {
		t.Fatalf("first: %+v, want 200", first)
	}
	if third := p.send(t, c); third != (answer{200, first.body, "true"}) {
		t.Fatalf("third, after the first: %+v, want a replay of %s", third, first.body)
	}
	if ev := s.nextEvent(time.Second); ev.ID != first.body {
		t.Fatalf("got %+v, want %s", ev, first.body)
	}
	s.quiet(200 * time.Millisecond)
	hub, _ := LookupHub("default")
	if n := hub.stats.conflicts[conflictInFlight].Load(); n != 1 {
		t.Fatalf("%d in-flight conflicts counted, want 1", n)
	}
}

// The same key value from different publishers names different messages:
// two static tokens, two JWT subjects, a JWT without subject, anonymous.
func TestIdempotencyScopedPerPublisher(t *testing.T) {
	c := startIdempotencyCaddy(t, idempotencySite)
	s := subscribe(t, c.URL+"/events?topic=a", nil)
	grant := map[string]any{"publish": []string{"*"}}
	publishers := []keyed{
		{path: "/publish", auth: "s3cret"},
		{path: "/other", auth: "other-s3cret"},
		{path: "/jwt", auth: hs256(t, jwt.MapClaims{"sub": "alice", "push": grant})},
		{path: "/jwt", auth: hs256(t, jwt.MapClaims{"sub": "bob", "push": grant})},
		{path: "/jwt", auth: hs256(t, jwt.MapClaims{"push": grant})},
		{path: "/open"},
	}
	ids := make(map[string]bool)
	for round := range 2 {
		for i, p := range publishers {
			p.key, p.body = "same-key", "topic=a&data="+strconv.Itoa(i)
			a := p.send(t, c)
			if a.status != 200 || (a.replayed == "true") != (round == 1) {
				t.Fatalf("publisher %d, round %d: %+v", i, round, a)
			}
			ids[a.body] = true
		}
	}
	if len(ids) != len(publishers) {
		t.Fatalf("%d distinct ids, want %d", len(ids), len(publishers))
	}
	// alice's key again, with another token of hers: the same scope
	alice := keyed{path: "/jwt", auth: hs256(t, jwt.MapClaims{"sub": "alice", "push": grant, "jti": "2"}), key: "same-key", body: "topic=a&data=2"}
	if a := alice.send(t, c); a.status != 200 || a.replayed != "true" {
		t.Fatalf("alice with another token: %+v, want a replay", a)
	}
	evs := s.events(len(publishers), 2*time.Second)
	for i, ev := range evs {
		if ev.Data != strconv.Itoa(i) {
			t.Fatalf("event %d: %+v", i, ev)
		}
	}
	s.quiet(200 * time.Millisecond)
}

// idempotency_window 0 ignores keys; a short window forgets them.
func TestIdempotencyWindow(t *testing.T) {
	site := strings.Replace(idempotencySite, "idempotency_window 1h", "idempotency_window 0", 1)
	c := startIdempotencyCaddy(t, site)
	p := keyed{path: "/publish", auth: "s3cret", key: "k", body: "topic=a&data=x"}
	a1, a2 := p.send(t, c), p.send(t, c)
	if a1.status != 200 || a2.status != 200 || a1.body == a2.body || a2.replayed != "" {
		t.Fatalf("window 0: %+v then %+v, want two events", a1, a2)
	}
	if a := (keyed{path: "/publish", auth: "s3cret", key: "k", body: "topic=a&data=other"}).send(t, c); a.status != 200 {
		t.Fatalf("window 0, another message: %+v, want 200", a)
	}
	// the window is a hub option a reload changes, keeping the hub
	const window = 2 * time.Second
	c.Load(strings.Replace(idempotencySite, "idempotency_window 1h", "idempotency_window "+window.String(), 1))
	start := time.Now()
	b1, b2 := p.send(t, c), p.send(t, c)
	if time.Since(start) < window && (b2.body != b1.body || b2.replayed != "true") {
		t.Fatalf("within the window: %+v then %+v, want a replay", b1, b2)
	}
	time.Sleep(time.Until(start.Add(window + 500*time.Millisecond)))
	if b3 := p.send(t, c); b3.status != 200 || b3.body == b1.body || b3.replayed != "" {
		t.Fatalf("after the window: %+v, want a new event (first %s)", b3, b1.body)
	}
}

// The answer is lost once the event is published, as when the connection
// breaks on the way back; the client retries with the same key and gets
// the first id, and the subscriber gets the event once.
func TestIdempotencyRetryAfterCutConnection(t *testing.T) {
	c := startIdempotencyCaddy(t, idempotencySite)
	s := subscribe(t, c.URL+"/events?topic=a", nil)
	cuts := newAnswerLoss(func(key string) bool { return key == "cut-me" })
	p := keyed{path: "/publish", auth: "s3cret", key: "cut-me", body: "topic=a&data=once"}
	client := cuts.on(newTestClient())
	defer client.CloseIdleConnections()
	var got answer
	attempts := 0
	for ; attempts < 5; attempts++ {
		a, err := p.try(client, c.URL)
		if err == nil {
			got = a
			break
		}
		t.Logf("attempt %d: %v", attempts+1, err)
	}
	// Go's transport may retry on its own: the key makes the POST
	// replayable
	if cuts.Load() != 1 || attempts > 1 || got.status != 200 || got.replayed != "true" {
		t.Fatalf("%d cuts, %d failed attempts, then %+v: want one cut, then a replay", cuts.Load(), attempts, got)
	}
	if ev := s.nextEvent(time.Second); ev.ID != got.body || ev.Data != "once" {
		t.Fatalf("got %+v, want %s", ev, got.body)
	}
	s.quiet(300 * time.Millisecond)
}

// answerLoss loses, on the clients it is on, the answer to the first
// publish with each key that lose selects, once the event is published:
// Caddy stores the event and answers, and the client gets an error in
// place of the answer, as when the connection breaks on the way back.
// It counts the answers lost.
type answerLoss struct {
	lose func(key string) bool
	mu   sync.Mutex
	seen map[string]bool
	n    atomic.Int64
}

func newAnswerLoss(lose func(key string) bool) *answerLoss {
	return &answerLoss{lose: lose, seen: make(map[string]bool)}
}

// Load is how many answers were lost.
func (l *answerLoss) Load() int64 { return l.n.Load() }

// on has client's answers lost, and returns it.
func (l *answerLoss) on(client *http.Client) *http.Client {
	client.Transport = losingTransport{rt: client.Transport, loss: l}
	return client
}

var errAnswerLost = errors.New("the answer was lost on the way back")

type losingTransport struct {
	rt   http.RoundTripper
	loss *answerLoss
}

func (t losingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := t.rt.RoundTrip(r)
	if err != nil || resp.StatusCode != http.StatusOK {
		return resp, err // not published
	}
	key := r.Header.Get("Idempotency-Key")
	l := t.loss
	l.mu.Lock()
	first := !l.seen[key]
	l.seen[key] = true
	l.mu.Unlock()
	if first && l.lose(key) {
		l.n.Add(1)
		resp.Body.Close() // unread: the connection goes with it
		return nil, errAnswerLost
	}
	return resp, nil
}

func (t losingTransport) CloseIdleConnections() {
	if c, ok := t.rt.(interface{ CloseIdleConnections() }); ok {
		c.CloseIdleConnections()
	}
}

// retries counts retryPublish's retries.
var retries atomic.Int64

// retryPublish sends p until it gets an answer, retrying on any
// connection error, with the same key.
func retryPublish(t *testing.T, client *http.Client, base string, p keyed) answer {
	for attempt := 0; ; attempt++ {
		a, err := p.try(client, base)
		if err == nil {
			return a
		}
		retries.Add(1)
		if attempt == 50 {
			t.Errorf("%s: gave up after %d attempts: %v", p.key, attempt, err)
			return a
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Two publishers at 100 events/s each with keys while Caddy reloads five
// times, retrying on any connection error with the same key: a subscriber
// that resumes with Last-Event-ID across the reloads gets every event
// exactly once, in order per publisher.
func TestIdempotencyThroughReloads(t *testing.T) {
	c := startIdempotencyCaddy(t, idempotencySite)
	// and the first answer to every 10th publish is lost
	cuts := newAnswerLoss(func(key string) bool { return strings.HasSuffix(key, "5") })
	const perPublisher = 400
	publishers := []keyed{{path: "/publish", auth: "s3cret"}, {path: "/other", auth: "other-s3cret"}}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var (
		mu     sync.Mutex
		got    []sseEvent
		resume int
	)
	subDone, opened := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(subDone)
		client := newTestClient()
		defer client.CloseIdleConnections()
		last, open := "", opened
		for ctx.Err() == nil {
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, c.URL+"/events?topic=r", nil)
			if last != "" {
				req.Header.Set("Last-Event-ID", last)
			}
			resp, err := client.Do(req)
			if err != nil {
				time.Sleep(20 * time.Millisecond)
				continue
			}
			if open != nil {
				// subscribed: the publishers may start (a fresh stream
				// starts from the head, so an event published before
				// would never reach it)
				close(open)
				open = nil
			}
			done := false
			_ = parseSSE(resp.Body, func(it sseItem) bool {
				if it.Event == nil {
					return true
				}
				mu.Lock()
				defer mu.Unlock()
				got = append(got, *it.Event)
				last = it.Event.ID
				done = len(got) >= len(publishers)*perPublisher
				return !done
			})
			resp.Body.Close()
			if done {
				return
			}
			mu.Lock()
			resume++
			mu.Unlock()
		}
	}()
	select {
	case <-opened:
	case <-time.After(10 * time.Second):
		t.Fatal("the subscriber's stream did not open")
	}
	var wg sync.WaitGroup
	acked := make([][]string, len(publishers))
	for i, p := range publishers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			client := cuts.on(newTestClient())
			defer client.CloseIdleConnections()
			tick := time.NewTicker(10 * time.Millisecond)
			defer tick.Stop()
			for n := 0; n < perPublisher && ctx.Err() == nil; n++ {
				<-tick.C
				p.key = fmt.Sprintf("p%d-%d", i, n)
				p.body = fmt.Sprintf("topic=r&data=%d/%d", i, n)
				a := retryPublish(t, client, c.URL, p)
				if a.status != 200 {
					t.Errorf("%s: %+v", p.key, a)
					return
				}
				acked[i] = append(acked[i], a.body)
			}
		}()
	}
	for range 5 {
		time.Sleep(300 * time.Millisecond)
		c.Load(idempotencySite)
	}
	wg.Wait()
	select {
	case <-subDone:
	case <-time.After(10 * time.Second):
		mu.Lock()
		defer mu.Unlock()
		seen := make(map[string]bool)
		for _, ev := range got {
			seen[ev.Data] = true
		}
		var missing []string
		for i := range publishers {
			for n := range perPublisher {
				if d := fmt.Sprintf("%d/%d", i, n); !seen[d] {
					missing = append(missing, d)
				}
			}
		}
		t.Fatalf("the subscriber has %d events of %d; missing: %q", len(got), len(publishers)*perPublisher, missing[:min(len(missing), 20)])
	}
	cancel()
	t.Logf("%d answers lost, %d publishes retried by the test's loop (more by Go's transport), %d streams resumed", cuts.Load(), retries.Load(), resume)
	if cuts.Load() == 0 {
		t.Fatal("no answer was lost")
	}
	next := make([]int, len(publishers))
	for _, ev := range got {
		var i, n int
		if _, err := fmt.Sscanf(ev.Data, "%d/%d", &i, &n); err != nil || i < 0 || i >= len(publishers) {
			t.Fatalf("unexpected event %+v", ev)
		}
		if n != next[i] || acked[i][n] != ev.ID {
			t.Fatalf("publisher %d: got event %d (%s), want %d: lost, duplicated or out of order", i, n, ev.ID, next[i])
		}
		next[i]++
	}
}

// The memory broker's key table stays within its bounds: its bytes count
// in history_max_bytes, at most half of it, oldest keys out first.
func TestIdempotencyKeyTableBounded(t *testing.T) {
	const maxBytes = 1 << 20
	h := openHub(t, HistoryLimits{Events: 10, TTL: time.Hour, MaxBytes: maxBytes})
	ctx := context.Background()
	const n = 20000
	var firstID string
	for i := range n {
		p, err := h.PublishAs(ctx, Message{Topics: []string{"t"}, Data: "x", IdempotencyKey: strconv.Itoa(i)}, "")
		if err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			firstID = p.ID
		}
	}
	m := h.broker.(*memoryStore)
	m.mu.Lock()
	keys, bytes := len(m.keys.entries), m.bytes
	m.mu.Unlock()
	if keys > maxBytes/2/keyCost || keys < maxBytes/4/keyCost {
		t.Fatalf("%d keys kept, want about %d", keys, maxBytes/2/keyCost)
	}
	if bytes > maxBytes {
		t.Fatalf("history is %d bytes, over history_max_bytes %d", bytes, maxBytes)
	}
	// the newest key is remembered, the oldest forgotten
	if p, _ := h.PublishAs(ctx, Message{Topics: []string{"t"}, Data: "x", IdempotencyKey: strconv.Itoa(n - 1)}, ""); !p.Replayed {
		t.Fatalf("newest key: %+v, want a replay", p)
	}
	if p, _ := h.PublishAs(ctx, Message{Topics: []string{"t"}, Data: "x", IdempotencyKey: "0"}, ""); p.Replayed || p.ID == firstID {
		t.Fatalf("oldest key: %+v, want a new event", p)
	}
}

// BenchmarkIdempotencyKeyTable remembers 1,000,000 distinct keys in a
// key table bounded as under the default history_max_bytes (64 MiB, half
// of it for keys), and reports the keys kept and the most heap a key took
// at any of ten points over the second half (the map's room for deleted
// keys grows until it is made afresh):
//
//	go test -run '^$' -bench IdempotencyKeyTable -benchtime 1x .
func BenchmarkIdempotencyKeyTable(b *testing.B) {
	const distinct = 1_000_000
	for range b.N {
		before := liveHeap()
		var table keyTable
		now := time.Now()
		worst := 0.0
		for i := range distinct {
			k := IdempotencyKey{ID: idempotencyID("", strconv.Itoa(i)), Window: time.Hour}
			table.remember(k, uint64(i), now)
			table.trim(now, DefaultHistoryMaxBytes/2)
			if i >= distinct/2 && (i+1)%(distinct/20) == 0 {
				worst = max(worst, float64(liveHeap()-before)/float64(len(table.entries)))
			}
		}
		kept := len(table.entries)
		if int64(kept)*keyCost > DefaultHistoryMaxBytes/2 {
			b.Fatalf("%d keys kept: over the bound", kept)
		}
		if worst > keyCost {
			b.Errorf("a key took up to %.0f bytes, more than keyCost (%d)", worst, keyCost)
		}
		b.ReportMetric(float64(kept), "keys")
		b.ReportMetric(worst, "bytes/key")
		runtime.KeepAlive(&table)
	}
}
