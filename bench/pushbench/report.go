package main

import (
	"cmp"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
)

// printResult writes one run as a two-column table.
func printResult(w io.Writer, r *result) {
	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	row := func(name, format string, args ...any) {
		fmt.Fprintf(tw, "  %s\t"+format+"\n", append([]any{name}, args...)...)
	}
	fmt.Fprintf(tw, "%s\n", r.Label)
	row("subscribers", "%d on %d topics: %d connected in %.1f s", r.Subscribers, r.Topics, r.Connected, r.ConnectSeconds)
	row("connect failures", "%s", formatReasons(r.ConnectFailures))
	if r.Published > 0 {
		row("publishes", "%d of %d B at %.1f/s, %d acknowledged; failures: %s",
			r.Published, r.Size, r.PublishRate, r.PublishOK, formatReasons(r.PublishFailures))
		row("deliveries", "%d of %d expected, %.0f/s", r.Delivered, r.Expected, r.DeliveriesPerSec)
		row("missing", "%d", r.Missing)
		row("duplicates", "%d", r.Duplicates)
		if r.Malformed > 0 {
			row("malformed", "%d", r.Malformed)
		}
		l := r.Latency
		row("latency (ms)", "p50 %.2f  p90 %.2f  p99 %.2f  p99.9 %.2f  max %.2f  mean %.2f", l.P50, l.P90, l.P99, l.P999, l.Max, l.Mean)
	}
	row("disconnects", "%s", formatReasons(r.Disconnects))
	for _, s := range r.Steps {
		row("  step", "%g/s (did %.1f/s): %.0f deliveries/s, p99 %.2f ms, max %.2f ms, drained %v",
			s.Rate, s.PublishRate, s.DeliveriesPerSec, s.Latency.P99, s.Latency.Max, s.Drained)
	}
	if r.Steps != nil {
		row("sustained", "%.0f deliveries/s with p99 ≤ %g ms", r.Sustained, r.P99Limit)
	}
	if c := r.Churn; c != nil {
		row("churn", "%d connects at %g/s, %d opened; failures: %s", c.Attempted, c.Rate, c.Opened, formatReasons(c.Failures))
	}
	if s := r.Server; s != nil {
		row("server RSS", "%s before, %s connected (%.1f KiB per connection), %s at the end",
			mib(s.RSSBeforeKB), mib(s.RSSConnectedKB), s.RSSPerConnKB, mib(s.RSSEndKB))
		row("server PSS", "%s before, %s connected (%.1f KiB per connection), %s at the end",
			mib(s.PSSBeforeKB), mib(s.PSSConnectedKB), s.PSSPerConnKB, mib(s.PSSEndKB))
		if r.Published > 0 {
			row("server CPU", "%.2f s while publishing: %.0f deliveries per CPU-second (%.2f s per million)",
				s.CPUSeconds, s.DeliveriesPerCPUSec, s.CPUSecondsPerMillion)
		}
	}
	if r.Published > 0 {
		row("client CPU", "%.2f s", r.ClientCPU)
	}
	for _, w := range r.Warnings {
		row("warning", "%s", w)
	}
	tw.Flush()
}

func mib(kb int64) string { return fmt.Sprintf("%.1f MiB", float64(kb)/1024) }

// formatReasons lists counts by reason, the commonest first.
func formatReasons(m map[string]int) string {
	if len(m) == 0 {
		return "none"
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b string) int { return cmp.Or(m[b]-m[a], strings.Compare(a, b)) })
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s ×%d", k, m[k])
	}
	return strings.Join(parts, ", ")
}

func readResults(files []string) ([]*result, error) {
	var results []*result
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, err
		}
		r := new(result)
		if err := json.Unmarshal(b, r); err != nil {
			return nil, fmt.Errorf("%s: %v", f, err)
		}
		results = append(results, r)
	}
	return results, nil
}

// metric is one row of a comparison.
type metric struct {
	name      string
	scenarios string // where it is shown: scenario names, "*" for all, "-" for plain runs
	value     func(*result) (float64, bool)
}

func server(f func(*serverResult) float64) func(*result) (float64, bool) {
	return func(r *result) (float64, bool) {
		if r.Server == nil {
			return 0, false
		}
		return f(r.Server), true
	}
}

func always(f func(*result) float64) func(*result) (float64, bool) {
	return func(r *result) (float64, bool) { return f(r), true }
}

const publishing = "fanout broadcast churn -"

var metrics = []metric{
	{"connected", "*", always(func(r *result) float64 { return float64(r.Connected) })},
	{"connect failures", "*", always(func(r *result) float64 { return float64(count(r.ConnectFailures)) })},
	{"RSS per connection (KiB)", "idle", server(func(s *serverResult) float64 { return s.RSSPerConnKB })},
	{"PSS per connection (KiB)", "idle", server(func(s *serverResult) float64 { return s.PSSPerConnKB })},
	{"deliveries/s", "fanout churn -", always(func(r *result) float64 { return r.DeliveriesPerSec })},
	{"sustained deliveries/s, p99 ≤ limit", "broadcast", always(func(r *result) float64 { return r.Sustained })},
	{"p99 of the first step (ms)", "broadcast", func(r *result) (float64, bool) {
		if len(r.Steps) == 0 {
			return 0, false
		}
		return r.Steps[0].Latency.P99, true
	}},
	{"peak deliveries/s, any p99", "broadcast", func(r *result) (float64, bool) {
		peak := 0.0
		for _, s := range r.Steps {
			peak = max(peak, s.DeliveriesPerSec)
		}
		return peak, len(r.Steps) > 0
	}},
	{"latency p50 (ms)", "fanout churn -", always(func(r *result) float64 { return r.Latency.P50 })},
	{"latency p99 (ms)", "fanout churn -", always(func(r *result) float64 { return r.Latency.P99 })},
	{"latency max (ms)", "fanout churn -", always(func(r *result) float64 { return r.Latency.Max })},
	{"deliveries per server CPU-s", "fanout churn -", server(func(s *serverResult) float64 { return s.DeliveriesPerCPUSec })},
	{"server CPU-s per million deliveries", "fanout churn -", server(func(s *serverResult) float64 { return s.CPUSecondsPerMillion })},
	{"churn connects failed", "churn", func(r *result) (float64, bool) {
		if r.Churn == nil {
			return 0, false
		}
		return float64(r.Churn.Attempted - int(r.Churn.Opened)), true
	}},
	{"missing deliveries", publishing, always(func(r *result) float64 { return float64(r.Missing) })},
	{"duplicate deliveries", publishing, always(func(r *result) float64 { return float64(r.Duplicates) })},
	{"disconnects", publishing, always(func(r *result) float64 { return float64(count(r.Disconnects)) })},
	{"client CPU-s", publishing, always(func(r *result) float64 { return r.ClientCPU })},
}

func count(m map[string]int) int {
	n := 0
	for _, v := range m {
		n += v
	}
	return n
}

// ours is the caddy-push target that another is compared with: over the
// Mercure protocol, caddy-push's push_mercure with Mercure's hub; over
// their own protocols, caddy-push with nchan and Centrifugo.
func ours(target string) string {
	if target == "mercure" {
		return "caddy-push-mercure"
	}
	return "caddy-push"
}

// ratioPair is a ratio column: ours to theirs, as indexes of the targets.
type ratioPair struct{ ours, theirs int }

// ratioPairs are the ratio columns: each target that is not caddy-push's
// against its caddy-push counterpart, when that ran too.
func ratioPairs(targets []string) []ratioPair {
	var pairs []ratioPair
	for i, t := range targets {
		if t == "caddy-push" || t == "caddy-push-mercure" {
			continue
		}
		if j := slices.Index(targets, ours(t)); j >= 0 {
			pairs = append(pairs, ratioPair{j, i})
		}
	}
	return pairs
}

// caddyPushFirst orders caddy-push, then caddy-push-mercure, before the
// other targets, which keep their order.
func caddyPushFirst(a, b string) int {
	rank := func(t string) int {
		switch t {
		case "caddy-push":
			return 0
		case "caddy-push-mercure":
			return 1
		}
		return 2
	}
	return rank(a) - rank(b)
}

// printComparison writes one row per scenario, transport and metric, a
// column per target with the median of its runs, and the ratios of
// caddy-push's targets to the others (ratioPairs).
func printComparison(w io.Writer, results []*result) {
	type key struct{ scenario, protocol, transport, over string }
	var keys []key
	var targets []string
	groups := map[key]map[string][]*result{}
	for _, r := range results {
		k := key{cmp.Or(r.Scenario, "-"), r.Protocol, r.Transport, r.PublishOver}
		if groups[k] == nil {
			groups[k] = map[string][]*result{}
			keys = append(keys, k)
		}
		groups[k][r.Target] = append(groups[k][r.Target], r)
		if !slices.Contains(targets, r.Target) {
			targets = append(targets, r.Target)
		}
	}
	// caddy-push's first: the ratios are of them to the others
	slices.SortStableFunc(targets, caddyPushFirst)
	pairs := ratioPairs(targets)
	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', tabwriter.AlignRight)
	header := "scenario\ttransport\tmetric\t"
	for _, t := range targets {
		header += t + "\t"
	}
	for _, p := range pairs {
		header += targets[p.ours] + "/" + targets[p.theirs] + "\t"
	}
	fmt.Fprintln(tw, header)
	for _, k := range keys {
		runs := 0
		for _, rs := range groups[k] {
			runs = max(runs, len(rs))
		}
		// the protocol, when not plain HTTP/1.1, in the scenario's name:
		// fanout-h2
		name := k.scenario
		if k.protocol != "" {
			name = strings.TrimPrefix(name+"-"+k.protocol, "--")
		}
		if k.over != "" {
			// published over WebSocket: fanout-pubws
			name += "-pub" + k.over
		}
		for _, m := range metrics {
			if m.scenarios != "*" && !slices.Contains(strings.Fields(m.scenarios), k.scenario) {
				continue
			}
			line := name + "\t" + k.transport + "\t" + m.name + "\t"
			vals := make([]float64, len(targets))
			have := make([]bool, len(targets))
			shown := false
			for i, t := range targets {
				vals[i], have[i] = median(groups[k][t], m.value)
				if have[i] {
					line += formatNum(vals[i]) + "\t"
					shown = true
				} else {
					line += "n/a\t"
				}
			}
			if !shown {
				continue
			}
			for _, p := range pairs {
				line += ratio(vals[p.ours], vals[p.theirs], have[p.ours] && have[p.theirs]) + "\t"
			}
			fmt.Fprintln(tw, line)
		}
	}
	tw.Flush()
	if n := len(results); n > 0 {
		fmt.Fprintf(w, "(medians of the runs of each target; %d results)\n", n)
	}
}

// median of the values a metric has in rs.
func median(rs []*result, value func(*result) (float64, bool)) (float64, bool) {
	var vs []float64
	for _, r := range rs {
		if v, ok := value(r); ok {
			vs = append(vs, v)
		}
	}
	if len(vs) == 0 {
		return 0, false
	}
	slices.Sort(vs)
	if len(vs)%2 == 1 {
		return vs[len(vs)/2], true
	}
	return (vs[len(vs)/2-1] + vs[len(vs)/2]) / 2, true
}

func ratio(a, b float64, ok bool) string {
	switch {
	case !ok:
		return "n/a"
	case a == 0 && b == 0:
		return "="
	case b == 0:
		return "∞"
	}
	return strconv.FormatFloat(a/b, 'f', 2, 64) + "×"
}

func formatNum(v float64) string {
	switch a := math.Abs(v); {
	case v == math.Trunc(v) && a < 1e12:
		return strconv.FormatInt(int64(v), 10)
	case a >= 100:
		return strconv.FormatFloat(v, 'f', 0, 64)
	case a >= 10:
		return strconv.FormatFloat(v, 'f', 1, 64)
	}
	return strconv.FormatFloat(v, 'f', 2, 64)
}
