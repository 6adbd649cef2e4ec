package main

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/yosida95/uritemplate/v3"
)

// A template subscriber's selector matches its own topic and no other,
// as Mercure's hub matches it (the same URI template library); the share
// is spread evenly over the topics.
func TestMercureSelector(t *testing.T) {
	topics := mercureTopics([]string{"pb-x-1", "pb-x-10", "pb-x-2"})
	for i, topic := range topics {
		tmpl, err := uritemplate.New(mercureTemplate(topic))
		if err != nil {
			t.Fatal(err)
		}
		for j, other := range topics {
			if got := tmpl.Regexp().MatchString(other); got != (i == j) {
				t.Errorf("%s matches %s: %v", tmpl.Raw(), other, got)
			}
		}
	}

	for _, tc := range []struct {
		share     float64
		n, topics int
		perTopic  int // template subscribers each topic gets
	}{
		{0, 1000, 100, 0},
		{0.1, 1000, 100, 1},
		{0.1, 19000, 100, 19},
		{0.5, 40, 10, 2},
		{1, 40, 10, 4},
	} {
		topics := mercureTopics(topicNames(tc.topics))
		templates := map[string]int{}
		for i := range tc.n {
			sel := selector(topics, i, tc.share)
			if sel != topics[i%tc.topics] {
				if sel != mercureTemplate(topics[i%tc.topics]) {
					t.Fatalf("subscriber %d follows %s", i, sel)
				}
				templates[sel]++
			}
		}
		for _, topic := range topics {
			if n := templates[mercureTemplate(topic)]; n != tc.perTopic {
				t.Errorf("share %g of %d on %d topics: %d template subscribers on %s, want %d",
					tc.share, tc.n, tc.topics, n, topic, tc.perTopic)
			}
		}
	}
}

// Both Mercure targets subscribe to /.well-known/mercure?topic= and
// publish the form with a Bearer JWT of the key that may publish
// everywhere; neither has WebSocket.
func TestMercureTarget(t *testing.T) {
	for _, target := range []string{"mercure", "caddy-push-mercure"} {
		c, _, err := parseFlags([]string{"-target", target, "-addr", "127.0.0.1:8093", "-jwt-key", "k"}, io.Discard)
		if err != nil {
			t.Fatal(err)
		}
		tg, err := newTarget(c)
		if err != nil {
			t.Fatal(err)
		}
		topic := mercureTopics([]string{"pb-x-1"})[0]
		ep, err := tg.endpoint(tg.subURL, mercureTemplate(topic), false)
		if err != nil {
			t.Fatal(err)
		}
		u, err := url.ParseRequestURI(ep.requestURI)
		if err != nil {
			t.Fatal(err)
		}
		if u.Path != "/.well-known/mercure" || u.Query().Get("topic") != "https://example.com/rooms/pb-x-1/{x}" {
			t.Errorf("%s: subscribes with %s", target, ep.requestURI)
		}

		if ep, err = tg.endpoint(tg.pubURL, topic, false); err != nil {
			t.Fatal(err)
		}
		var pc pubConn
		pc.request(tg, ep, topic, 12, 34, 64)
		req, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(pc.req)))
		if err != nil {
			t.Fatal(err)
		}
		if err := req.ParseForm(); err != nil {
			t.Fatal(err)
		}
		seq, nanos, ok := parsePayload([]byte(req.PostForm.Get("data")))
		if req.URL.Path != "/.well-known/mercure" || req.PostForm.Get("topic") != topic || !ok || seq != 12 || nanos != 34 {
			t.Errorf("%s: request:\n%s", target, pc.req)
		}
		bearer, _ := strings.CutPrefix(req.Header.Get("Authorization"), "Bearer ")
		claims := jwt.MapClaims{}
		if _, err := jwt.ParseWithClaims(bearer, claims, func(*jwt.Token) (any, error) { return []byte("k"), nil },
			jwt.WithValidMethods([]string{"HS256"}), jwt.WithExpirationRequired()); err != nil {
			t.Fatalf("%s: token %q: %v", target, bearer, err)
		}
		if m, _ := claims["mercure"].(map[string]any); m == nil || len(m["publish"].([]any)) != 1 || m["publish"].([]any)[0] != "*" {
			t.Errorf("%s: claims %v", target, claims)
		}

		c.transport = "ws"
		if _, err := newTarget(c); err == nil {
			t.Errorf("%s: no error for WebSocket", target)
		}
	}
	for _, args := range [][]string{
		{"-target", "mercure", "-pattern-share", "1.5"},
		{"-target", "mercure", "-pattern-share", "-0.1"},
		{"-target", "caddy-push", "-pattern-share", "0.1"},
	} {
		if _, _, err := parseFlags(args, io.Discard); err == nil {
			t.Errorf("%q: no error", args)
		}
	}
}

// A Mercure hub answers a publish with the event's id: a 2xx without one
// is not a publish.
func TestMercurePublishNeedsID(t *testing.T) {
	for _, tc := range []struct {
		answer string
		needID bool
		want   error
	}{
		{"HTTP/1.1 200 OK\r\nContent-Length: 14\r\n\r\nurn:uuid:1234\n", true, nil},
		{"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", true, errNoID},
		{"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", false, nil},
		{"HTTP/1.1 401 Unauthorized\r\nContent-Length: 13\r\n\r\nUnauthorized\n", true, statusError(401)},
	} {
		client, server := net.Pipe()
		go func() {
			br := bufio.NewReader(server)
			if req, err := http.ReadRequest(br); err == nil {
				io.Copy(io.Discard, req.Body)
				io.WriteString(server, tc.answer)
			}
		}()
		c := &pubConn{conn: client, br: bufio.NewReader(client), req: []byte("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")}
		keep, err := c.roundTrip(tc.needID)
		if err != tc.want || !keep {
			t.Errorf("%q (needID %v): keep %v, err %v", tc.answer, tc.needID, keep, err)
		}
		client.Close()
		server.Close()
	}
}

// startMercure runs Mercure's hub (a build of bench/mercure, named by
// $MERCURE) with bench/mercure/Caddyfile on a free loopback port, and
// returns its address.
func startMercure(t *testing.T) string {
	t.Helper()
	bin := os.Getenv("MERCURE")
	if bin == "" {
		t.Skip("no Mercure hub: (cd bench/mercure && GOWORK=off go build -o /tmp/mercure .) and set MERCURE=/tmp/mercure")
	}
	port := freePort(t, false)
	cmd := exec.Command(bin, "run", "--config", "../mercure/Caddyfile", "--adapter", "caddyfile")
	// the Caddyfile's default key, whatever this environment has
	cmd.Env = []string{"MERCURE_PORT=" + port}
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "MERCURE_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-done
		}
	})
	addr := "127.0.0.1:" + port
	for deadline := time.Now().Add(10 * time.Second); ; {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return addr
		}
		if time.Now().After(deadline) {
			t.Fatalf("mercure did not listen on %s: %v", addr, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Against Mercure's own hub, with its default key on both sides and half
// the subscribers on URI templates: every event reaches every subscriber
// of its topic once, and a wrong key publishes nothing.
func TestRunAgainstMercure(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a server and runs loads for seconds")
	}
	addr := startMercure(t)
	c := testConfig(t, addr, "-target", "mercure", "-jwt-key", mercureDefaultKey, "-pattern-share", "0.5",
		"-churn", "50", "-churn-hold", "20ms")
	var progress bytes.Buffer
	r, err := run(t.Context(), c, &progress)
	if err != nil {
		t.Fatalf("%v\n%s", err, progress.String())
	}
	checkComplete(t, r)
	if r.PatternShare != 0.5 || r.Churn == nil || r.Churn.Opened != int64(r.Churn.Attempted) {
		t.Errorf("pattern share %g, churn %+v", r.PatternShare, r.Churn)
	}

	c = testConfig(t, addr, "-target", "mercure", "-jwt-key", "not-the-key", "-duration", "200ms")
	if r, err = run(t.Context(), c, &progress); err != nil {
		t.Fatal(err)
	}
	if r.PublishOK != 0 || r.PublishFailures["401"] == 0 {
		t.Errorf("with a wrong key: %d ok, failures %v", r.PublishOK, r.PublishFailures)
	}
}

// Against caddy-push's push_mercure (bench/Caddyfile's site for it), as
// against Mercure's hub.
func TestRunAgainstPushMercure(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a server and runs loads for seconds")
	}
	_, _, addr := startCaddySites(t)
	// the Caddyfile's key: MERCURE_PUBLISHER_JWT_KEY's when set
	c := testConfig(t, addr, "-target", "caddy-push-mercure", "-pattern-share", "0.5", "-churn", "50", "-churn-hold", "20ms")
	var progress bytes.Buffer
	r, err := run(t.Context(), c, &progress)
	if err != nil {
		t.Fatalf("%v\n%s", err, progress.String())
	}
	checkComplete(t, r)
	if r.Churn == nil || r.Churn.Opened != int64(r.Churn.Attempted) {
		t.Errorf("churn %+v", r.Churn)
	}
}

// Mercure's hub is compared with push_mercure, the other targets with
// caddy-push.
func TestComparisonMercure(t *testing.T) {
	mk := func(target, transport string, dps float64) *result {
		return &result{Target: target, Transport: transport, Scenario: "fanout", Connected: 10, DeliveriesPerSec: dps}
	}
	var b bytes.Buffer
	printComparison(&b, []*result{mk("mercure", "sse", 50), mk("nchan", "sse", 100), mk("caddy-push", "sse", 150),
		mk("caddy-push-mercure", "sse", 200), mk("caddy-push", "ws", 300), mk("nchan", "ws", 100)})
	out := strings.Join(strings.Fields(b.String()), " ")
	for _, want := range []string{
		"metric caddy-push caddy-push-mercure mercure nchan caddy-push-mercure/mercure caddy-push/nchan",
		"fanout sse deliveries/s 150 200 50 100 4.00× 1.50×",
		"fanout ws deliveries/s 300 n/a n/a 100 n/a 3.00×",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("no %q in\n%s", want, b.String())
		}
	}

	// without push_mercure's runs, Mercure's have no ratio
	b.Reset()
	printComparison(&b, []*result{mk("caddy-push", "sse", 150), mk("mercure", "sse", 50)})
	if out := b.String(); strings.Contains(out, "/mercure") || !strings.Contains(out, strconv.Itoa(50)) {
		t.Errorf("comparison:\n%s", out)
	}
}
