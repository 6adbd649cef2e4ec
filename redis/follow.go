package redis

import (
	"context"
	"time"

	goredis "github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"github.com/caddy-push/push"
)

// cursor is how far a node has delivered the hub's events.
type cursor struct {
	epoch string
	seq   uint64 // the newest seq delivered
}

// listen delivers every event of the hub to this node, in seq order, with
// one Pub/Sub subscription, from start (the head when the node opened;
// nil: wherever Redis is when first reached). After losing Redis it reconnects with backoff
// and catches up from the hub-wide stream, so nothing Redis acknowledged
// is missed.
func (s *store) listen(ctx context.Context, start *cursor) {
	defer close(s.done)
	cur := start
	backoff := 100 * time.Millisecond
	down := false
	for ctx.Err() == nil {
		err := s.follow(ctx, &cur, func() {
			if down {
				s.logger.Info("redis available again")
			}
			backoff, down = 100*time.Millisecond, false
		})
		if ctx.Err() != nil {
			return
		}
		if !down {
			s.logger.Warn("redis unavailable; reconnecting", zap.Error(err))
			down = true
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

// follow subscribes, catches up from the cursor, calls connected, then
// delivers live events until the subscription fails. A node that starts
// (a nil cursor) starts from now: its subscribers replay from the streams.
func (s *store) follow(ctx context.Context, cur **cursor, connected func()) error {
	ps := s.client.Subscribe(ctx, s.key("events"), s.key("control"))
	defer ps.Close()
	s.mu.Lock()
	s.ps = ps
	s.mu.Unlock()
	if ctx.Err() != nil { // Close came first
		return ctx.Err()
	}
	if _, err := ps.Receive(ctx); err != nil { // the subscription is in place
		return err
	}
	epoch, head, err := s.head(ctx)
	if err != nil {
		return err
	}
	if *cur == nil {
		*cur = &cursor{epoch: epoch, seq: head}
	} else if err := s.resume(ctx, *cur, epoch, head); err != nil {
		return err
	}
	connected()
	s.logger.Info("following redis", zap.String("prefix", s.prefix), zap.Uint64("from", (*cur).seq))
	for {
		msg, err := ps.Receive(ctx)
		if err != nil {
			return err
		}
		m, ok := msg.(*goredis.Message)
		if !ok {
			continue
		}
		if m.Channel == s.key("control") {
			s.receiveControl(ctx, m.Payload)
			continue
		}
		ev, err := decode(m.Payload)
		if err != nil {
			continue
		}
		if err := s.advance(ctx, *cur, ev); err != nil {
			return err
		}
	}
}

// resume takes the cursor over to Redis as the node finds it after
// being away: on the same timeline (the same epoch, or an epoch that
// carries on from the cursor's) it catches up; otherwise Redis lost
// events this node delivered, and its clients must resume on their own.
func (s *store) resume(ctx context.Context, cur *cursor, epoch string, head uint64) error {
	if cur.epoch != epoch {
		kept, err := s.continues(ctx, cur.epoch, cur.seq)
		if err != nil {
			return err
		}
		if !kept {
			s.lost("redis lost events this node had delivered (a restart from an older snapshot, a failover to a replica behind, or a restart without persistence)")
			*cur = cursor{epoch: epoch, seq: head}
			return nil
		}
		cur.epoch = epoch
	}
	return s.catchUp(ctx, cur, head)
}

// advance delivers a live event after whatever Pub/Sub skipped.
func (s *store) advance(ctx context.Context, cur *cursor, ev *push.Event) error {
	epoch, _, _ := push.ParseID(ev.ID)
	if epoch != cur.epoch {
		kept, err := s.continues(ctx, cur.epoch, cur.seq)
		if err != nil {
			return err
		}
		if kept {
			cur.epoch = epoch
		} else {
			// Redis lost events this node delivered, or was emptied: the
			// clients must resume from their own ids
			s.lost("redis lost events this node had delivered (a restart from an older snapshot, a failover to a replica behind, or a flush)")
			cur.epoch, cur.seq = epoch, ev.Seq-1
		}
	}
	if ev.Seq <= cur.seq {
		return nil
	}
	if ev.Seq > cur.seq+1 {
		// Pub/Sub lost something; the hub-wide stream has it
		if err := s.catchUp(ctx, cur, ev.Seq-1); err != nil {
			return err
		}
	}
	cur.seq = ev.Seq
	s.deliver(ev)
	return nil
}

// catchUp delivers the hub-wide stream's events after the cursor, up to
// seq head. When the stream no longer has them all (the node was away
// longer than it keeps), local subscribers must resume on their own.
func (s *store) catchUp(ctx context.Context, cur *cursor, head uint64) error {
	for cur.seq < head {
		entries, err := s.client.XRangeN(ctx, s.key("all"), streamAfter(cur.seq), "+", 1000).Result()
		if err != nil {
			return err
		}
		for _, en := range entries {
			ev, err := decode(en.Values["v"])
			if err != nil {
				continue // and the next is a gap
			}
			if ev.Seq > head {
				return nil
			}
			if ev.Seq != cur.seq+1 {
				s.lost("this node was away longer than the hub-wide stream reaches back")
				cur.seq = head
				return nil
			}
			cur.seq = ev.Seq
			s.deliver(ev)
		}
		if len(entries) == 0 {
			s.lost("the hub-wide stream ends before the hub's newest event")
			cur.seq = head
		}
	}
	return nil
}

// lost ends every local subscription: their clients resume from their
// own last ids, with a replay from the topic streams or a push.reset.
func (s *store) lost(why string) {
	s.logger.Warn("events lost for this node; local streams end so clients resume", zap.String("reason", why))
	s.resync()
}
