package example

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
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

// tokenPage logs in (the app's /login sets the pushAuthorization cookie)
// and follows Ann's private topic with a plain EventSource. window.log
// records what it sees; an event's opens is the stream it came on.
const tokenPage = `<!doctype html>
<meta charset="utf-8">
<link rel="icon" href="data:,">
<title>token expiry</title>
<script>
window.log = { logins: 0, opens: 0, errors: [], events: [], state: 0 };
async function login() {
  await fetch('/login', { method: 'POST' });
  window.log.logins++;
}
login().then(() => {
  const source = new EventSource('/events?topic=user/ann');
  source.onopen = () => { window.log.opens++; window.log.state = source.readyState; };
  source.onerror = () => {
    window.log.errors.push({ at: Date.now(), state: source.readyState });
    window.log.state = source.readyState;
  };
  source.onmessage = e => window.log.events.push({ id: e.lastEventId, data: e.data, opens: window.log.opens });
});
</script>
`

// tokenSite admits a stream of Ann's topic on a token from her cookie;
// LOGIN is the app that gives her one. (The key is the Mercure tests':
// any secret of 32 bytes or more would do.)
const tokenSite = `{
	push {
		hub default {
			history 1000
		}
	}
}

http://localhost:8080 {
	root * .
	push_sse /events {
		private user/*
		jwt_key ` + mercureSecret + `
	}
	push_publish /publish {
		anonymous
	}
	reverse_proxy /login LOGIN
	file_server
}
`

// tokenLife is how long a token from the app's /login is good for: exp is
// whole seconds, so it expires 2–3 s after the login.
const tokenLife = 3 * time.Second

// loginApp is the app beside the hub: each POST /login sets Ann's cookie
// to a fresh token, as an app refreshes a session's.
type loginApp struct {
	mu     sync.Mutex
	issued []issuedToken
}

type issuedToken struct {
	value string
	exp   time.Time
}

func (a *loginApp) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	exp := time.Now().Add(tokenLife).Unix()
	token := mercureToken(fmt.Sprintf(`{"sub":"ann","exp":%d,"push":{"subscribe":["user/ann"]}}`, exp))
	a.mu.Lock()
	a.issued = append(a.issued, issuedToken{token, time.Unix(exp, 0)})
	a.mu.Unlock()
	http.SetCookie(w, &http.Cookie{Name: "pushAuthorization", Value: token, Path: "/", HttpOnly: true, SameSite: http.SameSiteStrictMode})
	w.WriteHeader(http.StatusNoContent)
}

// token is the nth token the app issued.
func (a *loginApp) token(t *testing.T, n int) issuedToken {
	t.Helper()
	a.mu.Lock()
	defer a.mu.Unlock()
	if n >= len(a.issued) {
		t.Fatalf("the app issued %d tokens, want %d", len(a.issued), n+1)
	}
	return a.issued[n]
}

// tokenLog is what tokenPage recorded.
type tokenLog struct {
	Opens  int `json:"opens"`
	Errors []struct {
		At    int64 `json:"at"`
		State int   `json:"state"`
	} `json:"errors"`
	Events []struct {
		ID    string `json:"id"`
		Data  string `json:"data"`
		Opens int    `json:"opens"`
	} `json:"events"`
	State int `json:"state"`
}

// streamWatch holds the page's requests for /events before they leave
// the browser (paused, until fetch.ContinueRequest, once fetch is
// enabled) and records, in order, the headers each went out with and the
// status it got.
type streamWatch struct {
	t      *testing.T
	paused chan *fetch.EventRequestPaused
	mu     sync.Mutex
	order  []network.RequestID
	sent   map[network.RequestID]network.Headers
	status map[network.RequestID]int64
}

func watchStreams(t *testing.T, ctx context.Context) *streamWatch {
	w := &streamWatch{
		t:      t,
		paused: make(chan *fetch.EventRequestPaused, 1),
		sent:   make(map[network.RequestID]network.Headers),
		status: make(map[network.RequestID]int64),
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
		case *network.EventRequestWillBeSent:
			if strings.Contains(ev.Request.URL, "/events") {
				w.order = append(w.order, ev.RequestID)
			}
		case *network.EventRequestWillBeSentExtraInfo:
			w.sent[ev.RequestID] = ev.Headers
		case *network.EventResponseReceived:
			w.status[ev.RequestID] = ev.Response.Status
		}
	})
	run(t, ctx, 5*time.Second, network.Enable())
	return w
}

// stream is the nth request for /events, once the browser has reported
// its headers and its status.
type stream struct {
	lastEventID string
	cookie      string
	status      int64
}

func (w *streamWatch) stream(n int) stream {
	w.t.Helper()
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		w.mu.Lock()
		var id network.RequestID
		if n < len(w.order) {
			id = w.order[n]
		}
		h, sent := w.sent[id]
		status := w.status[id]
		w.mu.Unlock()
		if sent && status != 0 {
			return stream{lastEventID: headerOf(h, "Last-Event-ID"), cookie: headerOf(h, "Cookie"), status: status}
		}
	}
	w.t.Fatalf("the browser reported no request %d for /events, or not its headers and status", n+1)
	return stream{}
}

// headerOf is a header by any case of its name.
func headerOf(h network.Headers, name string) string {
	for k, v := range h {
		if strings.EqualFold(k, name) {
			s, _ := v.(string)
			return s
		}
	}
	return ""
}

// A stream admitted on the token in Ann's cookie ends when that token
// expires, though the app has refreshed the cookie meanwhile: the
// browser comes back by itself with the fresh cookie and Last-Event-ID
// (the test holds that request until it has published more) and gets
// what it missed, exactly once, in order. When the app stops refreshing,
// the next stream ends at its token's exp too, and the reconnect, with
// only the expired token, is refused: the EventSource gives up (CLOSED)
// and nothing more arrives.
func TestBrowserTokenExpiry(t *testing.T) {
	app := &loginApp{}
	upstream := httptest.NewServer(app)
	defer upstream.Close()
	d := startPage(t, strings.Replace(tokenSite, "LOGIN", upstream.Listener.Addr().String(), 1), tokenPage)
	ctx := browser(t)
	w := watchStreams(t, ctx)
	run(t, ctx, 10*time.Second, chromedp.Navigate(d.base+"/"), waitJS(`window.log && window.log.opens === 1`))
	run(t, ctx, 5*time.Second, fetch.Enable().WithPatterns([]*fetch.RequestPattern{
		{URLPattern: "*/events*", RequestStage: fetch.RequestStageRequest},
	}))
	publish := func(data ...string) {
		for _, s := range data {
			d.publish(url.Values{"topic": {"user/ann"}, "data": {s}})
		}
	}
	publish("1", "2")
	run(t, ctx, 5*time.Second, waitJS(`window.log.events.length === 2`))

	// a second before the token expires, the app refreshes the cookie;
	// the stream goes on to the old token's exp all the same
	first := app.token(t, 0)
	run(t, ctx, 5*time.Second,
		waitJS(fmt.Sprintf(`Date.now() >= %d`, first.exp.Add(-time.Second).UnixMilli())),
		chromedp.Evaluate(`void login()`, nil),
		waitJS(`window.log.logins === 2`),
	)
	fresh := app.token(t, 1)
	if !fresh.exp.After(first.exp) {
		t.Fatalf("the refreshed token expires at %v, the first at %v", fresh.exp, first.exp)
	}
	var reconnect *fetch.EventRequestPaused
	select {
	case reconnect = <-w.paused:
	case <-time.After(time.Until(first.exp) + 3*time.Second):
		t.Fatal("the browser did not reconnect within 3s of the token's exp")
	}
	publish("3", "4") // while the page is away
	run(t, ctx, 5*time.Second, fetch.ContinueRequest(reconnect.RequestID), fetch.Disable())
	run(t, ctx, 5*time.Second, waitJS(`window.log.opens === 2 && window.log.events.length === 4`))
	publish("5") // live, after the replay: a duplicate of the replay would come before it
	run(t, ctx, 5*time.Second, waitJS(`window.log.events.some(e => e.data === '5')`))

	// the app refreshes no more: at the fresh token's exp the stream ends
	// again, and the browser's reconnect with it is refused; what is
	// published from then on never reaches the page
	run(t, ctx, time.Until(fresh.exp)+3*time.Second, waitJS(`window.log.errors.length >= 2`))
	publish("6")
	run(t, ctx, 8*time.Second, waitJS(`window.log.state === EventSource.CLOSED`))
	publish("7")
	time.Sleep(300 * time.Millisecond) // it would arrive now
	var l tokenLog
	run(t, ctx, 5*time.Second, chromedp.Evaluate(`window.log`, &l))

	var got []string
	for _, e := range l.Events {
		got = append(got, e.Data+"@"+strconv.Itoa(e.Opens))
	}
	if want := "1@1 2@1 3@2 4@2 5@2"; strings.Join(got, " ") != want {
		t.Errorf("the page got %q (data@stream), want %q: each event once, in order, none after the token expired", got, want)
	}
	if s := w.stream(0); s.status != 200 || s.cookie != "pushAuthorization="+first.value {
		t.Errorf("the first stream: %d, Cookie %q; want 200 on the first token", s.status, s.cookie)
	}
	resumed := w.stream(1)
	if resumed.status != 200 || resumed.cookie != "pushAuthorization="+fresh.value {
		t.Errorf("the reconnect: %d, Cookie %q; want 200 on the refreshed token", resumed.status, resumed.cookie)
	}
	if len(l.Events) >= 2 && resumed.lastEventID != l.Events[1].ID {
		t.Errorf("the reconnect resumed from Last-Event-ID %q, want %q", resumed.lastEventID, l.Events[1].ID)
	}
	if refused := w.stream(2); refused.status != http.StatusUnauthorized || refused.cookie != "pushAuthorization="+fresh.value {
		t.Errorf("the reconnect after the refreshed token expired: %d, Cookie %q; want 401 on that token", refused.status, refused.cookie)
	}
	// two streams, each ended at its token's exp (not before, at most
	// 1.5s after) with the browser reconnecting (CONNECTING), then the
	// refusal (CLOSED)
	var states []int
	for _, e := range l.Errors {
		states = append(states, e.State)
	}
	if l.Opens != 2 || fmt.Sprint(states) != "[0 0 2]" {
		t.Errorf("the page opened %d streams and saw errors in readyStates %v, want 2 streams and [0 0 2]", l.Opens, states)
	}
	for i, tok := range []issuedToken{first, fresh} {
		at := time.UnixMilli(l.Errors[i].At)
		if late := at.Sub(tok.exp); late < 0 || late > 1500*time.Millisecond {
			t.Errorf("stream %d ended at %v, %v after its token's exp %v", i+1, at, late, tok.exp)
		}
	}
}
