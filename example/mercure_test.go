package example

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/fetch"
	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"
)

// mercureSecret is the key Mercure's docs show (34 bytes: caddy-push
// wants at least 32).
const mercureSecret = "!ChangeThisMercureHubJWTSecretKey!"

// annToken is the subscriber token the app gives Ann in its cookie: she
// may receive the private updates of her own boxes.
const annToken = `{"mercure":{"subscribe":["https://example.com/users/ann/{box}"]}}`

// mercureToken is an HS256 JWT of claims, made as Symfony's Mercure
// component makes one (lcobucci/jwt's header, typ first), with no JWT
// library: the hub must take a token it did not make.
func mercureToken(claims string) string {
	enc := base64.RawURLEncoding
	signed := enc.EncodeToString([]byte(`{"typ":"JWT","alg":"HS256"}`)) + "." + enc.EncodeToString([]byte(claims))
	mac := hmac.New(sha256.New, []byte(mercureSecret))
	mac.Write([]byte(signed))
	return signed + "." + enc.EncodeToString(mac.Sum(nil))
}

// mercurePage is a page as Mercure's docs write one: an EventSource on
// the hub per subscription, fetch to publish. window.log records what the
// page sees, for the tests; e.opens is the connection an event came on.
const mercurePage = `<!doctype html>
<meta charset="utf-8">
<link rel="icon" href="data:,">
<title>Mercure subscriber</title>
<script>
window.log = {};
const sources = {};
function listen(name, url, types, init) {
  const log = window.log[name] = { opens: 0, errors: 0, state: 0, events: [] };
  const source = sources[name] = new EventSource(url, init);
  source.onopen = () => { log.opens++; log.state = source.readyState; };
  source.onerror = () => { log.errors++; log.state = source.readyState; };
  for (const type of types) {
    source.addEventListener(type, e => log.events.push({ id: e.lastEventId, type: e.type, data: e.data, opens: log.opens }));
  }
}
function stop(name) {
  sources[name].close();
  window.log[name].state = sources[name].readyState;
}
async function publish(name, hub, token, fields) {
  const log = window.log[name] = { done: false };
  try {
    const resp = await fetch(hub, { method: 'POST', headers: { Authorization: 'Bearer ' + token }, body: new URLSearchParams(fields) });
    log.status = resp.status;
    log.id = await resp.text();
  } catch (e) {
    log.error = String(e);
  }
  log.done = true;
}
</script>
`

// mercureSite is the hub as a Mercure user configures it, beside the app:
// its page, and /login, where the app gives Ann her subscriber cookie
// (HttpOnly, for the hub's path only, as Symfony's Mercure bundle sets
// it). SITES stands for more sites; CORS for the hub's cors_origins line.
const mercureSite = `{
}

(page) {
	root * .
	file_server
}

http://localhost:8080 {
	push_mercure {
		publisher_jwt ` + mercureSecret + `
		subscriber_jwt ` + mercureSecret + `
		anonymous
		CORS
	}
	handle /login {
		header Set-Cookie "mercureAuthorization=TOKEN; Path=/.well-known/mercure; HttpOnly; SameSite=Strict"
		redir * /
	}
	import page
}
SITES`

// startMercure runs mercureSite with cors (the hub's cors_origins line,
// or none) and more sites.
func startMercure(t *testing.T, cors, sites string) *demo {
	t.Helper()
	site := strings.NewReplacer("CORS", cors, "TOKEN", mercureToken(annToken), "SITES", sites).Replace(mercureSite)
	return startPage(t, site, mercurePage)
}

// freePort is a loopback port free for another site.
func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return strconv.Itoa(l.Addr().(*net.TCPAddr).Port)
}

// mercurePublish posts an update as Symfony's and Laravel's Mercure
// publishers do, a form with the publisher's token, and returns the id
// the hub answers.
func (d *demo) mercurePublish(fields url.Values) string {
	d.t.Helper()
	req, err := http.NewRequest(http.MethodPost, d.base+"/.well-known/mercure", strings.NewReader(fields.Encode()))
	if err != nil {
		d.t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Authorization", "Bearer "+mercureToken(`{"mercure":{"publish":["*"]}}`))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		d.t.Fatal(err)
	}
	defer resp.Body.Close()
	id, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		d.t.Fatalf("publish %v: %d %s", fields, resp.StatusCode, id)
	}
	return string(id)
}

// hubQuery is the hub's path with a query of name, value pairs.
func hubQuery(kv ...string) string {
	q := url.Values{}
	for i := 0; i < len(kv); i += 2 {
		q.Add(kv[i], kv[i+1])
	}
	return "/.well-known/mercure?" + q.Encode()
}

// sourceLog is what the page recorded of one EventSource.
type sourceLog struct {
	Opens  int           `json:"opens"`
	Errors int           `json:"errors"`
	Events []sourceEvent `json:"events"`
}

type sourceEvent struct {
	ID    string `json:"id"`
	Type  string `json:"type"`
	Data  string `json:"data"`
	Opens int    `json:"opens"`
}

// listen opens an EventSource named name on the page, for events of these
// types; withCredentials sends cookies to another origin.
func listen(t *testing.T, ctx context.Context, name, hub string, withCredentials bool, types ...string) {
	t.Helper()
	call := fmt.Sprintf(`listen(%s, %s, %s, { withCredentials: %t })`, jsValue(name), jsValue(hub), jsValue(types), withCredentials)
	run(t, ctx, 5*time.Second, chromedp.Evaluate(call, nil))
}

// jsValue is v as a JavaScript literal.
func jsValue(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return string(b)
}

// pageLog reads what the page recorded of the EventSource named name.
func pageLog(t *testing.T, ctx context.Context, name string) sourceLog {
	t.Helper()
	var l sourceLog
	run(t, ctx, 5*time.Second, chromedp.Evaluate(`window.log[`+jsValue(name)+`]`, &l))
	return l
}

// data lists the events' data, in the order they came.
func data(events []sourceEvent) string {
	list := make([]string, len(events))
	for i, e := range events {
		list[i] = e.Data
	}
	return strings.Join(list, ", ")
}

// Each kind of selector a Mercure page uses gets an update a Symfony-style
// publisher posts, with the hub's "#..." id as e.lastEventId and its type;
// a subscription that does not match it gets nothing.
func TestMercureBrowserMatchers(t *testing.T) {
	d := startMercure(t, "", "")
	ctx := browser(t)
	run(t, ctx, 10*time.Second, chromedp.Navigate(d.base+"/"), waitJS(`window.log !== undefined`))
	subs := []struct{ name, param, selector string }{
		{"match", "match", "https://example.com/books/1"},
		{"match_urlpattern", "match_urlpattern", "https://example.com/books/:id"},
		{"match_uritemplate", "match_uritemplate", "https://example.com/books/{id}"},
		{"topic (v0.21)", "topic", "https://example.com/books/{id}"},
		{"match=*", "match", "*"},
		{"authors only", "match_urlpattern", "https://example.com/authors/:id"},
	}
	// six streams: as many as Chromium opens to one HTTP/1.1 origin
	for _, s := range subs {
		listen(t, ctx, s.name, hubQuery(s.param, s.selector), false, "message", "book", "author")
		run(t, ctx, 5*time.Second, waitJS(fmt.Sprintf(`window.log[%q].opens === 1`, s.name)))
	}
	book := d.mercurePublish(url.Values{"topic": {"https://example.com/books/1"}, "type": {"book"}, "data": {`{"title":"Dune"}`}})
	// "authors only" gets this one first, and a stream keeps the order:
	// it never got the book
	author := d.mercurePublish(url.Values{"topic": {"https://example.com/authors/1"}, "data": {`{"name":"Herbert"}`}})
	for _, id := range []string{book, author} {
		if !strings.HasPrefix(id, "#") {
			t.Fatalf("the hub answered id %q, want #<id>", id)
		}
	}
	run(t, ctx, 5*time.Second, waitJS(`window.log['match=*'].events.length === 2 && window.log['authors only'].events.length === 1`))
	for _, s := range subs {
		want := []sourceEvent{{ID: book, Type: "book", Data: `{"title":"Dune"}`, Opens: 1}}
		switch s.name {
		case "match=*":
			want = append(want, sourceEvent{ID: author, Type: "message", Data: `{"name":"Herbert"}`, Opens: 1})
		case "authors only":
			want = []sourceEvent{{ID: author, Type: "message", Data: `{"name":"Herbert"}`, Opens: 1}}
		}
		run(t, ctx, 5*time.Second, waitJS(fmt.Sprintf(`window.log[%q].events.length >= %d`, s.name, len(want))))
		if got := pageLog(t, ctx, s.name); fmt.Sprint(got.Events) != fmt.Sprint(want) {
			t.Errorf("%s (%s=%s): got %+v, want %+v", s.name, s.param, s.selector, got.Events, want)
		}
	}
}

// A page whose app set Ann's mercureAuthorization cookie gets the private
// updates of her topics (canonical or alternate) and not Bob's; a page
// without the cookie gets only public updates.
func TestMercureBrowserPrivateUpdates(t *testing.T) {
	d := startMercure(t, "", "")
	ann, visitor := browser(t), browser(t)
	run(t, ann, 10*time.Second, chromedp.Navigate(d.base+"/login"), waitJS(`window.log !== undefined`))
	run(t, visitor, 10*time.Second, chromedp.Navigate(d.base+"/"), waitJS(`window.log !== undefined`))
	const annBox, bobBox = "https://example.com/users/ann/inbox", "https://example.com/users/bob/inbox"
	for _, ctx := range []context.Context{ann, visitor} {
		listen(t, ctx, "inbox", hubQuery("match", annBox, "match", bobBox), false, "message")
		run(t, ctx, 5*time.Second, waitJS(`window.log.inbox.opens === 1`))
	}
	d.mercurePublish(url.Values{"topic": {annBox}, "private": {"on"}, "data": {"for Ann"}})
	d.mercurePublish(url.Values{"topic": {bobBox}, "private": {"on"}, "data": {"for Bob"}})
	d.mercurePublish(url.Values{"topic": {bobBox, annBox}, "private": {"on"}, "data": {"for Bob, Ann in copy"}})
	// last, so once it is in, each page has had all it will get
	d.mercurePublish(url.Values{"topic": {bobBox}, "data": {"for everyone"}})
	for _, c := range []struct {
		name string
		ctx  context.Context
		want string
	}{
		{"Ann's page", ann, "for Ann, for Bob, Ann in copy, for everyone"},
		{"a page without the cookie", visitor, "for everyone"},
	} {
		run(t, c.ctx, 5*time.Second, waitJS(`window.log.inbox.events.some(e => e.data === 'for everyone')`))
		if got := data(pageLog(t, c.ctx, "inbox").Events); got != c.want {
			t.Errorf("%s got %q, want %q", c.name, got, c.want)
		}
	}
}

// Publishers' own ids (urn:uuid:...) are what the page sees as
// e.lastEventId. When a reload ends the stream, the browser comes back by
// itself with Last-Event-ID: the test holds that request until it has
// published more, and the page gets exactly what it missed, once, in
// order. A page that closed its EventSource comes back with
// ?last_event_id=#<hub id> and gets what it missed the same way.
func TestMercureBrowserCustomIDsAndResume(t *testing.T) {
	d := startMercure(t, "", "")
	ctx := browser(t)
	run(t, ctx, 10*time.Second, chromedp.Navigate(d.base+"/"), waitJS(`window.log !== undefined`))
	const order = "https://example.com/orders/42"
	listen(t, ctx, "order", hubQuery("match", order), false, "message", "push.reset")
	run(t, ctx, 5*time.Second, waitJS(`window.log.order.opens === 1`))
	const placed = "urn:uuid:0d5c3b9e-7a51-4f0c-9a8e-2b1c6a9d4e01"
	if id := d.mercurePublish(url.Values{"topic": {order}, "id": {placed}, "data": {"placed"}}); id != placed {
		t.Fatalf("the hub answered id %q, want the publisher's %q", id, placed)
	}
	run(t, ctx, 5*time.Second, waitJS(`window.log.order.events.length === 1`))
	if got := pageLog(t, ctx, "order").Events[0]; got.ID != placed {
		t.Fatalf("e.lastEventId is %q, want %q", got.ID, placed)
	}

	// the reload ends the stream; the browser's reconnect is held until
	// the test has published what the page will have missed
	w := watchHub(t, ctx)
	d.reload()
	var reconnect *fetch.EventRequestPaused
	select {
	case reconnect = <-w.paused:
	case <-time.After(5 * time.Second):
		t.Fatal("the browser did not reconnect within 5s of the reload")
	}
	const paid = "urn:uuid:4f7e2a10-93c4-4d8b-b0e5-6a2f1c8d3b72"
	d.mercurePublish(url.Values{"topic": {order}, "id": {paid}, "data": {"paid"}})
	shipped := d.mercurePublish(url.Values{"topic": {order}, "data": {"shipped"}})
	run(t, ctx, 5*time.Second, fetch.ContinueRequest(reconnect.RequestID), fetch.Disable())
	if got := w.header(reconnect.NetworkID, "Last-Event-ID", false); got != placed {
		t.Fatalf("the browser reconnected with Last-Event-ID %q, want %q", got, placed)
	}
	if got := w.header(reconnect.NetworkID, "Mercure-Last-Event-ID", true); got != placed {
		t.Fatalf("the hub answered the reconnect with Mercure-Last-Event-ID %q, want %q", got, placed)
	}
	run(t, ctx, 5*time.Second, waitJS(`window.log.order.opens === 2 && window.log.order.events.length === 3`))
	// live, after the replay: a duplicate of the replay would come before it
	out := d.mercurePublish(url.Values{"topic": {order}, "data": {"out for delivery"}})
	run(t, ctx, 5*time.Second, waitJS(`window.log.order.events.some(e => e.data === 'out for delivery')`))
	want := []sourceEvent{
		{ID: placed, Type: "message", Data: "placed", Opens: 1},
		{ID: paid, Type: "message", Data: "paid", Opens: 2},
		{ID: shipped, Type: "message", Data: "shipped", Opens: 2},
		{ID: out, Type: "message", Data: "out for delivery", Opens: 2},
	}
	if got := pageLog(t, ctx, "order"); fmt.Sprint(got.Events) != fmt.Sprint(want) || got.Opens != 2 {
		t.Fatalf("after the reload the page has %+v (opened %d times), want %+v", got.Events, got.Opens, want)
	}

	// the page closes its stream, misses two updates, and opens a new one
	// from the last id it saw, a hub id
	run(t, ctx, 5*time.Second, chromedp.Evaluate(`stop('order')`, nil))
	const delivered = "urn:uuid:c2a8e6f4-1b3d-4e5f-8a7b-9c0d1e2f3a4b"
	d.mercurePublish(url.Values{"topic": {order}, "id": {delivered}, "data": {"delivered"}})
	reviewed := d.mercurePublish(url.Values{"topic": {order}, "data": {"reviewed"}})
	listen(t, ctx, "again", hubQuery("match", order, "last_event_id", out), false, "message", "push.reset")
	run(t, ctx, 5*time.Second, waitJS(`window.log.again.events.length === 2`))
	archived := d.mercurePublish(url.Values{"topic": {order}, "data": {"archived"}})
	run(t, ctx, 5*time.Second, waitJS(`window.log.again.events.some(e => e.data === 'archived')`))
	want = []sourceEvent{
		{ID: delivered, Type: "message", Data: "delivered", Opens: 1},
		{ID: reviewed, Type: "message", Data: "reviewed", Opens: 1},
		{ID: archived, Type: "message", Data: "archived", Opens: 1},
	}
	if got := pageLog(t, ctx, "again"); fmt.Sprint(got.Events) != fmt.Sprint(want) {
		t.Fatalf("resumed with last_event_id=%s, the page has %+v, want %+v", out, got.Events, want)
	}
}

// hubWatch holds the page's requests to the hub before they leave the
// browser (paused, until fetch.ContinueRequest), and records the headers
// they went out and came back with. (A paused request does not show
// Last-Event-ID: the network stack adds it after.)
type hubWatch struct {
	t        *testing.T
	paused   chan *fetch.EventRequestPaused
	mu       sync.Mutex
	sent     map[network.RequestID]network.Headers
	answered map[network.RequestID]network.Headers
}

func watchHub(t *testing.T, ctx context.Context) *hubWatch {
	w := &hubWatch{
		t:        t,
		paused:   make(chan *fetch.EventRequestPaused, 1),
		sent:     make(map[network.RequestID]network.Headers),
		answered: make(map[network.RequestID]network.Headers),
	}
	chromedp.ListenTarget(ctx, func(ev any) {
		w.mu.Lock()
		defer w.mu.Unlock()
		switch ev := ev.(type) {
		case *fetch.EventRequestPaused:
			select {
			case w.paused <- ev:
			default:
			}
		case *network.EventRequestWillBeSentExtraInfo:
			w.sent[ev.RequestID] = ev.Headers
		case *network.EventResponseReceivedExtraInfo:
			w.answered[ev.RequestID] = ev.Headers
		}
	})
	run(t, ctx, 5*time.Second, network.Enable(), fetch.Enable().WithPatterns([]*fetch.RequestPattern{
		{URLPattern: "*/.well-known/mercure*", RequestStage: fetch.RequestStageRequest},
	}))
	return w
}

// header is a header of request id as it was sent (or answered), by any
// case of its name, once the browser reports it.
func (w *hubWatch) header(id network.RequestID, name string, answer bool) string {
	w.t.Helper()
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		w.mu.Lock()
		h, ok := w.sent[id]
		if answer {
			h, ok = w.answered[id]
		}
		w.mu.Unlock()
		if !ok {
			continue
		}
		for k, v := range h {
			if strings.EqualFold(k, name) {
				s, _ := v.(string)
				return s
			}
		}
		return ""
	}
	w.t.Fatalf("the browser reported no headers of request %s", id)
	return ""
}

// A page of an origin in cors_origins subscribes to the hub on another
// origin with withCredentials: the browser sends the app's cookie, and
// the page gets public updates and Ann's private ones; it publishes with
// fetch and an Authorization header, through a preflight. A page of an
// origin not listed fails (onerror, CLOSED, no events), and its publish
// never reaches the hub.
func TestMercureBrowserCORS(t *testing.T) {
	app, stranger := freePort(t), freePort(t)
	appOrigin, strangerOrigin := "http://127.0.0.1:"+app, "http://127.0.0.1:"+stranger
	d := startMercure(t, "cors_origins "+appOrigin, fmt.Sprintf(`
%s {
	import page
}

%s {
	import page
}
`, appOrigin, strangerOrigin))
	ctx := browser(t)
	// the app's cookie, for the hub's host: it goes to every port
	run(t, ctx, 10*time.Second, chromedp.Navigate(d.base+"/login"), waitJS(`window.log !== undefined`))
	const news, annBox = "https://example.com/news", "https://example.com/users/ann/inbox"
	hub := d.base + hubQuery("match", news, "match", annBox, "last_event_id", "earliest")
	publisher := mercureToken(`{"mercure":{"publish":["*"]}}`)
	publishJS := func(data string) string {
		fields := map[string]string{"topic": news, "data": data}
		return fmt.Sprintf(`void publish('publish', %s, %s, %s)`, jsValue(d.base+"/.well-known/mercure"), jsValue(publisher), jsValue(fields))
	}

	run(t, ctx, 10*time.Second, chromedp.Navigate(strangerOrigin+"/"), waitJS(`window.log !== undefined`))
	listen(t, ctx, "feed", hub, true, "message")
	run(t, ctx, 5*time.Second,
		waitJS(`window.log.feed.state === EventSource.CLOSED`),
		chromedp.Evaluate(publishJS("from a stranger"), nil),
		waitJS(`window.log.publish.done`),
	)
	var refused struct {
		Status int    `json:"status"`
		Error  string `json:"error"`
	}
	run(t, ctx, 5*time.Second, chromedp.Evaluate(`window.log.publish`, &refused))
	if l := pageLog(t, ctx, "feed"); l.Opens != 0 || l.Errors == 0 || len(l.Events) != 0 {
		t.Errorf("a page of an origin not listed: opened %d times, %d errors, events %+v; want it refused", l.Opens, l.Errors, l.Events)
	}
	if refused.Error == "" || refused.Status != 0 {
		t.Errorf("a page of an origin not listed published: %+v", refused)
	}

	// from earliest: had the stranger's publish got through, it would be here
	run(t, ctx, 10*time.Second, chromedp.Navigate(appOrigin+"/"), waitJS(`window.log !== undefined`))
	listen(t, ctx, "feed", hub, true, "message")
	run(t, ctx, 5*time.Second, waitJS(`window.log.feed.opens === 1`))
	d.mercurePublish(url.Values{"topic": {news}, "data": {"public"}})
	d.mercurePublish(url.Values{"topic": {annBox}, "private": {"on"}, "data": {"private, for Ann"}})
	var published struct {
		Status int    `json:"status"`
		ID     string `json:"id"`
		Error  string `json:"error"`
	}
	run(t, ctx, 5*time.Second,
		chromedp.Evaluate(publishJS("from the app's page"), nil),
		waitJS(`window.log.publish.done`),
		chromedp.Evaluate(`window.log.publish`, &published),
	)
	if published.Status != 200 || !strings.HasPrefix(published.ID, "#") {
		t.Fatalf("the app's page published with fetch: %+v, want 200 and #<id>", published)
	}
	run(t, ctx, 5*time.Second, waitJS(`window.log.feed.events.length === 3`))
	l := pageLog(t, ctx, "feed")
	if got, want := data(l.Events), "public, private, for Ann, from the app's page"; got != want {
		t.Fatalf("the app's page got %q, want %q", got, want)
	}
	if l.Events[2].ID != published.ID || l.Opens != 1 || l.Errors != 0 {
		t.Fatalf("the app's page: last id %q (published %q), %d opens, %d errors", l.Events[2].ID, published.ID, l.Opens, l.Errors)
	}
}
