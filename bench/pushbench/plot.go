package main

import (
	"fmt"
	"slices"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
)

// plotCDF draws the latency CDF of every result in one chart, on a log
// scale since targets can be orders of magnitude apart. A target keeps
// its colour and a transport (and scenario, and protocol) its dash
// pattern, so the curves to compare are told apart at a glance.
func plotCDF(file string, results []*result) error {
	p := plot.New()
	p.Title.Text = "Delivery latency, publish to subscriber"
	p.X.Label.Text = "latency (ms, log scale)"
	p.Y.Label.Text = "fraction of deliveries"
	p.X.Scale = plot.LogScale{}
	p.X.Tick.Marker = plot.LogTicks{Prec: -1}
	p.Y.Min, p.Y.Max = 0, 1
	p.Add(plotter.NewGrid())
	p.Legend.Top, p.Legend.Left = false, false // below and right of the curves: empty in a CDF

	var targets, kinds []string
	for _, r := range results {
		pts := cdfPoints(r)
		if len(pts) == 0 {
			continue
		}
		line, err := plotter.NewLine(pts)
		if err != nil {
			return err
		}
		line.Width = vg.Points(1.5)
		line.Color = plotutil.Color(indexOf(&targets, r.Target))
		line.Dashes = plotutil.Dashes(indexOf(&kinds, r.Transport+" "+r.Scenario+" "+r.Protocol))
		p.Add(line)
		p.Legend.Add(fmt.Sprintf("%s (p99 %.3g ms)", r.Label, r.Latency.P99), line)
	}
	if targets == nil {
		return fmt.Errorf("plot %s: no result has latencies", file)
	}
	return p.Save(8*vg.Inch, 5*vg.Inch, file)
}

// cdfPoints are (top of bucket in ms, fraction at or below) for each
// bucket that has values; a log axis cannot show 0, so the first point
// is at 1 µs or above.
func cdfPoints(r *result) plotter.XYs {
	var total uint64
	for _, b := range r.Hist {
		total += b[1]
	}
	var pts plotter.XYs
	var seen uint64
	for _, b := range r.Hist {
		seen += b[1]
		x := max(ms(bucketHigh(int(b[0]))), 0.001)
		pts = append(pts, plotter.XY{X: x, Y: float64(seen) / float64(total)})
	}
	return pts
}

// indexOf returns the index of s in *list, adding it if needed.
func indexOf(list *[]string, s string) int {
	if i := slices.Index(*list, s); i >= 0 {
		return i
	}
	*list = append(*list, s)
	return len(*list) - 1
}
