package example

import (
	"bufio"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// startPage runs site with a root holding index.html = page, so a test's
// own browser code runs against its own push config.
func startPage(t *testing.T, site, page string) *demo {
	t.Helper()
	root := t.TempDir()
	if err := os.WriteFile(filepath.Join(root, "index.html"), []byte(page), 0o644); err != nil {
		t.Fatal(err)
	}
	return startSite(t, strings.Replace(site, "root * .", "root * "+root, 1))
}

// The article's client: on "pause" it closes the stream and comes back at
// the time given, resuming from the pause's lastEventId.
const articlePage = `<!doctype html>
<meta charset="utf-8">
<title>pause and reconnect</title>
<script>
window.log = { messages: [], pauses: [], connects: [], opens: [] };
let lastEventId = '';
function connectSSE() {
  window.log.connects.push({ at: Date.now(), lastEventId });
  const url = new URL('/events', location.href);
  if (lastEventId) url.searchParams.set('lastEventId', lastEventId);
  const source = new EventSource(url);
  source.onopen = () => window.log.opens.push(Date.now());
  source.onmessage = e => window.log.messages.push({ data: e.data, id: e.lastEventId, at: Date.now() });
  source.addEventListener('pause', e => {
    window.log.pauses.push({ until: +e.data, id: e.lastEventId, at: Date.now() });
    lastEventId = e.lastEventId;
    source.close();
    setTimeout(connectSSE, +e.data - Date.now());
  });
}
connectSSE();
</script>
`

type articleLog struct {
	Messages []struct {
		Data string `json:"data"`
		ID   string `json:"id"`
		At   int64  `json:"at"`
	} `json:"messages"`
	Pauses []struct {
		Until int64  `json:"until"`
		ID    string `json:"id"`
		At    int64  `json:"at"`
	} `json:"pauses"`
	Connects []struct {
		At          int64  `json:"at"`
		LastEventID string `json:"lastEventId"`
	} `json:"connects"`
	Opens []int64 `json:"opens"`
}

// The article's pattern, made lossless with lastEventId, in Chromium: the
// stream pauses after about 1s for about 2s, the page comes back by itself
// no earlier than told, and gets every event published meanwhile exactly
// once, in order.
func TestBrowserArticlePauseAndReconnect(t *testing.T) {
	d := startPage(t, `{
	push {
		hub default {
			history 1000
		}
	}
}

http://localhost:8080 {
	root * .
	push_sse /events {
		topics feed
		retry 1s
		max_duration 1s
		pause_for 2s
	}
	push_publish /publish {
		anonymous
	}
	file_server
}
`, articlePage)
	ctx := browser(t)
	run(t, ctx, 10*time.Second,
		chromedp.Navigate(d.base+"/"),
		waitJS(`window.log && window.log.opens.length === 1`),
	)
	// 4.5s of events: at least one pause (after 0.9–1.1s) and its
	// reconnect (1.8–2.2s later) fall inside
	const n = 45
	for i := range n {
		d.publish(url.Values{"topic": {"feed"}, "data": {strconv.Itoa(i)}})
		time.Sleep(100 * time.Millisecond)
	}
	run(t, ctx, 10*time.Second, waitJS(fmt.Sprintf(`window.log.messages.length >= %d`, n)))
	time.Sleep(300 * time.Millisecond) // a duplicate would arrive now
	var log articleLog
	run(t, ctx, 5*time.Second, chromedp.Evaluate(`window.log`, &log))

	if len(log.Messages) != n {
		t.Fatalf("received %d events, want %d: %+v", len(log.Messages), n, log.Messages)
	}
	for i, m := range log.Messages {
		if m.Data != strconv.Itoa(i) {
			t.Fatalf("event %d is %+v: out of order, lost or duplicated", i, m)
		}
	}
	if len(log.Pauses) == 0 || len(log.Connects) < 2 || len(log.Opens) < 2 {
		t.Fatalf("pauses %d, connects %d, opens %d: the page did not pause and come back by itself",
			len(log.Pauses), len(log.Connects), len(log.Opens))
	}
	for i, p := range log.Pauses {
		if p.ID == "" {
			t.Fatalf("pause %d has no lastEventId: %+v", i, p)
		}
		if wait := time.Duration(p.Until-p.At) * time.Millisecond; wait < 1700*time.Millisecond || wait > 2300*time.Millisecond {
			t.Errorf("pause %d: come back in %v, want 2s ±10%%", i, wait)
		}
		if i+1 >= len(log.Connects) {
			continue // the last pause may still be on
		}
		// connect i+1 follows pause i: not before the time the pause
		// gave, and the server opened the stream after that
		c := log.Connects[i+1]
		if c.At < p.Until {
			t.Errorf("pause %d until %d: reconnected %dms early", i, p.Until, p.Until-c.At)
		}
		if c.LastEventID != p.ID {
			t.Errorf("reconnect %d resumed from %q, the pause said %q", i+1, c.LastEventID, p.ID)
		}
		if i+1 < len(log.Opens) && log.Opens[i+1] < p.Until {
			t.Errorf("pause %d until %d: stream open %dms early", i, p.Until, p.Until-log.Opens[i+1])
		}
	}
}

// A plain EventSource page, for a stream it is not allowed to hold.
const plainPage = `<!doctype html>
<meta charset="utf-8">
<title>over the limit</title>
<script>
window.log = { opens: 0, errors: 0, closed: false, lastOpen: 0, lastError: 0, messages: [] };
const source = new EventSource('/events');
source.onopen = () => { window.log.opens++; window.log.lastOpen = Date.now(); };
source.onerror = () => {
  window.log.errors++;
  window.log.lastError = Date.now();
  if (source.readyState === EventSource.CLOSED) window.log.closed = true;
};
source.onmessage = e => window.log.messages.push(e.data);
</script>
`

// Over max_connections, an EventSource gets 200 and a pause instead of a
// 503 it would never retry: it keeps coming back by itself until there is
// room, then gets events. A client that is not an EventSource still gets
// 503 with Retry-After.
func TestBrowserOverLimitPausesEventSource(t *testing.T) {
	d := startPage(t, `{
	push {
		hub default {
			history 1000
		}
	}
}

http://localhost:8080 {
	root * .
	push_sse /events {
		topics feed
		retry 1s
		max_connections 1
	}
	push_publish /publish {
		anonymous
	}
	file_server
}
`, plainPage)

	// a Go client takes the one place
	req, err := http.NewRequest(http.MethodGet, d.base+"/events", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Accept", "text/event-stream")
	holder, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Body.Close()
	if holder.StatusCode != 200 {
		t.Fatalf("first stream: %d", holder.StatusCode)
	}
	lines := bufio.NewScanner(holder.Body)
	for lines.Scan() && lines.Text() != ": ok" {
	}

	resp, err := http.Get(d.base + "/events")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("over the limit without Accept: text/event-stream: %d, Retry-After %q",
			resp.StatusCode, resp.Header.Get("Retry-After"))
	}

	ctx := browser(t)
	// opened, paused ~5s, opened again: the browser never gave up
	run(t, ctx, 15*time.Second,
		chromedp.Navigate(d.base+"/"),
		waitJS(`window.log && window.log.opens >= 2`),
	)
	var closed bool
	run(t, ctx, 5*time.Second, chromedp.Evaluate(`window.log.closed`, &closed))
	if closed {
		t.Fatal("the EventSource reached CLOSED: it would not come back")
	}

	holder.Body.Close()
	// the next open after the pause gets the place: it stays open
	var opens int
	run(t, ctx, 5*time.Second, chromedp.Evaluate(`window.log.opens`, &opens))
	run(t, ctx, 10*time.Second, waitJS(fmt.Sprintf(`window.log.opens > %d &&
		window.log.lastError < window.log.lastOpen && Date.now() - window.log.lastOpen > 300`, opens)))
	d.publish(url.Values{"topic": {"feed"}, "data": {"room at last"}})
	run(t, ctx, 5*time.Second, waitJS(`window.log.messages.includes('room at last')`))
	run(t, ctx, 5*time.Second, chromedp.Evaluate(`window.log.closed`, &closed))
	if closed {
		t.Fatal("the EventSource reached CLOSED")
	}
}
