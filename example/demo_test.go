// Package example holds the demo site (site/, served by the repository's
// Caddyfile), its clock (clock/), and the tests that drive the demo in a
// real headless Chromium.
package example

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	_ "github.com/caddyserver/caddy/v2/modules/standard"
	"github.com/chromedp/chromedp"

	_ "github.com/caddy-push/push"
	_ "github.com/caddy-push/push/cmd/caddy/clock"
)

// demo is a Caddy site running in this process: the repository's demo
// Caddyfile, or a test's own.
type demo struct {
	t    *testing.T
	base string
	cfg  []byte
}

// startDemo runs ../Caddyfile on a free loopback port, with edits
// (old → new pairs) applied to its text.
func startDemo(t *testing.T, edits ...string) *demo {
	t.Helper()
	src, err := os.ReadFile("../Caddyfile")
	if err != nil {
		t.Fatal(err)
	}
	root, err := filepath.Abs("site")
	if err != nil {
		t.Fatal(err)
	}
	edits = append(edits, "root * example/site", "root * "+root)
	site := string(src)
	for i := 0; i < len(edits); i += 2 {
		if !strings.Contains(site, edits[i]) {
			t.Fatalf("the demo Caddyfile has no %q", edits[i])
		}
		site = strings.Replace(site, edits[i], edits[i+1], 1)
	}
	return startSite(t, site)
}

// startSite runs a Caddyfile, which starts with a global options block and
// serves http://localhost:8080, on a free loopback port instead.
func startSite(t *testing.T, site string) *demo {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := strconv.Itoa(l.Addr().(*net.TCPAddr).Port)
	l.Close()
	for _, edit := range [][2]string{
		{"\nhttp://localhost:8080 {", "\nhttp://127.0.0.1:" + port + " {"},
		{"{\n", "{\n\tadmin off\n\tpersist_config off\n"},
	} {
		if !strings.Contains(site, edit[0]) {
			t.Fatalf("the Caddyfile has no %q", edit[0])
		}
		site = strings.Replace(site, edit[0], edit[1], 1)
	}
	cfg, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(site), nil)
	if err != nil {
		t.Fatal(err)
	}
	d := &demo{t: t, base: "http://127.0.0.1:" + port, cfg: cfg}
	d.reload()
	t.Cleanup(func() { _ = caddy.Stop() })
	return d
}

// reload loads the config again, as `caddy reload` does.
func (d *demo) reload() {
	d.t.Helper()
	if err := caddy.Load(d.cfg, true); err != nil {
		d.t.Fatal(err)
	}
	// the old server drops its idle connections, and while the listener
	// passes to the new server a new connection may be reset: wait until
	// new connections are served
	http.DefaultClient.CloseIdleConnections()
	fresh := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: time.Second}
	for ok, deadline := 0, time.Now().Add(5*time.Second); ok < 3 && time.Now().Before(deadline); {
		if resp, err := fresh.Get(d.base + "/"); err == nil {
			resp.Body.Close()
			ok++
		} else {
			ok = 0
			time.Sleep(10 * time.Millisecond)
		}
	}
}

// publish posts a form to the demo's publish route.
func (d *demo) publish(fields url.Values) string {
	d.t.Helper()
	resp, err := http.PostForm(d.base+"/publish", fields)
	if err != nil {
		d.t.Fatal(err)
	}
	defer resp.Body.Close()
	id, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		d.t.Fatalf("publish %v: %d %s", fields, resp.StatusCode, id)
	}
	return strings.TrimSpace(string(id))
}

// chromiumPath finds Debian's Chromium. In CI a missing browser fails the
// run; elsewhere the browser tests are skipped.
func chromiumPath(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("chromium is not installed (apt-get install chromium); CI needs it")
	}
	t.Skip("chromium is not installed; skipping the browser tests")
	return ""
}

// browser starts a headless Chromium with a fresh profile and returns a
// context for its first tab. On failure each tab leaves a screenshot in
// the test's temp dir.
func browser(t *testing.T) context.Context {
	t.Helper()
	// not t.TempDir: Chromium may still be writing its profile as it exits
	profile, err := os.MkdirTemp("", "push-chromium-")
	if err != nil {
		t.Fatal(err)
	}
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(chromiumPath(t)),
		chromedp.Flag("headless", true),
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-quic", true),
		// two tabs talk to each other: neither may be put to sleep
		chromedp.Flag("disable-background-timer-throttling", true),
		chromedp.Flag("disable-backgrounding-occluded-windows", true),
		chromedp.Flag("disable-renderer-backgrounding", true),
		chromedp.NoFirstRun,
		chromedp.UserDataDir(profile),
		chromedp.WindowSize(1200, 900),
	}
	alloc, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(alloc)
	t.Cleanup(func() {
		cancel()
		cancelAlloc()
		_ = os.RemoveAll(profile)
	})
	if err := chromedp.Run(ctx); err != nil {
		t.Fatalf("starting chromium: %v", err)
	}
	return ctx
}

// run performs actions in a tab within timeout; on failure it saves a
// screenshot and fails the test.
func run(t *testing.T, ctx context.Context, timeout time.Duration, actions ...chromedp.Action) {
	t.Helper()
	tctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if err := chromedp.Run(tctx, actions...); err != nil {
		shot := filepath.Join(t.TempDir(), "failure.png")
		var png []byte
		sctx, scancel := context.WithTimeout(ctx, 5*time.Second)
		defer scancel()
		if chromedp.Run(sctx, chromedp.FullScreenshot(&png, 90)) == nil && os.WriteFile(shot, png, 0o644) == nil {
			t.Logf("screenshot: %s", shot)
		}
		t.Fatal(err)
	}
}

// waitJS polls a JavaScript condition in the page.
func waitJS(expr string) chromedp.Action {
	return chromedp.Poll(expr, nil, chromedp.WithPollingInterval(50*time.Millisecond))
}

// received is what the page's handlers recorded.
type received struct {
	ID   string `json:"id"`
	Type string `json:"type"`
	Data string `json:"data"`
	Via  string `json:"via"`
}

// The demo runs as written, without a browser: the page is served and the
// clock's ticks arrive on the page's stream.
func TestDemoServesPageAndClock(t *testing.T) {
	d := startDemo(t)
	resp, err := http.Get(d.base + "/")
	if err != nil {
		t.Fatal(err)
	}
	page, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(page), "app.js") {
		t.Fatalf("index: %d", resp.StatusCode)
	}
	resp, err = http.Get(d.base + "/events/pausing")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	timeout := time.AfterFunc(3*time.Second, func() { resp.Body.Close() })
	defer timeout.Stop()
	for lines := bufio.NewScanner(resp.Body); lines.Scan(); {
		if lines.Text() == "event: tick" {
			return
		}
	}
	t.Fatal("no clock tick within 3s")
}

func TestBrowserFeedReceivesPublishedEvents(t *testing.T) {
	d := startDemo(t)
	ctx := browser(t)
	run(t, ctx, 10*time.Second,
		chromedp.Navigate(d.base+"/"),
		waitJS(`window.pushDemo && window.pushDemo.feed.state === 'open'`),
	)
	var state string
	run(t, ctx, 5*time.Second, chromedp.Text("#ready-state", &state))
	if state != "open" {
		t.Fatalf("state shown as %q", state)
	}
	d.publish(url.Values{"topic": {"feed"}, "data": {"hello from the test"}})
	d.publish(url.Values{"topic": {"feed"}, "type": {"like"}, "data": {"a like"}})
	run(t, ctx, 5*time.Second,
		waitJS(`document.getElementById('feed').textContent.includes('hello from the test')`),
		waitJS(`window.pushDemo.received.length >= 2`),
	)
	var got []received
	run(t, ctx, 5*time.Second, chromedp.Evaluate(`window.pushDemo.received`, &got))
	want := []received{{Type: "message", Data: "hello from the test", Via: "message"}, {Type: "like", Data: "a like", Via: "like"}}
	for i := range want {
		if got[i].Type != want[i].Type || got[i].Data != want[i].Data || got[i].Via != want[i].Via || got[i].ID == "" {
			t.Fatalf("received %+v, want %+v", got, want)
		}
	}
	// the clock ticks into its own element
	run(t, ctx, 5*time.Second, waitJS(`/\d\d:\d\d:\d\d/.test(document.getElementById('clock').textContent)`))
	saveScreenshot(t, ctx)
}

// saveScreenshot refreshes the README's picture of the demo when
// PUSH_SCREENSHOT names a file: PUSH_SCREENSHOT=$PWD/example/screenshot.png.
func saveScreenshot(t *testing.T, ctx context.Context) {
	path := os.Getenv("PUSH_SCREENSHOT")
	if path == "" {
		return
	}
	var png []byte
	run(t, ctx, 10*time.Second, chromedp.FullScreenshot(&png, 100)) // 100: PNG
	if err := os.WriteFile(path, png, 0o644); err != nil {
		t.Fatal(err)
	}
}

// The server pauses the stream (max_duration, pause_for): the page closes
// it and comes back at the time the pause gave, with ?lastEventId=; a
// config reload ends the stream and the browser reconnects by itself with
// Last-Event-ID. Every event published meanwhile appears exactly once, in
// order.
func TestBrowserResumesLosslessly(t *testing.T) {
	d := startDemo(t, "max_duration 20s", "max_duration 1s", "pause_for 5s", "pause_for 1s")
	ctx := browser(t)
	run(t, ctx, 10*time.Second,
		chromedp.Navigate(d.base+"/"),
		waitJS(`window.pushDemo && window.pushDemo.feed.state === 'open'`),
	)
	const n = 40
	for i := range n {
		d.publish(url.Values{"topic": {"feed"}, "data": {strconv.Itoa(i)}})
		if i == n/2 {
			d.reload()
		}
		time.Sleep(100 * time.Millisecond)
	}
	run(t, ctx, 10*time.Second, waitJS(fmt.Sprintf(`window.pushDemo.received.length >= %d`, n)))
	time.Sleep(300 * time.Millisecond) // a duplicate would arrive now
	var got []received
	var resumed []string
	var feedText string
	run(t, ctx, 5*time.Second,
		chromedp.Evaluate(`window.pushDemo.received`, &got),
		chromedp.Evaluate(`window.pushDemo.resumedFrom`, &resumed),
		chromedp.Text("#feed", &feedText),
	)
	if len(got) != n {
		t.Fatalf("received %d events, want %d: %+v", len(got), n, got)
	}
	for i, ev := range got {
		if ev.Data != strconv.Itoa(i) {
			t.Fatalf("event %d is %+v: out of order, lost or duplicated", i, ev)
		}
	}
	// 4s of streams that pause after 1s for 1s: the page came back by
	// itself, with an id, and said so
	if len(resumed) == 0 || resumed[0] == "" {
		t.Fatalf("resumed from %v, want resumes with an id", resumed)
	}
	for _, note := range []string{"paused by the server until", "resumed after the pause"} {
		if !strings.Contains(feedText, note) {
			t.Fatalf("the feed does not show %q: %q", note, feedText)
		}
	}
}

// Two visitors chat over WebSocket: each sees the other's join notice and
// messages; a config reload in the middle loses nothing in either page.
// (Two browsers, not two tabs of one: chromedp cannot evaluate in a second
// tab of the same browser here.) The room switch on the open connection
// is TestPushJSRoomSwitch's.
func TestBrowserChatAcrossTabs(t *testing.T) {
	d := startDemo(t)
	first := browser(t)
	second := browser(t)
	for _, ctx := range []context.Context{first, second} {
		run(t, ctx, 10*time.Second,
			chromedp.Navigate(d.base+"/"),
			waitJS(`document.getElementById('chat-state').textContent === 'open'`),
		)
	}
	// the first tab sees the second join, and both tabs online; the second
	// saw the first in its snapshot
	run(t, first, 5*time.Second, waitJS(`window.pushDemo.chat.some(m => m.event === 'push.join' && m.data !== '')`))
	for _, ctx := range []context.Context{first, second} {
		run(t, ctx, 5*time.Second, waitJS(`window.pushDemo.online.size === 2 && document.getElementById('chat-online').textContent.startsWith('2: ')`))
	}
	run(t, second, 5*time.Second, waitJS(`window.pushDemo.chat[0].event === 'push.presence' && JSON.parse(window.pushDemo.chat[0].data).count === 2`))
	// fill in and submit the form as a visitor would; the page's own
	// submit handler sends the message
	say := func(ctx context.Context, name, text string) {
		js := fmt.Sprintf(`document.getElementById('chat-name').value = %q;
			document.getElementById('chat-text').value = %q;
			document.getElementById('chat-form').requestSubmit(); true`, name, text)
		var ok bool
		run(t, ctx, 5*time.Second, chromedp.Evaluate(js, &ok))
	}
	// each message is seen by both tabs before the next is sent: two
	// browsers' sends race each other, and the order asserted below is the
	// order in which they were said
	saw := func(n int) {
		for _, ctx := range []context.Context{first, second} {
			run(t, ctx, 10*time.Second, waitJS(fmt.Sprintf(`window.pushDemo.chat.filter(m => m.event === 'chat').length >= %d`, n)))
		}
	}
	say(first, "ann", "hello")
	saw(1)
	say(second, "bob", "hi ann")
	saw(2) // so nothing is in flight at the reload
	d.reload()
	// published while both are reconnecting: they get it when they resume
	d.publish(url.Values{"topic": {"chat/lobby"}, "type": {"chat"}, "data": {"server: reloaded"}})
	// both are closed with 1001, reconnect and resume
	for _, ctx := range []context.Context{first, second} {
		run(t, ctx, 10*time.Second, waitJS(`window.pushDemo.chatOpens >= 2 && document.getElementById('chat-state').textContent === 'open'`))
	}
	say(first, "ann", "still there?")
	saw(4)
	say(second, "bob", "yes")
	want := []string{"ann: hello", "bob: hi ann", "server: reloaded", "ann: still there?", "bob: yes"}
	for _, ctx := range []context.Context{first, second} {
		run(t, ctx, 10*time.Second, waitJS(`window.pushDemo.chat.filter(m => m.event === 'chat').length >= 5`))
		time.Sleep(200 * time.Millisecond) // a duplicate would arrive now
		var said []string
		run(t, ctx, 5*time.Second, chromedp.Evaluate(`window.pushDemo.chat.filter(m => m.event === 'chat').map(m => m.data)`, &said))
		if strings.Join(said, "|") != strings.Join(want, "|") {
			t.Fatalf("a tab saw %q, want %q", said, want)
		}
	}
	saveScreenshot(t, first)
}
