package main

import (
	"errors"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// The Mercure protocol, spoken to Mercure's own hub (-target mercure) and
// to caddy-push's push_mercure (-target caddy-push-mercure): a subscriber
// GETs /.well-known/mercure?topic=<selector> and reads SSE; a publisher
// POSTs the form topic=<topic>&data=<payload> with a JWT whose mercure
// claim may publish, and the answer's body is the event's id.

// mercureDefaultKey is the publisher key both hubs have in bench/Caddyfile
// and bench/mercure/Caddyfile unless MERCURE_PUBLISHER_JWT_KEY says
// otherwise: Mercure's own documented development key. The bench runs on
// loopback only, where anyone who can publish is on the machine anyway.
const mercureDefaultKey = "!ChangeThisMercureHubJWTSecretKey!"

// isMercure reports whether target speaks the Mercure protocol.
func isMercure(target string) bool {
	return target == "mercure" || target == "caddy-push-mercure"
}

// mercureToken is a publisher's JWT, signed with HS256 and key, that may
// publish to every topic. It expires after a day, longer than any run.
func mercureToken(key string) (string, error) {
	if key == "" {
		return "", errors.New("mercure publishes with a JWT: -jwt-key must not be empty")
	}
	claims := jwt.MapClaims{
		"mercure": map[string]any{"publish": []string{"*"}},
		"exp":     time.Now().Add(24 * time.Hour).Unix(),
	}
	return jwt.NewWithClaims(jwt.SigningMethodHS256, claims).SignedString([]byte(key))
}

// mercureTopics turns the run's topic names into the IRIs Mercure topics
// are: https://example.com/rooms/<name>/feed.
func mercureTopics(names []string) []string {
	topics := make([]string, len(names))
	for i, name := range names {
		topics[i] = "https://example.com/rooms/" + name + "/feed"
	}
	return topics
}

// mercureTemplate is the URI template (RFC 6570) that matches topic, one
// of mercureTopics', and no other topic of the run: the room is literal,
// only the last segment is a variable. A template matching every topic
// would bring each subscriber every topic's events, and its deliveries
// would no longer compare with an exact subscriber's.
func mercureTemplate(topic string) string {
	return strings.TrimSuffix(topic, "/feed") + "/{x}"
}

// selector is what subscriber (or churn connection) i asks for: its
// topic, or for a -pattern-share of them, the URI template that matches
// that topic alone. The share is taken by whole rounds of the topics
// (subscribers i to i+topics-1 are one round, one per topic), so that
// every topic has the same share of subscribers by template.
func selector(topics []string, i int, share float64) string {
	topic := topics[i%len(topics)]
	if share <= 0 {
		return topic
	}
	round := float64(i / len(topics))
	if int((round+1)*share) > int(round*share) {
		return mercureTemplate(topic)
	}
	return topic
}
