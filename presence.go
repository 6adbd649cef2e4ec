package push

import (
	"context"
	"encoding/json"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"
)

// Member is one connection as presence and the admin API show it.
type Member struct {
	// Connection is the connection's id, unique in the hub.
	Connection string `json:"connection"`
	// User is the authenticated user: the one the app's authorize
	// answer names, or else Caddy's http.auth.user.id (set by basic_auth,
	// forward_auth, ...), or else the sub claim of the client's verified
	// JWT; empty when unknown.
	User string `json:"user,omitempty"`
	// Meta is the JSON object the app's authorize answer attached to the
	// connection, if any.
	Meta json.RawMessage `json:"meta,omitempty"`
	// Transport is sse or ws.
	Transport string `json:"transport,omitempty"`
	// RemoteAddr is the client's IP, as Caddy determined it (honouring
	// trusted_proxies).
	RemoteAddr string `json:"remote_addr,omitempty"`
	// Since is when the connection subscribed.
	Since time.Time `json:"connected_since"`
	// Presence is whether the connection is announced to its topics
	// (push.join, push.leave) and listed in their push.presence events.
	Presence bool `json:"presence,omitempty"`
	// Announced, when set, are the only topics it is announced to and
	// listed on: those of its topics the endpoint's presence patterns
	// match. Empty with Presence: all its topics.
	Announced []string `json:"announced,omitempty"`
	// Node is the node that holds the connection, in a cluster's answers.
	Node string `json:"node,omitempty"`
	// Mercure is a push_mercure connection's subscriptions, when its
	// handler tracks them (the subscriptions option).
	Mercure *MercureSubscriber `json:"mercure,omitempty"`
}

// announcedOn reports whether m is announced to topic and listed in its
// push.presence events.
func (m Member) announcedOn(topic string) bool {
	return m.Presence && (m.Announced == nil || slices.Contains(m.Announced, topic))
}

// announcedTopics are those of topics m is announced to.
func (m Member) announcedTopics(topics []string) []string {
	if !m.Presence {
		return nil
	}
	if m.Announced != nil {
		return m.Announced
	}
	return topics
}

// member is who the admitted request is, on transport.
func (a *admission) member(r *http.Request, transport string) Member {
	m := Member{Connection: connectionID(), Meta: a.Meta, Transport: transport, RemoteAddr: clientIP(r), Since: time.Now(), Mercure: a.mercure}
	if a.mercure != nil {
		m.Connection = strings.TrimPrefix(a.mercure.ID, "urn:uuid:")
	}
	repl := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	if a.User != "" {
		m.User = a.User
	} else if user, _ := repl.GetString("http.auth.user.id"); user != "" {
		m.User = user
	} else if a.Grant != nil {
		if sub, ok := a.Grant.Claims["sub"].(string); ok {
			m.User = sub
		}
	}
	return m
}

// presenceData is the data of a connection's push.join and push.leave
// events, and its entry in a push.presence snapshot: its id and, when
// known, its user.
func presenceData(m Member) string {
	data, _ := json.Marshal(presenceEntry{Connection: m.Connection, User: m.User})
	return string(data)
}

// presenceEntry is a member as clients see it.
type presenceEntry struct {
	Connection string `json:"connection"`
	User       string `json:"user,omitempty"`
}

// DefaultPresenceLimit is how many members of a topic a presence snapshot
// lists; beyond it, only their count.
const DefaultPresenceLimit = 1000

// subscribe subscribes an admitted connection, who, and with presence
// reads what its push.presence events say: on every topic it follows, or
// with presence patterns on those they match.
func (e *Endpoint) subscribe(ctx context.Context, a *admission, who Member) (*Subscription, error) {
	announce := e.Presence
	if announce && len(e.PresenceTopics) > 0 {
		var on []string
		for _, t := range a.Topics {
			if e.announces(t) {
				on = append(on, t)
			}
		}
		announce = len(on) > 0
		if len(on) < len(a.Topics) {
			who.Announced = on
		}
	}
	sub, err := e.hub.subscribe(ctx, a.Topics, a.Patterns, a.LastEventID, who, a.Grant, announce)
	if err == nil {
		sub.connected(e.stopping())
	}
	if err == nil && a.Grant != nil {
		sub.ExpireAt(a.Grant.Expires)
	}
	if err != nil || !announce {
		return sub, err
	}
	// read after the subscription is in place: a member that joins later
	// comes as push.join, one that left before is gone from the list
	for _, t := range sub.Member().announcedTopics(sub.topics()) {
		if p, ok := e.presenceOf(ctx, t); ok {
			sub.presence = append(sub.presence, p)
		}
	}
	return sub, nil
}

// announces reports whether a connection of the endpoint is announced to
// topic, and listed there.
func (e *Endpoint) announces(topic string) bool {
	return e.Presence && (len(e.PresenceTopics) == 0 || matchAny(e.PresenceTopics, topic))
}

// presenceOf reads the push.presence event of topic; ok is false when
// the roster cannot say (logged).
func (e *Endpoint) presenceOf(ctx context.Context, topic string) (p topicPresence, ok bool) {
	members, count, _, err := e.hub.members(ctx, topic, e.PresenceLimit, true)
	if err != nil {
		e.logger.Warn("presence not read", zap.String("topic", topic), zap.Error(err))
		return topicPresence{}, false
	}
	snap := presenceSnapshot{Topic: topic, Count: count}
	if count <= e.PresenceLimit {
		snap.Members = make([]presenceEntry, len(members))
		for i, m := range members {
			snap.Members[i] = presenceEntry{Connection: m.Connection, User: m.User}
		}
	}
	data, _ := json.Marshal(snap)
	return topicPresence{topic: topic, data: string(data)}, true
}

// presenceSnapshot is the data of a push.presence event.
type presenceSnapshot struct {
	Topic string `json:"topic"`
	// Members are the topic's connections, oldest first; absent when
	// there are more than the presence limit.
	Members []presenceEntry `json:"members,omitempty"`
	Count   int             `json:"count"`
}

// topicPresence is a push.presence event to send.
type topicPresence struct{ topic, data string }

// Roster is implemented by brokers that span several nodes (Redis): they
// keep who is connected on every node, each node's entries expiring unless
// the node keeps them alive, and answer for the whole cluster.
type Roster interface {
	// Join records a connection of this node on its topics, before its
	// push.join is published. Joining again replaces its topics (a
	// WebSocket client subscribed or unsubscribed).
	Join(ctx context.Context, m Member, topics []string) error
	// Leave forgets a connection of this node. With wait it returns once
	// that is done (its push.leave follows); else it may return before.
	Leave(ctx context.Context, m Member, topics []string, wait bool)
	// Members returns the members of topic on every live node (only those
	// announced with presence, if asked), and their count; beyond max
	// members, only the count.
	Members(ctx context.Context, topic string, max int, presence bool) ([]Member, int, error)
	// Topics counts the members of every topic that starts with prefix.
	Topics(ctx context.Context, prefix string) (map[string]int, error)
	// Stats returns the counters of every other live node.
	Stats(ctx context.Context) ([]NodeStats, error)
	// Ask broadcasts c to every other live node, and returns the sum of
	// what their Command functions returned and how many nodes answered.
	Ask(ctx context.Context, c Command) (count, nodes int, err error)
}

// NodeStats are one node's counters of a hub.
type NodeStats struct {
	Node        string            `json:"node,omitempty"`
	Connections map[string]int64  `json:"connections"`
	Published   uint64            `json:"published"`
	Delivered   map[string]uint64 `json:"delivered"`
}

// Joined is a local connection and its topics, as a Roster records it.
type Joined struct {
	Member Member   `json:"m"`
	Topics []string `json:"t"`
}
