package main

import (
	"fmt"
	"image/color"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

type plotFile struct{ title, file string }

// palette gives every contender the same colour in every plot.
var palette = map[string]color.Color{
	"redlease":           color.RGBA{R: 200, G: 30, B: 40, A: 255},
	"redlease 8 lockers": color.RGBA{R: 240, G: 130, B: 40, A: 255},
	manyLockersName:      color.RGBA{R: 130, G: 60, B: 20, A: 255},
	"redsync":            color.RGBA{R: 30, G: 90, B: 180, A: 255},
	"redsync defaults":   color.RGBA{R: 30, G: 90, B: 180, A: 255},
	"redsync tuned":      color.RGBA{R: 100, G: 170, B: 240, A: 255},
	"redislock":          color.RGBA{R: 20, G: 140, B: 70, A: 255},
	"redislock defaults": color.RGBA{R: 20, G: 140, B: 70, A: 255},
	"redislock tuned":    color.RGBA{R: 120, G: 200, B: 100, A: 255},
	"asynq":              color.RGBA{R: 120, G: 50, B: 160, A: 255},
	"raw floor":          color.RGBA{R: 90, G: 90, B: 90, A: 255},
	readersWriterName:    color.RGBA{R: 200, G: 30, B: 40, A: 255},
	writerAloneName:      color.RGBA{R: 90, G: 90, B: 90, A: 255},
}

func colorOf(name string) color.Color {
	if c, ok := palette[name]; ok {
		return c
	}
	return color.Black
}

// dashes: tuned variants dashed, floors dotted, the rest solid.
func dashesOf(name string) []vg.Length {
	switch {
	case strings.Contains(name, "tuned") || strings.Contains(name, " lockers"):
		return []vg.Length{vg.Points(6), vg.Points(3)}
	case strings.Contains(name, "floor"):
		return []vg.Length{vg.Points(2), vg.Points(2)}
	}
	return nil
}

func (r *report) plots(dir string) ([]plotFile, error) {
	var out []plotFile
	add := func(title, file string, p *plot.Plot, err error) error {
		if err != nil {
			return err
		}
		if p == nil {
			return nil
		}
		if err := savePNG(p, filepath.Join(dir, file)); err != nil {
			return err
		}
		out = append(out, plotFile{title, file})
		return nil
	}
	if t := r.table("cycle"); t != nil {
		p, err := cyclePlot(t)
		if err := add("Uncontended lock cycle: cycles/s per contender", "cycle_ops.png", p, err); err != nil {
			return nil, err
		}
	}
	if t := r.table("handoff"); t != nil {
		for _, v := range t.variants {
			title := fmt.Sprintf("Hand-off latency, %d goroutines on one key, hold %s", r.cfg.handoffGoroutines, v)
			if len(t.samples[cellKey{v, manyLockersName}]) > 0 {
				title = fmt.Sprintf("Hand-off latency, %d goroutines on one key (%s: %d), hold %s",
					r.cfg.handoffGoroutines, manyLockersName, manyLockers, v)
			}
			p, err := cdfPlot(t, v, title, "release → next acquire (log scale)", "fraction of hand-offs ≤ x")
			name := "handoff_cdf_hold_" + strings.ReplaceAll(strings.ReplaceAll(v, "µ", "u"), ".", "_") + ".png"
			if err := add("Hand-off latency CDF, hold "+v, name, p, err); err != nil {
				return nil, err
			}
		}
	}
	if t := r.table("queue"); t != nil {
		p, err := queuePlot(t)
		if err := add("Queue consume throughput against concurrency", "queue_throughput.png", p, err); err != nil {
			return nil, err
		}
	}
	if t := r.table("pickup"); t != nil {
		p, err := cdfPlot(t, "", "Idle pick-up latency (enqueue call → handler start)",
			"pick-up latency (log scale)", "fraction of messages ≤ x")
		if err := add("Idle pick-up latency CDF", "pickup_cdf.png", p, err); err != nil {
			return nil, err
		}
	}
	if t := r.table("writer"); t != nil {
		p, err := cdfPlot(t, "", fmt.Sprintf("Writer's wait, Obtain every %v, with and without %d readers holding %v each",
			stream.writerEvery, stream.readers, stream.readerHold), "Obtain call → holding (log scale)", "fraction of writer acquisitions ≤ x")
		if err := add("Writer's wait under a stream of readers, CDF", "writer_wait_cdf.png", p, err); err != nil {
			return nil, err
		}
	}
	return out, nil
}

func savePNG(p *plot.Plot, path string) error {
	const w, h = 8 * vg.Inch, 5 * vg.Inch
	c := vgimg.NewWith(vgimg.UseWH(w, h), vgimg.UseDPI(150), vgimg.UseBackgroundColor(color.White))
	p.Draw(draw.New(c))
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := (vgimg.PngCanvas{Canvas: c}).WriteTo(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func newPlot(title, x, y string) *plot.Plot {
	p := plot.New()
	p.Title.Text = title
	p.X.Label.Text = x
	p.Y.Label.Text = y
	p.Add(plotter.NewGrid())
	return p
}

// cdfPlot draws each contender's pooled latency samples as an empirical
// CDF on a log x axis (the contenders span several decades).
func cdfPlot(t *table, variant, title, xlabel, ylabel string) (*plot.Plot, error) {
	p := newPlot(title, xlabel, ylabel)
	p.X.Scale = plot.LogScale{}
	p.X.Tick.Marker = relabel{plot.LogTicks{Prec: -1}, micros}
	p.Y.Min, p.Y.Max = 0, 1
	var yt plot.ConstantTicks
	for i := 0; i <= 10; i++ {
		yt = append(yt, plot.Tick{Value: float64(i) / 10, Label: fmt.Sprintf("%.1f", float64(i)/10)})
	}
	p.Y.Tick.Marker = yt
	lo, hi := math.Inf(1), math.Inf(-1)
	drawn := 0
	for _, c := range t.contenders {
		s := t.samples[cellKey{variant, c}] // sorted per round; sort the pool
		if len(s) == 0 {
			continue
		}
		s = sortedCopy(s)
		const maxPoints = 600
		step := max(1, len(s)/maxPoints)
		var pts plotter.XYs
		for i := 0; i < len(s); i += step {
			pts = append(pts, plotter.XY{X: math.Max(s[i], 0.1), Y: float64(i+1) / float64(len(s))})
		}
		pts = append(pts, plotter.XY{X: math.Max(s[len(s)-1], 0.1), Y: 1})
		l, err := plotter.NewLine(pts)
		if err != nil {
			return nil, err
		}
		l.Color = colorOf(c)
		l.Width = vg.Points(2)
		l.Dashes = dashesOf(c)
		p.Add(l)
		label := fmt.Sprintf("%s (n=%d)", c, len(s))
		if self, _, _ := t.stat(variant, c, "self"); !math.IsNaN(self) {
			label = fmt.Sprintf("%s (n=%d, %.0f%% same holder)", c, len(s), self)
		}
		p.Legend.Add(label, l)
		lo, hi = math.Min(lo, pts[0].X), math.Max(hi, pts[len(pts)-1].X)
		drawn++
	}
	if drawn == 0 {
		return nil, nil
	}
	// Room on the right, where every curve has reached 1, for the legend.
	p.X.Min = math.Pow(10, math.Floor(math.Log10(lo)))
	p.X.Max = math.Pow(10, math.Ceil(math.Log10(hi))+1.2)
	p.Legend.Top = false
	p.Legend.Left = false
	p.Legend.YOffs = vg.Points(10)
	p.Legend.XOffs = -vg.Points(10)
	return p, nil
}

// relabel keeps a ticker's positions but prints its labels in our units.
type relabel struct {
	plot.Ticker
	label func(float64) string
}

func (r relabel) Ticks(lo, hi float64) []plot.Tick {
	ts := r.Ticker.Ticks(lo, hi)
	for i := range ts {
		if ts[i].Label != "" {
			ts[i].Label = r.label(ts[i].Value)
		}
	}
	return ts
}

// micros labels a latency axis given in µs.
func micros(v float64) string {
	switch {
	case v >= 1e6:
		return strconv.FormatFloat(v/1e6, 'g', 4, 64) + " s"
	case v >= 1e3:
		return strconv.FormatFloat(v/1e3, 'g', 4, 64) + " ms"
	}
	return strconv.FormatFloat(v, 'g', 4, 64) + " µs"
}

// rate labels a per-second axis.
func rate(v float64) string {
	switch {
	case v >= 1e6:
		return strconv.FormatFloat(v/1e6, 'g', 4, 64) + "M"
	case v >= 1e3:
		return strconv.FormatFloat(v/1e3, 'g', 4, 64) + "k"
	}
	return strconv.FormatFloat(v, 'g', 4, 64)
}

func sortedCopy(s []float64) []float64 {
	c := append([]float64(nil), s...)
	slices.Sort(c)
	return c
}

// errPoints is a median with its min–max, for error bars.
type errPoints struct {
	plotter.XYs
	lo, hi []float64
}

func (e errPoints) YError(i int) (float64, float64) {
	return e.XYs[i].Y - e.lo[i], e.hi[i] - e.XYs[i].Y
}

// queuePlot draws consume msgs/s against concurrency, median with
// min–max error bars.
func queuePlot(t *table) (*plot.Plot, error) {
	p := newPlot("Queue: consume throughput against concurrency (median, min–max over rounds)",
		"consumer concurrency (log scale)", "messages/s consumed")
	p.X.Scale = plot.LogScale{}
	var ticks plot.ConstantTicks
	var xs []float64
	for _, v := range t.variants {
		x, err := strconv.ParseFloat(v, 64)
		if err != nil {
			return nil, err
		}
		xs = append(xs, x)
		ticks = append(ticks, plot.Tick{Value: x, Label: v})
	}
	p.X.Tick.Marker = ticks
	p.X.Min, p.X.Max = xs[0]/1.5, xs[len(xs)-1]*1.5
	ymin, ymax := math.Inf(1), math.Inf(-1)
	for _, c := range t.contenders {
		var ep errPoints
		for i, v := range t.variants {
			med, lo, hi := t.stat(v, c, "consume")
			if math.IsNaN(med) {
				continue
			}
			ep.XYs = append(ep.XYs, plotter.XY{X: xs[i], Y: med})
			ep.lo, ep.hi = append(ep.lo, lo), append(ep.hi, hi)
			ymin, ymax = math.Min(ymin, lo), math.Max(ymax, hi)
		}
		if len(ep.XYs) == 0 {
			continue
		}
		l, pts, err := plotter.NewLinePoints(ep.XYs)
		if err != nil {
			return nil, err
		}
		l.Color, pts.Color = colorOf(c), colorOf(c)
		l.Width = vg.Points(2)
		l.Dashes = dashesOf(c)
		pts.Shape = draw.CircleGlyph{}
		pts.Radius = vg.Points(3)
		eb, err := plotter.NewYErrorBars(ep)
		if err != nil {
			return nil, err
		}
		eb.Color = colorOf(c)
		p.Add(l, pts, eb)
		p.Legend.Add(c, l, pts)
	}
	if math.IsInf(ymin, 0) {
		return nil, nil
	}
	if ymax/ymin > 20 {
		p.Y.Scale = plot.LogScale{}
		p.Y.Tick.Marker = relabel{plot.LogTicks{Prec: -1}, rate}
		p.Y.Label.Text += " (log scale)"
		p.Y.Min, p.Y.Max = ymin/2, ymax*2
	} else {
		p.Y.Min, p.Y.Max = 0, ymax*1.15
		p.Y.Tick.Marker = relabel{plot.DefaultTicks{}, rate}
	}
	// Bottom right: below the slowest contender's line at high concurrency.
	p.Legend.Top = false
	p.Legend.Left = false
	p.Legend.XOffs = -vg.Points(10)
	p.Legend.YOffs = vg.Points(10)
	return p, nil
}

// cyclePlot draws cycles/s per contender as grouped bars, one bar per
// goroutine count, with min–max error bars.
func cyclePlot(t *table) (*plot.Plot, error) {
	p := newPlot("Uncontended lock cycle (acquire + release): median cycles/s, min–max over rounds",
		"", "cycles/s")
	nv := len(t.variants)
	const groupWidth = 0.7
	barW := vg.Points(36)
	ymax := 0.0
	for vi, v := range t.variants {
		var vals plotter.Values
		var ep errPoints
		off := -groupWidth/2 + groupWidth*(float64(vi)+0.5)/float64(nv)
		for ci, c := range t.contenders {
			med, lo, hi := t.stat(v, c, "ops")
			if math.IsNaN(med) {
				med, lo, hi = 0, 0, 0
			}
			vals = append(vals, med)
			ep.XYs = append(ep.XYs, plotter.XY{X: float64(ci) + off, Y: med})
			ep.lo, ep.hi = append(ep.lo, lo), append(ep.hi, hi)
			ymax = math.Max(ymax, hi)
		}
		bars, err := plotter.NewBarChart(vals, barW)
		if err != nil {
			return nil, err
		}
		bars.XMin = off
		bars.Color = []color.Color{
			color.RGBA{R: 90, G: 140, B: 200, A: 255},
			color.RGBA{R: 240, G: 160, B: 60, A: 255},
			color.RGBA{R: 120, G: 190, B: 110, A: 255},
		}[vi%3]
		bars.LineStyle.Width = vg.Points(0.5)
		eb, err := plotter.NewYErrorBars(ep)
		if err != nil {
			return nil, err
		}
		p.Add(bars, eb)
		n, _ := strconv.Atoi(v)
		p.Legend.Add(plural(n, "goroutine"), bars)
	}
	p.NominalX(t.contenders...)
	p.X.Min, p.X.Max = -0.6, float64(len(t.contenders))-0.4
	p.Y.Min, p.Y.Max = 0, ymax*1.25
	p.Y.Tick.Marker = relabel{plot.DefaultTicks{}, rate}
	p.Legend.Top = true
	p.Legend.Left = true
	p.Legend.XOffs = vg.Points(10)
	p.Legend.YOffs = -vg.Points(8)
	return p, nil
}
