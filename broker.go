package push

import (
	"context"
	"errors"
	"time"

	"go.uber.org/zap"
)

// Broker is a hub's backend: it gives events their ids, keeps their history
// and hands every published event, from any node, to the local hub.
type Broker interface {
	// Publish stores ev, setting its ID, Seq and Time, and returns once it
	// is stored. It must not deliver ev before it is stored, and must
	// return an error (leaving nothing stored) when it cannot store it.
	Publish(ctx context.Context, ev *Event) error
	// Replay returns the retained events of topics after lastEventID, in
	// id order, and the id of the newest event of the hub (the head).
	// lastEventID "" reads only the head, and EarliestID every retained
	// event of topics; one that is no id of the hub's gets a Reset.
	Replay(ctx context.Context, topics []string, lastEventID string) (Backlog, error)
	// SetHistory applies new history limits (after a config reload).
	SetHistory(HistoryLimits)
	// Close stops the broker's goroutines and releases its connections.
	Close() error
}

// IDResolver is implemented by brokers that keep publishers' own event ids
// (Message.CustomID), so that a client may resume from one.
type IDResolver interface {
	// ResolveID returns the hub id of the earliest event in history
	// published with custom id, ok false when none is.
	ResolveID(ctx context.Context, custom string) (hubID string, ok bool, err error)
}

// Broadcaster is implemented by brokers that span several nodes: a command
// given to one node's hub reaches the hubs of all the others.
type Broadcaster interface {
	// Broadcast hands c to the Command function of every other node's
	// hub (not this one's).
	Broadcast(ctx context.Context, c Command) error
}

// Command is an instruction to the local streams of a hub, sent to every
// node by a Broadcaster.
type Command struct {
	Pause      *PauseRequest      `json:"pause,omitempty"`
	Disconnect *DisconnectRequest `json:"disconnect,omitempty"`
	// Announce is a presence event (push.join, push.leave) for the
	// subscribers of every node: live only, never stored.
	Announce *Message `json:"announce,omitempty"`
}

// MatchReplayer is implemented by brokers that can replay the events whose
// topics satisfy a predicate (pattern subscriptions).
type MatchReplayer interface {
	// ReplayMatching is Replay for the events after lastEventID any of
	// whose topics match reports true for. match may be called under the
	// broker's locks, and from any goroutine.
	ReplayMatching(ctx context.Context, match func(topic string) bool, lastEventID string) (Backlog, error)
}

// Inspector is implemented by brokers that can describe what they keep,
// for the admin API.
type Inspector interface {
	// History describes the hub's whole history.
	History(ctx context.Context) (HistoryStats, error)
	// TopicHistory describes the history of each topic, in order.
	TopicHistory(ctx context.Context, topics []string) ([]TopicHistory, error)
}

// HistoryStats describes a hub's history.
type HistoryStats struct {
	// Events is the number of events kept.
	Events int64 `json:"history_events"`
	// Bytes is an estimate of their memory.
	Bytes int64 `json:"history_bytes"`
	// Head is the id of the hub's newest event.
	Head string `json:"head"`
}

// TopicHistory describes the history of one topic.
type TopicHistory struct {
	// Events is the number of the topic's events kept.
	Events int `json:"history"`
	// LastID is the id of the topic's newest event kept.
	LastID string `json:"last_id,omitempty"`
}

// BrokerFactory is implemented by push.brokers.* modules. The module is
// configuration only; the Broker it opens belongs to a hub, which may
// outlive the configuration (hubs survive reloads).
type BrokerFactory interface {
	OpenBroker(BrokerOptions) (Broker, error)
}

// BrokerOptions is what a hub gives the broker it opens.
type BrokerOptions struct {
	// Hub is the hub's name.
	Hub string
	// History bounds the events kept per topic.
	History HistoryLimits
	// Deliver must be called with every stored event, one at a time, in
	// id order; it does not block.
	Deliver func(*Event)
	// Resync must be called when the broker lost events it cannot
	// deliver (its backend lost data, or it could not catch up after an
	// outage): the hub ends every local subscription, and each client
	// resumes from its last id, with a replay or a push.reset.
	Resync func()
	// Command must be called with every command another node broadcast;
	// it does not block, and returns how many local streams it ended.
	Command func(Command) int
	// Stats returns the hub's counters on this node, and Joined its
	// connections, for a broker that keeps a cluster's (a Roster).
	Stats  func() NodeStats
	Joined func() []Joined
	// NodeLost, for a broker that keeps a cluster's roster, is called
	// with the connections of a node that stopped renewing its entry, on
	// the one node that removed it (so each is told once in the
	// cluster); it does not block.
	NodeLost func(node string, lost []Joined)
	// Rejoined, for the same broker, is called with this node's
	// connections when the roster had forgotten the node (taken for dead,
	// or the backend lost its data) and the node wrote them anew; it does
	// not block.
	Rejoined func([]Joined)
	Logger   *zap.Logger
}

// HistoryLimits bounds what a broker keeps per topic for replay.
type HistoryLimits struct {
	// Events is the number of events kept per topic; 0 keeps none.
	Events int
	// TTL is how long an event is kept; 0 keeps events until Events pushes
	// them out.
	TTL time.Duration
	// MaxBytes bounds the memory of the whole hub's history; the oldest
	// events go first. 0 means no bound.
	MaxBytes int64
}

// Backlog is what a subscriber must get before live events.
type Backlog struct {
	// Events are the retained events after the client's last id.
	Events []*Event
	// Head is the id of the hub's newest event when the backlog was read.
	Head string
	// HeadSeq is the Seq inside Head.
	HeadSeq uint64
	// Reset, when not empty, says why the client's last id cannot be
	// resumed from; Events is then empty.
	Reset string
}

// ErrUnavailable wraps broker errors that mean "try again later" (HTTP 503).
var ErrUnavailable = errors.New("hub backend unavailable")
