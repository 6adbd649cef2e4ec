// Package push gives Caddy sites real-time push: Server-Sent Events
// streams, WebSocket endpoints and an HTTP publish route over named hubs.
//
// It registers the push app (App), which owns the hubs and keeps them
// across config reloads; the handlers push_sse (SSEHandler), push_ws
// (WSHandler) and push_publish (PublishHandler); the in-memory broker
// push.brokers.memory (MemoryBroker); and the admin API's /push/ routes.
// The Redis broker, for a hub shared by several nodes, is the package
// redis.
//
// A Hub has its Broker store each event (give it an id, keep it for
// replay) and fans it out to the Subscriptions of this process, encoded
// once per wire format and shared by every subscriber. Any Go code in the
// process can publish to a running hub:
//
//	if hub, ok := push.LookupHub("default"); ok {
//		id, err := hub.Publish(ctx, push.Message{Topics: []string{"news"}, Data: "hi"})
//	}
package push
