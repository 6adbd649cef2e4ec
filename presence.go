package push

import (
	"cmp"
	"encoding/json"
	"net/http"
	"slices"
	"time"

	"github.com/caddyserver/caddy/v2"
)

// Member is one connection as presence and the admin API show it.
type Member struct {
	// Connection is the connection's id, unique in the hub.
	Connection string `json:"connection"`
	// User is the authenticated user: Caddy's http.auth.user.id (set by
	// basic_auth, forward_auth, ...) or else the sub claim of the
	// client's verified JWT; empty when unknown.
	User string `json:"user,omitempty"`
	// Transport is sse or ws.
	Transport string `json:"transport,omitempty"`
	// RemoteAddr is the client's IP, as Caddy determined it (honouring
	// trusted_proxies).
	RemoteAddr string `json:"remote_addr,omitempty"`
	// Since is when the connection subscribed.
	Since time.Time `json:"connected_since"`
	// Node is the node that holds the connection, in a cluster's answers.
	Node string `json:"node,omitempty"`
}

// member is who the admitted request is, on transport.
func (a *admission) member(r *http.Request, transport string) Member {
	m := Member{Connection: connectionID(), Transport: transport, RemoteAddr: clientIP(r), Since: time.Now()}
	repl := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	if user, _ := repl.GetString("http.auth.user.id"); user != "" {
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

// localMembers returns the connections of this process that follow topic,
// oldest first.
func (h *Hub) localMembers(topic string) []Member {
	h.mu.RLock()
	var out []Member
	for _, l := range h.lanes {
		for s := range l.topics[topic] {
			if !s.isEnded() {
				out = append(out, s.who)
			}
		}
	}
	h.mu.RUnlock()
	slices.SortFunc(out, func(a, b Member) int {
		return cmp.Or(a.Since.Compare(b.Since), cmp.Compare(a.Connection, b.Connection))
	})
	return out
}

// How a disconnected stream is told why it ends (Hub.Disconnect): SSE in
// a comment, WebSocket in the 1008 close reason.
const disconnectedReason = "disconnected by the server's operator"

var disconnectedComment = []byte(": " + disconnectedReason + "\n\n")

// DefaultPresenceLimit is how many members of a topic a presence snapshot
// lists; beyond it, only their count.
const DefaultPresenceLimit = 1000
