package main

import (
	"context"
	"fmt"
	"io"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// result is one run, as printed and as saved with -json.
type result struct {
	Label       string  `json:"label"`
	Target      string  `json:"target"`
	Transport   string  `json:"transport"`
	Protocol    string  `json:"protocol,omitempty"` // the subscribers' when not HTTP/1.1 in the clear: https-h1, h2 or h3
	Scenario    string  `json:"scenario,omitempty"`
	Subscribers int     `json:"subscribers"`
	Topics      int     `json:"topics"`
	Rate        float64 `json:"rate"` // publishes per second asked for (the first step's, with a ramp)
	Size        int     `json:"size"`
	DurationS   float64 `json:"duration_s"`
	// PatternShare is the share of subscribers that followed their topic
	// through a URI template (Mercure targets).
	PatternShare float64 `json:"pattern_share,omitempty"`

	Connected       int            `json:"connected"`
	ConnectSeconds  float64        `json:"connect_s"`
	ConnectFailures map[string]int `json:"connect_failures,omitempty"`
	// Disconnects are streams the server ended during the run.
	Disconnects map[string]int `json:"disconnects,omitempty"`

	// PublishOver is "ws" for runs that published over WebSocket.
	PublishOver     string         `json:"publish_over,omitempty"`
	Published       int64          `json:"published"`
	PublishOK       int64          `json:"publish_ok"`
	PublishFailures map[string]int `json:"publish_failures,omitempty"`
	PublishRate     float64        `json:"publish_rate"` // achieved

	// Expected is what the acknowledged publishes owe the subscribers;
	// Delivered counts distinct (subscriber, event) pairs received.
	Expected         uint64  `json:"expected"`
	Delivered        uint64  `json:"delivered"`
	Missing          uint64  `json:"missing"`
	Duplicates       uint64  `json:"duplicates"`
	Malformed        uint64  `json:"malformed,omitempty"`
	DeliveriesPerSec float64 `json:"deliveries_per_s"`
	Latency          latency `json:"latency_ms"`
	// Hist is the latency histogram: [bucket index, count] pairs.
	Hist [][2]uint64 `json:"latency_hist,omitempty"`

	// Steps and Sustained are for a ramp: the best deliveries/s of a
	// step that kept to the p99 limit.
	Steps     []step  `json:"steps,omitempty"`
	P99Limit  float64 `json:"p99_limit_ms,omitempty"`
	Sustained float64 `json:"sustained_deliveries_per_s,omitempty"`

	Churn  *churnResult  `json:"churn,omitempty"`
	Server *serverResult `json:"server,omitempty"`
	// ClientCPU is this process's CPU time while publishing: its share
	// of a machine it shares with the server.
	ClientCPU float64  `json:"client_cpu_s"`
	Warnings  []string `json:"warnings,omitempty"`
}

type latency struct {
	P50  float64 `json:"p50"`
	P90  float64 `json:"p90"`
	P99  float64 `json:"p99"`
	P999 float64 `json:"p999"`
	Max  float64 `json:"max"`
	Mean float64 `json:"mean"`
}

func ms(ns int64) float64 { return float64(ns) / 1e6 }

func latencyOf(h *Hist) latency {
	return latency{
		P50: ms(h.Quantile(0.5)), P90: ms(h.Quantile(0.9)), P99: ms(h.Quantile(0.99)),
		P999: ms(h.Quantile(0.999)), Max: ms(h.Max), Mean: h.Mean() / 1e6,
	}
}

// step is one rate of a ramp.
type step struct {
	Rate             float64 `json:"rate"`
	PublishRate      float64 `json:"publish_rate"`
	Deliveries       uint64  `json:"deliveries"`
	DeliveriesPerSec float64 `json:"deliveries_per_s"`
	Latency          latency `json:"latency_ms"`
	Drained          bool    `json:"drained"` // every acknowledged publish arrived
	OK               bool    `json:"ok"`      // drained, p99 within the limit, and the rate kept
}

type churnResult struct {
	Rate      float64        `json:"rate"`
	Attempted int            `json:"attempted"`
	Opened    int64          `json:"opened"`
	Failures  map[string]int `json:"failures,omitempty"`
}

// serverResult is read from /proc/<pid> of the -pid processes, summed.
type serverResult struct {
	PIDs []int `json:"pids"`
	// before the first connect, once all are connected (for idle: at the
	// end of the hold), and at the end
	RSSBeforeKB    int64   `json:"rss_before_kb"`
	RSSConnectedKB int64   `json:"rss_connected_kb"`
	RSSEndKB       int64   `json:"rss_end_kb"`
	PSSBeforeKB    int64   `json:"pss_before_kb"`
	PSSConnectedKB int64   `json:"pss_connected_kb"`
	PSSEndKB       int64   `json:"pss_end_kb"`
	RSSPerConnKB   float64 `json:"rss_per_conn_kb"`
	PSSPerConnKB   float64 `json:"pss_per_conn_kb"`
	// CPU time while publishing and draining
	CPUSeconds           float64 `json:"cpu_s"`
	DeliveriesPerCPUSec  float64 `json:"deliveries_per_cpu_s"`
	CPUSecondsPerMillion float64 `json:"cpu_s_per_million"`
}

// runner holds what a run's phases share.
type runner struct {
	ctx      context.Context
	c        *config
	progress io.Writer
	t        *target
	topics   []string
	pool     *pool
	pub      *publisher
	res      *result
	// publishing is the time spent publishing, without the drains
	publishing time.Duration
}

func (r *runner) logf(format string, args ...any) {
	fmt.Fprintf(r.progress, "pushbench: "+format+"\n", args...)
}

// run connects the subscribers, publishes, waits for the deliveries to
// arrive, and gathers the figures.
func run(ctx context.Context, c *config, progress io.Writer) (*result, error) {
	t, err := newTarget(c)
	if err != nil {
		return nil, err
	}
	topics := topicNames(c.topics)
	if t.mercure {
		topics = mercureTopics(topics)
	}
	r := &runner{ctx: ctx, c: c, progress: progress, t: t, topics: topics, res: newResult(c, t.proto)}
	res := r.res

	var srv *serverResult
	before, ok := r.readProcs()
	if ok {
		srv = &serverResult{PIDs: c.pids, RSSBeforeKB: before.rssKB, PSSBeforeKB: before.pssKB}
	}

	over := ""
	if t.proto != protoHTTP {
		over = " over " + t.proto
	}
	r.logf("%s: connecting %d %s subscribers%s to %d topics at %g/s", res.Label, c.n, c.transport, over, c.topics, c.connectRate)
	start := time.Now()
	r.pool = connect(ctx, newDialer(c.timeout, c.sources), t, c, r.topics)
	res.ConnectSeconds = time.Since(start).Seconds()
	res.Connected = r.pool.connected()
	failures, nFailed := r.pool.failures.snapshot()
	if nFailed > 0 {
		res.ConnectFailures = failures
	}
	r.logf("connected %d of %d in %.1fs; %d failed %v", res.Connected, c.n, res.ConnectSeconds, nFailed, failures)
	if res.Connected == 0 {
		r.pool.stop()
		return nil, fmt.Errorf("no subscriber could connect: %v", failures)
	}
	sleep(ctx, c.settle)
	if c.rate == 0 && c.churnRate == 0 {
		r.logf("holding the connections for %s", c.duration)
		sleep(ctx, c.duration)
	}
	connected, _ := r.readProcs()

	var cpu0, cpu1 procStats
	self0 := selfCPU()
	if c.rate > 0 || c.churnRate > 0 {
		cpu0, _ = r.readProcs()
		if err := r.publish(); err != nil {
			r.pool.stop()
			return nil, err
		}
		cpu1, _ = r.readProcs()
	}
	res.ClientCPU = selfCPU() - self0
	end, _ := r.readProcs()

	r.pool.stop()
	if d, n := r.pool.rec.disconnects.snapshot(); n > 0 {
		res.Disconnects = d
	}
	tot := r.pool.rec.totals()
	res.Duplicates, res.Malformed = tot.dups, tot.malformed
	res.Latency = latencyOf(tot.hist)
	for i, n := range tot.hist.Counts {
		if n > 0 {
			res.Hist = append(res.Hist, [2]uint64{uint64(i), n})
		}
	}
	if r.pub != nil {
		acked, _ := r.pub.snapshot()
		res.Missing = r.pool.missing(acked)
	}

	if srv != nil {
		srv.RSSConnectedKB, srv.PSSConnectedKB = connected.rssKB, connected.pssKB
		srv.RSSEndKB, srv.PSSEndKB = end.rssKB, end.pssKB
		srv.RSSPerConnKB = float64(connected.rssKB-before.rssKB) / float64(res.Connected)
		srv.PSSPerConnKB = float64(connected.pssKB-before.pssKB) / float64(res.Connected)
		srv.CPUSeconds = cpu1.cpuSeconds - cpu0.cpuSeconds
		if srv.CPUSeconds > 0 && res.Delivered > 0 {
			srv.DeliveriesPerCPUSec = float64(res.Delivered) / srv.CPUSeconds
			srv.CPUSecondsPerMillion = srv.CPUSeconds / float64(res.Delivered) * 1e6
		}
		res.Server = srv
	}
	return res, ctx.Err()
}

// publish runs the publisher (in steps, with a ramp) and the churn, and
// waits for the deliveries.
func (r *runner) publish() error {
	c, res := r.c, r.res
	pub, err := newPublisher(r.t, r.topics, c.size, c.pubConns, c.timeout)
	if err != nil {
		return err
	}
	defer pub.close()
	r.pub = pub

	var churned chan *churnResult
	if c.churnRate > 0 {
		churned = make(chan *churnResult, 1)
		go func() { churned <- churn(r.ctx, newDialer(c.timeout, c.sources), r.t, c, r.topics) }()
	}

	start := time.Now()
	u0 := r.pool.rec.unique()
	var last time.Time
	switch {
	case c.rate == 0: // churn alone
		sleep(r.ctx, c.duration)
		last = time.Now()
	case c.ramp > 1:
		res.P99Limit = ms(int64(c.p99Limit))
		for rate := c.rate; r.ctx.Err() == nil; rate *= c.ramp {
			st, at := r.step(rate, c.step)
			last = at
			res.Steps = append(res.Steps, st)
			r.logf("step %g/s: %.0f deliveries/s, p99 %.1f ms, drained %v", rate, st.DeliveriesPerSec, st.Latency.P99, st.Drained)
			if st.OK {
				res.Sustained = max(res.Sustained, st.DeliveriesPerSec)
			}
			if !st.OK || time.Since(start)+c.step > c.duration {
				break
			}
		}
	default:
		r.logf("publishing %g/s of %d bytes for %s", c.rate, c.size, c.duration)
		_, last = r.step(c.rate, c.duration)
	}
	if churned != nil {
		res.Churn = <-churned
	}

	res.Delivered = r.pool.rec.unique() - u0
	if d := last.Sub(start).Seconds(); d > 0 {
		res.DeliveriesPerSec = float64(res.Delivered) / d
	}
	res.Published, res.PublishOK = pub.sent.Load(), pub.ok.Load()
	if r.publishing > 0 {
		res.PublishRate = float64(res.Published) / r.publishing.Seconds()
	}
	if f, n := pub.failures.snapshot(); n > 0 {
		res.PublishFailures = f
	}
	_, ackedN := pub.snapshot()
	res.Expected = r.expected(ackedN)
	return nil
}

// step publishes at rate for d and waits for the deliveries; at is when
// the last of them arrived.
func (r *runner) step(rate float64, d time.Duration) (st step, at time.Time) {
	before := r.pool.rec.totals()
	sent0 := r.pub.sent.Load()
	start := time.Now()
	r.pub.run(r.ctx, rate, d)
	published := time.Since(start)
	r.publishing += published
	at, st.Drained = r.drain()
	after := r.pool.rec.totals()
	h := after.hist.Since(before.hist)

	st.Rate = rate
	st.PublishRate = float64(r.pub.sent.Load()-sent0) / published.Seconds()
	st.Deliveries = after.unique - before.unique
	if s := at.Sub(start).Seconds(); s > 0 {
		st.DeliveriesPerSec = float64(st.Deliveries) / s
	}
	st.Latency = latencyOf(h)
	st.OK = st.Drained && h.Quantile(0.99) <= int64(r.c.p99Limit) && st.PublishRate >= 0.9*rate
	return st, at
}

// drain waits until the subscribers have every acknowledged publish, or
// none has arrived for -drain; it returns when the last one came.
func (r *runner) drain() (last time.Time, complete bool) {
	_, ackedN := r.pub.snapshot()
	want := r.expected(ackedN)
	last, prev := time.Now(), r.pool.rec.unique()
	for {
		u := r.pool.rec.unique()
		if u != prev {
			prev, last = u, time.Now()
		}
		if u >= want {
			return last, true
		}
		if time.Since(last) > r.c.drain || r.ctx.Err() != nil {
			return last, false
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// expected is what the acknowledged publishes owe the subscribers that
// connected.
func (r *runner) expected(ackedN []int) uint64 {
	var n uint64
	for t, subs := range r.pool.perTopic(len(r.topics)) {
		n += uint64(subs) * uint64(ackedN[t])
	}
	return n
}

func (r *runner) readProcs() (procStats, bool) {
	if len(r.c.pids) == 0 {
		return procStats{}, false
	}
	s, err := readProcs(r.c.pids)
	if err != nil {
		r.res.Warnings = append(r.res.Warnings, err.Error())
		return s, false
	}
	return s, true
}

func newResult(c *config, proto string) *result {
	label := c.label
	if label == "" {
		label = c.target + " " + c.transport
		if c.scenario != "" {
			label += " " + c.scenario
		}
		if proto != protoHTTP {
			label += " " + proto
		}
		if c.pubWS {
			label += " pub-ws"
		}
	}
	over := ""
	if c.pubWS {
		over = "ws"
	}
	return &result{
		Label: label, Target: c.target, Transport: c.transport, Protocol: proto, Scenario: c.scenario,
		Subscribers: c.n, Topics: c.topics, Rate: c.rate, Size: c.size, DurationS: c.duration.Seconds(),
		PatternShare: c.patternShare, PublishOver: over,
	}
}

// topicNames are unique to the run, so that nothing a server kept from an
// earlier run reaches this one.
func topicNames(k int) []string {
	run := strconv.FormatInt(time.Now().UnixNano()>>20&0xffffff, 36)
	topics := make([]string, k)
	for i := range topics {
		topics[i] = "pb-" + run + "-" + strconv.Itoa(i)
	}
	return topics
}

// churn opens and closes connections at -churn per second for -duration,
// each held open for -churn-hold once its stream is open.
func churn(ctx context.Context, d *dialer, t *target, c *config, topics []string) *churnResult {
	res := &churnResult{Rate: c.churnRate}
	var wg sync.WaitGroup
	var opened atomic.Int64
	var failures reasons
	res.Attempted = pace(ctx, c.churnRate, int(c.churnRate*c.duration.Seconds()), func(i int) {
		wg.Go(func() {
			conn, _, err := open(ctx, d, t, c.transport, selector(topics, i, c.patternShare))
			if err != nil {
				failures.add(err)
				return
			}
			opened.Add(1)
			sleep(ctx, c.churnHold)
			conn.Close()
		})
	})
	wg.Wait()
	res.Opened = opened.Load()
	if f, n := failures.snapshot(); n > 0 {
		res.Failures = f
	}
	return res
}

// sleep waits for d or until ctx is done.
func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}
