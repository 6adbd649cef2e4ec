package push

import (
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/caddy-push/push/internal/engine"
)

// What SSE and WebSocket handlers share to hand their connections to the
// connection engine (internal/engine; see the README's design notes).

// engineOff keeps every stream on goroutines of its own, as on platforms
// without the engine (the push app's engine off), for comparison and as a
// way out should the engine misbehave; ringOff makes the fan-out write to
// each connection with a system call of its own instead of batches
// through io_uring (io_uring off). The environment variables
// CADDY_PUSH_ENGINE=off and CADDY_PUSH_IO_URING=off override the config.
var (
	engineOff, ringOff       atomic.Bool
	envEngineOff, envRingOff = os.Getenv("CADDY_PUSH_ENGINE") == "off", os.Getenv("CADDY_PUSH_IO_URING") == "off"
)

func init() { configureEngine(true, true) }

// configureEngine applies the push app's engine and io_uring options to
// connections opened from now on; the environment wins.
func configureEngine(engineOn, ringOn bool) {
	engineOff.Store(envEngineOff || !engineOn)
	ringOff.Store(envRingOff || !ringOn)
	engine.SetRing(!ringOff.Load())
}

// handlerEngine is a handler's connection engine, made at its first
// connection (Provision stays cheap) and shut down with the handler.
type handlerEngine struct {
	mu  sync.Mutex
	eng *engine.Engine
}

// get returns the engine, starting it with opts if need be; nil when
// stopping is closed or the engine cannot start. On stopping, every
// connection gets last() and is closed.
func (he *handlerEngine) get(opts engine.Options, stopping <-chan struct{}, last func() []byte, logger *zap.Logger) *engine.Engine {
	he.mu.Lock()
	defer he.mu.Unlock()
	if he.eng != nil {
		return he.eng
	}
	select {
	case <-stopping:
		return nil
	default:
	}
	eng, err := engine.New(opts)
	if err != nil {
		logger.Warn("connection engine unavailable; connections keep goroutines of their own", zap.Error(err))
		return nil
	}
	he.eng = eng
	if !engine.RingAvailable() && !ringOff.Load() {
		logger.Info("io_uring unavailable: the fan-out writes to each connection with a system call of its own")
	}
	go func() {
		<-stopping
		eng.Shutdown(last, closeGrace)
	}()
	return eng
}

// engineServes reports whether the engine can own a connection of this
// request: an HTTP/1.x one (HTTP/2 and HTTP/3 streams cannot be
// hijacked). A TLS connection cannot be written without blocking, nor
// polled for input: the engine writes it from a goroutine while its queue
// is not empty and watches it with one reader goroutine, which still
// frees net/http's and Caddy's state; one that needs its input read
// (WebSocket) must be cleartext.
func engineServes(r *http.Request, input bool) bool {
	return engine.Supported && !engineOff.Load() && r.ProtoMajor == 1 && (r.TLS == nil || !input)
}

// engineStream is what SSE and WebSocket connections owned by the engine
// share: their subscription, their place under the limits, their
// max_duration timer, and how they end.
type engineStream struct {
	sub     *Subscription
	release func()
	conn    *engine.Conn // set before Attach

	mu    sync.Mutex
	timer *time.Timer // max_duration
	gone  bool
}

// expireAfter runs expire at max_duration (±10%), unless the connection
// has ended by then.
func (es *engineStream) expireAfter(maxDuration caddy.Duration, expire func()) {
	if maxDuration <= 0 {
		return
	}
	es.mu.Lock()
	defer es.mu.Unlock()
	if !es.gone {
		es.timer = time.AfterFunc(jittered(time.Duration(maxDuration)), expire)
	}
}

// closed runs once the connection has ended, for whatever reason: a
// client cut off for being slow is counted, and the subscription and the
// place under the limits are given back.
func (es *engineStream) closed(why error) {
	es.mu.Lock()
	es.gone = true
	if es.timer != nil {
		es.timer.Stop()
	}
	es.mu.Unlock()
	if why == engine.ErrSlow {
		es.sub.CutOff()
	}
	es.sub.Close()
	es.release()
}
