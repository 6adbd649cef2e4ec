// Package clock is the demo's ticking clock: a Caddy app that publishes
// the time to a topic every second through caddy-push's Go API, as any
// module or program embedding Caddy can. It belongs to the demo binary
// (cmd/caddy); the push module's users never import it.
package clock

import (
	"context"

	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"go.uber.org/zap"

	"github.com/caddy-push/push"
)

func init() {
	caddy.RegisterModule(Clock{})
	httpcaddyfile.RegisterGlobalOption("push_demo_clock", parseGlobalOption)
}

// Clock publishes the current time as an event of type "tick".
type Clock struct {
	// Hub to publish to. Default: default.
	Hub string `json:"hub,omitempty"`
	// Topic to publish to. Default: clock.
	Topic string `json:"topic,omitempty"`
	// Interval between ticks. Default: 1s.
	Interval caddy.Duration `json:"interval,omitempty"`

	hub    *push.Hub
	ctx    caddy.Context
	logger *zap.Logger
	cancel context.CancelFunc
	done   chan struct{}
}

// CaddyModule returns the Caddy module information.
func (Clock) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "push_demo_clock",
		New: func() caddy.Module { return new(Clock) },
	}
}

// Provision finds the hub and applies defaults.
func (c *Clock) Provision(ctx caddy.Context) error {
	c.ctx, c.logger = ctx, ctx.Logger()
	if c.Topic == "" {
		c.Topic = "clock"
	}
	if c.Interval <= 0 {
		c.Interval = caddy.Duration(time.Second)
	}
	app, err := ctx.App("push")
	if err != nil {
		return err
	}
	c.hub, err = app.(*push.App).Hub(c.Hub)
	return err
}

// Start begins ticking.
func (c *Clock) Start() error {
	ctx, cancel := context.WithCancel(c.ctx)
	c.cancel, c.done = cancel, make(chan struct{})
	go c.run(ctx)
	return nil
}

// Stop ends the ticking before the config unloads.
func (c *Clock) Stop() error {
	c.cancel()
	<-c.done
	return nil
}

func (c *Clock) run(ctx context.Context) {
	defer close(c.done)
	t := time.NewTicker(time.Duration(c.Interval))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			msg := push.Message{Topics: []string{c.Topic}, Type: "tick", Data: now.Format(time.TimeOnly)}
			if _, err := c.hub.Publish(ctx, msg); err != nil {
				c.logger.Warn("clock tick not published", zap.Error(err))
			}
		}
	}
}

// parseGlobalOption reads
//
//	push_demo_clock [<topic>] [<interval>]
func parseGlobalOption(d *caddyfile.Dispenser, _ any) (any, error) {
	c := new(Clock)
	d.Next()
	args := d.RemainingArgs()
	if len(args) > 2 {
		return nil, d.ArgErr()
	}
	if len(args) > 0 {
		c.Topic = args[0]
	}
	if len(args) > 1 {
		dur, err := caddy.ParseDuration(args[1])
		if err != nil {
			return nil, d.Errf("invalid interval '%s': %v", args[1], err)
		}
		c.Interval = caddy.Duration(dur)
	}
	return httpcaddyfile.App{Name: "push_demo_clock", Value: caddyconfig.JSON(c, nil)}, nil
}

// Interface guards
var (
	_ caddy.App         = (*Clock)(nil)
	_ caddy.Provisioner = (*Clock)(nil)
)
