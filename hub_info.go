package push

import (
	"cmp"
	"context"
	"slices"
	"strings"
)

// Scopes of an answer: what a count or a list covers.
const (
	ScopeNode    = "node"    // this process
	ScopeCluster = "cluster" // every node on the hub's broker
)

// HubInfo describes a hub, for the admin API.
type HubInfo struct {
	Name string `json:"name"`
	// Scope says what the counts cover: this node, or the cluster.
	Scope string `json:"scope"`
	// Broker is the broker module's name: memory, redis.
	Broker string `json:"broker"`
	// Topics is the number of topics with subscribers.
	Topics int `json:"topics"`
	// Connections are the open connections, by transport.
	Connections map[string]int64 `json:"connections"`
	// Published counts events published, Delivered events written to
	// subscribers (by transport), since the hub started.
	Published uint64            `json:"published"`
	Delivered map[string]uint64 `json:"delivered"`
	HistoryStats
}

// TopicInfo describes a topic, for the admin API.
type TopicInfo struct {
	Topic       string `json:"topic"`
	Subscribers int    `json:"subscribers"`
	TopicHistory
}

// Info describes the hub: its connections and counters on this node, or
// on every node of a cluster.
func (h *Hub) Info(ctx context.Context) (HubInfo, error) {
	local := h.nodeStats()
	info := HubInfo{Name: h.name, Scope: ScopeNode, Broker: h.brokerName,
		Connections: local.Connections, Delivered: local.Delivered, Published: local.Published}
	if r, ok := h.broker.(Roster); ok {
		nodes, err := r.Stats(ctx)
		if err != nil {
			return info, err
		}
		topics, err := r.Topics(ctx, "")
		if err != nil {
			return info, err
		}
		info.Scope, info.Topics = ScopeCluster, len(topics)
		for _, n := range nodes {
			info.Published += n.Published
			for _, t := range transports {
				info.Connections[t] += n.Connections[t]
				info.Delivered[t] += n.Delivered[t]
			}
		}
	} else {
		info.Topics = len(h.localTopics(""))
	}
	if in, ok := h.broker.(Inspector); ok {
		hs, err := in.History(ctx)
		if err != nil {
			return info, err
		}
		info.HistoryStats = hs
	}
	return info, nil
}

// Topics lists up to limit topics with subscribers that start with
// prefix, most subscribed first, with their history, and says what the
// counts cover.
func (h *Hub) Topics(ctx context.Context, prefix string, limit int) ([]TopicInfo, string, error) {
	counts, scope := h.localTopics(prefix), ScopeNode
	if r, ok := h.broker.(Roster); ok {
		var err error
		if counts, err = r.Topics(ctx, prefix); err != nil {
			return nil, "", err
		}
		scope = ScopeCluster
	}
	out := make([]TopicInfo, 0, len(counts))
	for t, n := range counts {
		out = append(out, TopicInfo{Topic: t, Subscribers: n})
	}
	slices.SortFunc(out, func(a, b TopicInfo) int {
		return cmp.Or(cmp.Compare(b.Subscribers, a.Subscribers), cmp.Compare(a.Topic, b.Topic))
	})
	out = out[:min(len(out), limit)]
	if in, ok := h.broker.(Inspector); ok && len(out) > 0 {
		names := make([]string, len(out))
		for i := range out {
			names[i] = out[i].Topic
		}
		hist, err := in.TopicHistory(ctx, names)
		if err != nil {
			return nil, "", err
		}
		for i := range out {
			out[i].TopicHistory = hist[i]
		}
	}
	return out, scope, nil
}

// Presence returns up to limit of the connections that follow topic,
// oldest first, and how many there are, and says what they cover.
func (h *Hub) Presence(ctx context.Context, topic string, limit int) ([]Member, int, string, error) {
	return h.members(ctx, topic, limit, false)
}

// members is Presence, or with presence the connections announced to
// the topic only.
func (h *Hub) members(ctx context.Context, topic string, limit int, presence bool) ([]Member, int, string, error) {
	if r, ok := h.broker.(Roster); ok {
		members, n, err := r.Members(ctx, topic, limit, presence)
		if presence && members != nil {
			// the roster lists a member on each of its topics
			members = slices.DeleteFunc(members, func(m Member) bool { return !m.announcedOn(topic) })
			n = len(members)
		}
		return members[:min(len(members), limit)], n, ScopeCluster, err
	}
	members := h.localMembers(topic, presence)
	return members[:min(len(members), limit)], len(members), ScopeNode, nil
}

// localTopics counts this process's subscriptions per topic, for topics
// that start with prefix.
func (h *Hub) localTopics(prefix string) map[string]int {
	h.mu.RLock()
	defer h.mu.RUnlock()
	counts := make(map[string]int)
	for _, l := range h.lanes {
		for t, subs := range l.topics {
			if strings.HasPrefix(t, prefix) {
				counts[t] += len(subs)
			}
		}
	}
	return counts
}

// localMembers returns the connections of this process that follow topic
// (only those announced with presence, if asked), oldest first.
func (h *Hub) localMembers(topic string, presence bool) []Member {
	h.mu.RLock()
	var out []Member
	for _, l := range h.lanes {
		for s := range l.topics[topic] {
			if who := s.Member(); !s.isEnded() && (!presence || who.announcedOn(topic)) {
				out = append(out, who)
			}
		}
	}
	h.mu.RUnlock()
	slices.SortFunc(out, func(a, b Member) int {
		return cmp.Or(a.Since.Compare(b.Since), cmp.Compare(a.Connection, b.Connection))
	})
	return out
}

// scope is what the hub's counts and commands cover.
func (h *Hub) scope() string {
	if _, ok := h.broker.(Roster); ok {
		return ScopeCluster
	}
	return ScopeNode
}

// nodeStats are the hub's counters in this process.
func (h *Hub) nodeStats() NodeStats {
	st := NodeStats{Connections: make(map[string]int64), Delivered: make(map[string]uint64),
		Published: h.stats.published.Load()}
	for _, t := range transports {
		ts := h.stats.of(t)
		st.Connections[t] = ts.connections.Load()
		st.Delivered[t] = ts.delivered.Load()
	}
	return st
}

// joined lists the hub's local connections, for a Roster that must write
// them anew (its backend lost them, or this node was taken for dead).
func (h *Hub) joined() []Joined {
	h.mu.RLock()
	defer h.mu.RUnlock()
	seen := make(map[*Subscription]bool)
	var out []Joined
	add := func(subs map[*Subscription]struct{}) {
		for s := range subs {
			if !seen[s] {
				seen[s] = true
				f := s.follows.Load()
				out = append(out, Joined{Member: f.who, Topics: f.topics})
			}
		}
	}
	for _, l := range h.lanes {
		for _, subs := range l.topics {
			add(subs)
		}
		for _, g := range l.patterns {
			add(g.subs)
		}
	}
	return out
}
