package push_test

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/caddy-push/push"
)

// startHub runs Caddy in this process with the push app and nothing else
// (no listener, no admin endpoint), as a program that embeds Caddy would,
// so that the examples have a hub to look up.
func startHub(name string) (stop func()) {
	cfg := fmt.Sprintf(`{"admin": {"disabled": true},
		"logging": {"logs": {"default": {"level": "ERROR"}}},
		"apps": {"push": {"hubs": {%q: {"history": 100}}}}}`, name)
	if err := caddy.Load([]byte(cfg), true); err != nil {
		panic(err)
	}
	return func() { _ = caddy.Stop() }
}

// Any code in the Caddy process (another module, a program that embeds
// Caddy) publishes by hub name. The answer is the event's id, which
// subscribers see as their last event id; delivery follows
// asynchronously.
func ExampleHub_Publish() {
	defer startHub("default")()
	ctx := context.Background()

	hub, ok := push.LookupHub("default")
	if !ok {
		return // no push app running in this process
	}
	id, err := hub.Publish(ctx, push.Message{Topics: []string{"news"}, Type: "update", Data: "hello"})
	if err != nil {
		fmt.Println("not published:", err) // errors.Is(err, push.ErrUnavailable): retry later
		return
	}
	_, seq, _ := push.ParseID(id)
	fmt.Println("published event number", seq)
	// Output: published event number 1
}

// Message.IdempotencyKey makes a Go publish happen once, as the publish
// route's Idempotency-Key header does. PublishAs publishes on behalf of a
// named publisher (keys are scoped per publisher) and tells a replay
// apart from a new event.
func ExampleHub_PublishAs() {
	defer startHub("orders")()
	ctx := context.Background()
	hub, _ := push.LookupHub("orders")
	orderID := "order-42-paid"

	for _, data := range []string{"paid", "paid", "refunded"} {
		p, err := hub.PublishAs(ctx, push.Message{Topics: []string{"orders"}, Data: data, IdempotencyKey: orderID}, "billing")
		switch {
		case errors.Is(err, push.ErrIdempotencyConflict): // the key was used for another message
			fmt.Println(data + ": conflict, a new message needs a new key")
		case errors.Is(err, push.ErrIdempotencyInFlight): // still being published: try again later
			fmt.Println(data + ": in flight")
		case err != nil:
			fmt.Println(data+":", err)
		case p.Replayed: // published before, as p.ID
			fmt.Println(data + ": replayed, nothing published now")
		default:
			fmt.Println(data + ": published")
		}
	}
	// Output:
	// paid: published
	// paid: replayed, nothing published now
	// refunded: conflict, a new message needs a new key
}

// A Caddy module takes the hub of its own configuration from the push
// app in Provision (as the demo's clock, cmd/caddy/clock, does) rather
// than by name from the running hubs, so that it holds the hub its
// configuration set up, across reloads too.
func ExampleApp_Hub() {
	defer startHub("default")()
	ctx := caddy.ActiveContext() // in a module: the ctx its Provision is given

	app, err := ctx.App("push")
	if err != nil {
		panic(err)
	}
	hub, err := app.(*push.App).Hub("default")
	if err != nil {
		panic(err)
	}
	fmt.Println(hub.Name())
	// Output: default
}

// Hub.Pause asks the matching streams to go away for a while and come
// back at a time spread around For: SSE streams get the pause message
// and end, WebSocket connections close with 1013. The count is of this
// process's streams; with the Redis broker every other node pauses its
// own share as well.
func ExampleHub_Pause() {
	defer startHub("default")()
	ctx := context.Background()

	hub, _ := push.LookupHub("default")
	n, err := hub.Pause(ctx, push.PauseRequest{
		Topics:   []string{"news"}, // empty: every stream of the hub
		For:      5 * time.Minute,  // come back after this long...
		Jitter:   30 * time.Second, // ...± this, spread at random
		Fraction: 0.5,              // a random half of them; 0 = all
	})
	fmt.Println(n, err)
	// Output: 0 <nil>
}

// Hub.Disconnect ends the connections of a user (or one connection): an
// SSE stream pauses for For, or ends without it; a WebSocket closes with
// 1008. Revoke the user's credentials as well to keep them out.
func ExampleHub_Disconnect() {
	defer startHub("default")()
	ctx := context.Background()

	hub, _ := push.LookupHub("default")
	n, err := hub.Disconnect(ctx, push.DisconnectRequest{User: "mallory", For: 10 * time.Minute})
	fmt.Println(n, err)
	// Output: 0 <nil>
}

// Hub.Info, Hub.Topics and Hub.Presence answer what the admin API's GET
// routes answer, from Go.
func ExampleHub_Info() {
	defer startHub("default")()
	ctx := context.Background()

	hub, _ := push.LookupHub("default")
	for _, topic := range []string{"chat/lobby", "chat/lobby", "news"} {
		if _, err := hub.Publish(ctx, push.Message{Topics: []string{topic}, Data: "hello"}); err != nil {
			panic(err)
		}
	}
	info, err := hub.Info(ctx)
	if err != nil {
		panic(err)
	}
	fmt.Println(info.Name, info.Scope, info.Broker, "published:", info.Published, "kept:", info.HistoryStats.Events)

	topics, scope, _ := hub.Topics(ctx, "chat/", 10) // topics with subscribers, most subscribed first
	fmt.Println(len(topics), scope)

	members, count, _, _ := hub.Presence(ctx, "chat/lobby", 1000) // who follows it, oldest first
	fmt.Println(len(members), count)
	// Output:
	// default node memory published: 3 kept: 3
	// 0 node
	// 0 0
}

// A topic pattern, as JWT claims and the private option write them: a *
// segment matches any one segment, and a * as the last segment matches
// one or more.
func ExampleMatchTopic() {
	fmt.Println(push.MatchTopic("chat/*", "chat/a"))
	fmt.Println(push.MatchTopic("chat/*", "chat/a/b"))
	fmt.Println(push.MatchTopic("chat/*", "chat"))
	fmt.Println(push.MatchTopic("user/*/inbox", "user/alice/inbox"))
	fmt.Println(push.MatchTopic("*", "anything/at/all"))
	// Output:
	// true
	// true
	// false
	// true
	// true
}

// ValidateTopic is the rule every topic meets: a non-empty UTF-8 string of
// at most 256 bytes with no control characters.
func ExampleValidateTopic() {
	fmt.Println(push.ValidateTopic("chat/lobby"))
	fmt.Println(push.ValidateTopic("") != nil)
	fmt.Println(push.ValidateTopic("bad\ntopic") != nil)
	// Output:
	// <nil>
	// true
	// true
}
