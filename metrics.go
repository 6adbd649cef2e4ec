package push

import (
	"errors"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
)

// Transports, as metric labels.
const (
	TransportSSE = "sse"
	TransportWS  = "ws"
)

var transports = [...]string{TransportSSE, TransportWS}

// Reasons an idempotency key is refused, as metric labels.
const (
	conflictDifferent = iota // the key was used for another message: 422
	conflictInFlight         // the key's first publish is under way: 409
)

var conflictReasons = [...]string{"different_message", "in_flight"}

// hubStats are a hub's counters. They live in the hub, not in a
// configuration's metrics registry, so they survive reloads; each
// configuration registers a collector that reads them.
type hubStats struct {
	published atomic.Uint64
	// replays counts keyed publishes answered with the first event's id,
	// conflicts those refused, by reason
	replays      atomic.Uint64
	conflicts    [len(conflictReasons)]atomic.Uint64
	perTransport [len(transports)]transportStats
}

type transportStats struct {
	connections atomic.Int64
	delivered   atomic.Uint64
	replayed    atomic.Uint64
	slow        atomic.Uint64
	paused      atomic.Uint64
	// disconnected counts streams an operator ended (Hub.Disconnect)
	disconnected atomic.Uint64
	// expired counts streams ended as their token expired
	expired atomic.Uint64
}

func (s *hubStats) of(transport string) *transportStats {
	return &s.perTransport[transportIndex(transport)]
}

func transportIndex(transport string) int {
	if transport == TransportWS {
		return 1
	}
	return 0
}

var (
	descConnections = prometheus.NewDesc("caddy_push_connections",
		"Open subscriber connections.", []string{"hub", "transport"}, nil)
	descPublished = prometheus.NewDesc("caddy_push_events_published_total",
		"Events published to the hub from this process.", []string{"hub"}, nil)
	descDelivered = prometheus.NewDesc("caddy_push_events_delivered_total",
		"Events written to subscribers, live or replayed.", []string{"hub", "transport"}, nil)
	descReplayed = prometheus.NewDesc("caddy_push_events_replayed_total",
		"Events replayed to resuming subscribers.", []string{"hub", "transport"}, nil)
	descSlow = prometheus.NewDesc("caddy_push_slow_disconnects_total",
		"Subscribers disconnected because they fell too far behind.", []string{"hub", "transport"}, nil)
	descPaused = prometheus.NewDesc("caddy_push_pauses_total",
		"Streams paused: told to come back later (max_duration with pause_for, or Hub.Pause).", []string{"hub", "transport"}, nil)
	descDisconnected = prometheus.NewDesc("caddy_push_disconnects_total",
		"Streams an operator disconnected (the admin API, or Hub.Disconnect).", []string{"hub", "transport"}, nil)
	descExpired = prometheus.NewDesc("caddy_push_token_expirations_total",
		"Streams ended because the token that admitted them expired.", []string{"hub", "transport"}, nil)
	descIdempotentReplays = prometheus.NewDesc("caddy_push_idempotent_replays_total",
		"Publishes with an idempotency key already used for the same message: answered with the first event's id, nothing published.", []string{"hub"}, nil)
	descIdempotencyConflicts = prometheus.NewDesc("caddy_push_idempotency_conflicts_total",
		"Publishes refused for their idempotency key: used for a different message (422), or its first publish still in flight (409).", []string{"hub", "reason"}, nil)
	descEventsDropped = prometheus.NewDesc("caddy_push_hook_events_dropped_total",
		"Events for the app's events hook dropped: its queue was full, or the hook was removed before the app took them.", []string{"hub"}, nil)
)

// collector exposes the hubs of one configuration.
type collector struct{ app *App }

func (c collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descConnections, descPublished, descDelivered, descReplayed, descSlow, descPaused, descDisconnected,
		descExpired, descIdempotentReplays, descIdempotencyConflicts, descEventsDropped} {
		ch <- d
	}
}

func (c collector) Collect(ch chan<- prometheus.Metric) {
	for name, hub := range c.app.hubs {
		s := &hub.stats
		ch <- prometheus.MustNewConstMetric(descPublished, prometheus.CounterValue, float64(s.published.Load()), name)
		ch <- prometheus.MustNewConstMetric(descIdempotentReplays, prometheus.CounterValue, float64(s.replays.Load()), name)
		ch <- prometheus.MustNewConstMetric(descEventsDropped, prometheus.CounterValue, float64(hub.events.dropped.Load()), name)
		for i, reason := range conflictReasons {
			ch <- prometheus.MustNewConstMetric(descIdempotencyConflicts, prometheus.CounterValue, float64(s.conflicts[i].Load()), name, reason)
		}
		for _, t := range transports {
			ts := s.of(t)
			ch <- prometheus.MustNewConstMetric(descConnections, prometheus.GaugeValue, float64(ts.connections.Load()), name, t)
			ch <- prometheus.MustNewConstMetric(descDelivered, prometheus.CounterValue, float64(ts.delivered.Load()), name, t)
			ch <- prometheus.MustNewConstMetric(descReplayed, prometheus.CounterValue, float64(ts.replayed.Load()), name, t)
			ch <- prometheus.MustNewConstMetric(descSlow, prometheus.CounterValue, float64(ts.slow.Load()), name, t)
			ch <- prometheus.MustNewConstMetric(descPaused, prometheus.CounterValue, float64(ts.paused.Load()), name, t)
			ch <- prometheus.MustNewConstMetric(descDisconnected, prometheus.CounterValue, float64(ts.disconnected.Load()), name, t)
			ch <- prometheus.MustNewConstMetric(descExpired, prometheus.CounterValue, float64(ts.expired.Load()), name, t)
		}
	}
}

func registerMetrics(reg *prometheus.Registry, a *App) error {
	if reg == nil {
		return nil
	}
	err := reg.Register(collector{app: a})
	if errors.As(err, new(prometheus.AlreadyRegisteredError)) {
		return nil
	}
	return err
}
