package push

import (
	"context"
	"errors"
	"math/rand/v2"
	"time"
)

// PauseRequest asks streams to close and their clients to come back later
// (the "pause and reconnect" pattern): SSE clients get a pause event and a
// matching retry, WebSocket clients a pause frame and close code 1013.
type PauseRequest struct {
	// Topics selects the streams that follow any of them; empty selects
	// every stream of the hub.
	Topics []string `json:"topics,omitempty"`
	// For is how long the clients stay away. It must be positive.
	For time.Duration `json:"for"`
	// Jitter spreads the clients' return over For ± Jitter, so they do
	// not all come back in the same instant.
	Jitter time.Duration `json:"jitter,omitempty"`
	// Fraction, between 0 and 1, is the share of the selected streams to
	// pause, picked at random; 0 pauses them all.
	Fraction float64 `json:"fraction,omitempty"`
}

// Validate reports a request that cannot be carried out.
func (p PauseRequest) Validate() error {
	switch {
	case p.For <= 0:
		return errors.New("pause needs a positive duration")
	case p.Jitter < 0:
		return errors.New("pause jitter must not be negative")
	case !(p.Fraction >= 0 && p.Fraction <= 1): // NaN too
		return errors.New("pause fraction must be between 0 and 1")
	}
	for _, t := range p.Topics {
		if err := ValidateTopic(t); err != nil {
			return err
		}
	}
	return nil
}

// until picks one stream's return time.
func (p PauseRequest) until(now time.Time) time.Time {
	d := p.For
	if p.Jitter > 0 {
		d += time.Duration(rand.Int64N(2*int64(p.Jitter)+1)) - p.Jitter
	}
	return now.Add(max(d, 0))
}

// Pause pauses the matching streams of this process and returns how many
// it paused. With a broker that spans nodes (Redis), the request also
// reaches every other node, which pauses its own share; the count is this
// node's.
func (h *Hub) Pause(ctx context.Context, p PauseRequest) (int, error) {
	if err := p.Validate(); err != nil {
		return 0, err
	}
	n := h.pauseLocal(p)
	if b, ok := h.broker.(Broadcaster); ok {
		if err := b.Broadcast(ctx, Command{Pause: &p}); err != nil {
			return n, err
		}
	}
	return n, nil
}

func (h *Hub) pauseLocal(p PauseRequest) int {
	picked := h.matching(p.Topics)
	if p.Fraction > 0 && p.Fraction < 1 {
		// an exact share, so "half" is half, not half on average
		rand.Shuffle(len(picked), func(i, j int) { picked[i], picked[j] = picked[j], picked[i] })
		picked = picked[:int(float64(len(picked))*p.Fraction+0.5)]
	}
	now := time.Now()
	n := 0
	for _, s := range picked {
		if s.end(endPause, p.until(now)) {
			n++
		}
	}
	return n
}

// DisconnectRequest names the connections an operator ends: every
// connection of a user, or one connection.
type DisconnectRequest struct {
	// User selects every connection of this user (http.auth.user.id, or
	// the sub claim of the client's JWT).
	User string `json:"user,omitempty"`
	// Connection selects one connection by its id.
	Connection string `json:"connection,omitempty"`
	// For, when positive, has SSE clients pause this long before they
	// come back (WebSocket clients get close code 1008 either way).
	For time.Duration `json:"for,omitempty"`
}

// Validate reports a request that cannot be carried out.
func (d DisconnectRequest) Validate() error {
	switch {
	case (d.User == "") == (d.Connection == ""):
		return errors.New("disconnect needs a user or a connection, not both")
	case d.For < 0:
		return errors.New("disconnect's for must not be negative")
	}
	return nil
}

func (d DisconnectRequest) matches(m Member) bool {
	if d.Connection != "" {
		return m.Connection == d.Connection
	}
	return m.User == d.User
}

// Disconnect ends the matching connections of this process and returns
// how many it ended. With a broker that spans nodes (Redis), the request
// also reaches every other node; the count is this node's.
func (h *Hub) Disconnect(ctx context.Context, d DisconnectRequest) (int, error) {
	if err := d.Validate(); err != nil {
		return 0, err
	}
	n := h.disconnectLocal(d)
	if b, ok := h.broker.(Broadcaster); ok {
		if err := b.Broadcast(ctx, Command{Disconnect: &d}); err != nil {
			return n, err
		}
	}
	return n, nil
}

func (h *Hub) disconnectLocal(d DisconnectRequest) int {
	var until time.Time
	if d.For > 0 {
		until = time.Now().Add(d.For)
	}
	n := 0
	for _, s := range h.matching(nil) {
		if d.matches(s.Member()) && s.end(endDisconnect, until) {
			n++
		}
	}
	return n
}

// How a disconnected stream is told why it ends (Hub.Disconnect): SSE in
// a comment, WebSocket in the 1008 close reason.
const disconnectedReason = "disconnected by the server's operator"

var disconnectedComment = []byte(": " + disconnectedReason + "\n\n")

// command carries out a command another node broadcast, and returns how
// many local streams it ended.
func (h *Hub) command(c Command) int {
	n := 0
	if c.Pause != nil && c.Pause.Validate() == nil {
		n += h.pauseLocal(*c.Pause)
	}
	if c.Disconnect != nil && c.Disconnect.Validate() == nil {
		n += h.disconnectLocal(*c.Disconnect)
	}
	if a := c.Announce; a != nil && (a.Type == "push.join" || a.Type == "push.leave") && (Message{Topics: a.Topics, Data: a.Data}).Validate() == nil {
		h.deliver(&Event{Message: *a, live: true})
	}
	return n
}

// broadcast carries out c on this node and, with a broker that spans nodes,
// on every other; it returns how many streams it ended, and where.
func (h *Hub) broadcast(ctx context.Context, c Command) (int, string, error) {
	r, ok := h.broker.(Roster)
	if !ok {
		switch {
		case c.Pause != nil:
			n, err := h.Pause(ctx, *c.Pause)
			return n, ScopeNode, err
		case c.Disconnect != nil:
			n, err := h.Disconnect(ctx, *c.Disconnect)
			return n, ScopeNode, err
		}
		return 0, ScopeNode, nil
	}
	n := h.command(c)
	others, _, err := r.Ask(ctx, c)
	return n + others, ScopeCluster, err
}

// resync ends every subscription: the broker lost events it cannot
// deliver in order, so each client must resume from its own last id.
func (h *Hub) resync() {
	for _, s := range h.matching(nil) {
		s.end(endResync, time.Time{})
	}
}

// matching returns the live subscriptions to any of topics, or with a
// pattern that matches one (all of them when topics is empty), each once.
// They are ended outside the hub's lock: ending one may unsubscribe it.
func (h *Hub) matching(topics []string) []*Subscription {
	h.mu.RLock()
	defer h.mu.RUnlock()
	seen := make(map[*Subscription]struct{})
	var out []*Subscription
	add := func(subs map[*Subscription]struct{}) {
		for s := range subs {
			if _, dup := seen[s]; !dup && !s.isEnded() {
				seen[s] = struct{}{}
				out = append(out, s)
			}
		}
	}
	for _, l := range h.lanes {
		if len(topics) == 0 {
			for _, subs := range l.topics {
				add(subs)
			}
		}
		for _, t := range topics {
			add(l.topics[t])
		}
		for _, g := range l.patterns {
			if len(topics) == 0 || h.matches.MatchAny(g.sel, topics) {
				add(g.subs)
			}
		}
	}
	return out
}
