package push

import (
	"cmp"
	"encoding/json"
	"fmt"
	"runtime"
	"sort"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"
)

func init() {
	caddy.RegisterModule(App{})
}

// DefaultHub is the hub every handler uses unless told otherwise. It always
// exists, with default settings unless the push app configures it.
const DefaultHub = "default"

// Defaults of a hub's history.
const (
	DefaultHistory         = 1000
	DefaultHistoryTTL      = time.Hour
	DefaultHistoryMaxBytes = 64 << 20
)

// hubs holds every hub of the process, keyed by name and broker config, so
// that a hub and its history outlive the configuration that made it: a
// reload provisions the new config (taking a reference) before the old one
// cleans up (dropping its reference).
var hubs = caddy.NewUsagePool()

// live maps a hub name to the hub of the newest configuration, for the Go
// API (LookupHub).
var live sync.Map

// App is the `push` app: it owns the hubs that push handlers subscribe to
// and publish on.
type App struct {
	// The hubs, by name: letters, digits, '_', '.' and '-'. A hub named
	// "default" exists even when not listed. Default: only "default",
	// with the defaults below.
	Hubs map[string]*HubConfig `json:"hubs,omitempty"`

	// Whether cleartext HTTP/1.1 streams on Linux leave net/http after
	// their opening for the connection engine, which holds no goroutine
	// per connection and writes each event's shared bytes straight to the
	// sockets: "on" or "off" (every stream on goroutines of its own, as on
	// other platforms). The environment variable CADDY_PUSH_ENGINE=off
	// overrides it. Default: on.
	Engine string `json:"engine,omitempty"`

	// Whether the engine's fan-out writes in batches through io_uring
	// where the kernel allows it: "on" or "off" (a system call per
	// connection). CADDY_PUSH_IO_URING=off overrides it. Default: on.
	IOURing string `json:"io_uring,omitempty"`

	hubs   map[string]*Hub
	keys   []string
	events []hubEvents // the hubs this configuration's events hooks are attached to
	logger *zap.Logger
}

// hubEvents is a hub's events hook as one configuration set it.
type hubEvents struct {
	hub  *Hub
	hook *EventsHook
}

// HubConfig configures one hub.
type HubConfig struct {
	// How many events are kept per topic for replay to clients that
	// resume with a Last-Event-ID. 0 keeps none. Default: 1000.
	History *int `json:"history,omitempty"`

	// How long an event is kept for replay. Default: 1h.
	HistoryTTL caddy.Duration `json:"history_ttl,omitempty"`

	// The memory the hub's whole history may take,
	// in bytes; beyond it the oldest events are dropped first, and clients
	// resuming from before them get push.reset. Default: 67108864 (64 MiB).
	HistoryMaxBytes int64 `json:"history_max_bytes,omitempty"`

	// How long the hub remembers a publish's
	// Idempotency-Key (scoped to its publisher): a repeat within it is
	// answered with the first event's id and publishes nothing. 0 ignores
	// keys. The memory broker counts its keys in history_max_bytes
	// (counted as 160 bytes each, at most half of it); Redis keeps each key
	// with the window as its TTL. Default: 1h.
	IdempotencyWindow *caddy.Duration `json:"idempotency_window,omitempty"`

	// How many topics one publish may name, on every
	// publish path (push_publish, a WebSocket client, the admin API, the
	// Go API); a publish naming more is refused with 400. Each topic of an
	// event costs work for every subscriber it reaches. Default: 32.
	MaxPublishTopics int `json:"max_publish_topics,omitempty"`

	// The backend that stores and fans out the hub's events, by module
	// name in the push.brokers namespace: memory or redis. Default:
	// memory (this process only).
	BrokerRaw json.RawMessage `json:"broker,omitempty" caddy:"namespace=push.brokers inline_key=broker"`

	// The app's endpoint that is told, in signed JSON batches, of the
	// hub's connections coming and going (and why they went, a lost
	// node's included) and of what WebSocket clients publish. Default:
	// none.
	Events *EventsHook `json:"events,omitempty"`
}

// CaddyModule returns the Caddy module information.
func (App) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "push",
		New: func() caddy.Module { return new(App) },
	}
}

// Provision opens (or, after a reload, takes over) every hub.
func (a *App) Provision(ctx caddy.Context) error {
	for name, v := range map[string]string{"engine": a.Engine, "io_uring": a.IOURing} {
		if v != "" && v != "on" && v != "off" {
			return fmt.Errorf("%s must be on or off, not %q", name, v)
		}
	}
	a.logger = ctx.Logger()
	if a.Hubs == nil {
		a.Hubs = make(map[string]*HubConfig)
	}
	if a.Hubs[DefaultHub] == nil {
		a.Hubs[DefaultHub] = new(HubConfig)
	}
	a.hubs = make(map[string]*Hub, len(a.Hubs))
	names := make([]string, 0, len(a.Hubs))
	for name := range a.Hubs {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		hub, err := a.provisionHub(ctx, name, a.Hubs[name])
		if err != nil {
			return fmt.Errorf("loading hub %q: %v", name, err)
		}
		a.hubs[name] = hub
		live.Store(name, hub)
	}
	if err := registerMetrics(ctx.GetMetricsRegistry(), a); err != nil {
		return fmt.Errorf("registering metrics: %v", err)
	}
	return nil
}

func (a *App) provisionHub(ctx caddy.Context, name string, hc *HubConfig) (*Hub, error) {
	if err := validateHubName(name); err != nil {
		return nil, err
	}
	limits := HistoryLimits{Events: DefaultHistory, TTL: DefaultHistoryTTL, MaxBytes: DefaultHistoryMaxBytes}
	if hc.History != nil {
		if *hc.History < 0 {
			return nil, fmt.Errorf("history must not be negative")
		}
		limits.Events = *hc.History
	}
	if hc.HistoryTTL < 0 {
		return nil, fmt.Errorf("history_ttl must not be negative")
	}
	if hc.HistoryTTL > 0 {
		limits.TTL = time.Duration(hc.HistoryTTL)
	}
	if hc.HistoryMaxBytes < 0 {
		return nil, fmt.Errorf("history_max_bytes must not be negative")
	}
	if hc.HistoryMaxBytes > 0 {
		limits.MaxBytes = hc.HistoryMaxBytes
	}
	window := DefaultIdempotencyWindow
	if hc.IdempotencyWindow != nil {
		if *hc.IdempotencyWindow < 0 {
			return nil, fmt.Errorf("idempotency_window must not be negative")
		}
		window = time.Duration(*hc.IdempotencyWindow)
	}
	if hc.MaxPublishTopics < 0 {
		return nil, fmt.Errorf("max_publish_topics must not be negative")
	}
	maxTopics := cmp.Or(hc.MaxPublishTopics, DefaultMaxPublishTopics)
	if hc.Events != nil {
		if err := hc.Events.provision(ctx); err != nil {
			return nil, err
		}
	}
	brokerConfig := string(hc.BrokerRaw)
	var factory BrokerFactory = MemoryBroker{}
	if hc.BrokerRaw != nil {
		mod, err := ctx.LoadModule(hc, "BrokerRaw")
		if err != nil {
			return nil, fmt.Errorf("loading broker: %v", err)
		}
		factory = mod.(BrokerFactory)
	}
	brokerName := factory.(caddy.Module).CaddyModule().ID.Name()
	// the broker config is part of the key: changing it starts a new hub,
	// while changing only the history limits keeps hub and history
	key := name + "\x00" + brokerConfig
	logger := a.logger.With(zap.String("hub", name))
	val, loaded, err := hubs.LoadOrNew(key, func() (caddy.Destructor, error) {
		hub := newHub(name)
		hub.brokerName = brokerName
		hub.logger = logger
		hub.startLanes(runtime.GOMAXPROCS(0))
		b, err := factory.OpenBroker(BrokerOptions{Hub: name, History: limits, Deliver: hub.deliver, Resync: hub.resync, Command: hub.command,
			Stats: hub.nodeStats, Joined: hub.joined, NodeLost: hub.nodeLost, Rejoined: hub.rejoined, Logger: logger})
		if err != nil {
			hub.stopLanes()
			return nil, err
		}
		hub.broker = b
		hub.trims = true
		memTrim.acquire()
		logger.Info("hub started", zap.Int("history", limits.Events), zap.Duration("history_ttl", limits.TTL))
		return hub, nil
	})
	if err != nil {
		return nil, err
	}
	hub := val.(*Hub)
	if loaded {
		hub.broker.SetHistory(limits)
	}
	hub.SetIdempotencyWindow(window)
	hub.SetMaxPublishTopics(maxTopics)
	if window > limits.TTL {
		logger.Warn("idempotency_window is longer than history_ttl: a late retry is answered with the id of an event no longer kept for replay",
			zap.Duration("idempotency_window", window), zap.Duration("history_ttl", limits.TTL))
	}
	a.keys = append(a.keys, key)
	if hc.Events != nil {
		hub.events.attach(hc.Events, logger.Named("events"))
		a.events = append(a.events, hubEvents{hub: hub, hook: hc.Events})
	}
	return hub, nil
}

// validateHubName allows letters, digits, '_', '.' and '-': a hub's name
// is part of its Redis keys (push:<hub>:...), and with a ':' or a brace
// two hubs could share keys.
func validateHubName(name string) error {
	if name == "" {
		return fmt.Errorf("hub name must not be empty")
	}
	for _, c := range []byte(name) {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '.' || c == '-') {
			return fmt.Errorf("invalid hub name %q: use only letters, digits, '_', '.' and '-'", name)
		}
	}
	return nil
}

// Start applies the engine options (hubs run from Provision on).
func (a *App) Start() error {
	configureEngine(a.Engine != "off", a.IOURing != "off")
	return nil
}

// Stop is a no-op: handlers end their streams when their server shuts down.
func (a *App) Stop() error { return nil }

// Cleanup drops this configuration's reference to its hubs; a hub closes
// when no configuration uses it any more. A hub's events hook passes to
// the newer configuration's, or when it has none, sends what is queued
// for up to two seconds first.
func (a *App) Cleanup() error {
	for _, e := range a.events {
		e.hub.events.detach(e.hook)
	}
	for _, key := range a.keys {
		if _, err := hubs.Delete(key); err != nil {
			return err
		}
	}
	return nil
}

// Hub returns the named hub of this configuration.
func (a *App) Hub(name string) (*Hub, error) {
	if name == "" {
		name = DefaultHub
	}
	hub, ok := a.hubs[name]
	if !ok {
		return nil, fmt.Errorf("unknown hub %q: define it in the push global option", name)
	}
	return hub, nil
}

// LookupHub returns the running hub with that name, so that any code in
// the process (another Caddy module, a program embedding Caddy) can
// publish:
//
//	if hub, ok := push.LookupHub("default"); ok {
//		id, err := hub.Publish(ctx, push.Message{Topics: []string{"news"}, Data: "hi"})
//	}
func LookupHub(name string) (*Hub, bool) {
	v, ok := live.Load(name)
	if !ok {
		return nil, false
	}
	return v.(*Hub), true
}

// Interface guards
var (
	_ caddy.App          = (*App)(nil)
	_ caddy.Provisioner  = (*App)(nil)
	_ caddy.CleanerUpper = (*App)(nil)
)
