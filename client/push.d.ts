// Type declarations of push.js, the browser client of caddy-push, served
// beside it by the push_client directive (/push.js → /push.d.ts).
// docs/browser-client.md has the guide and examples.

/** An event from the hub. */
export interface PushEvent {
	/** The event's id (the hub's, or its publisher's own); empty for presence events. */
	id: string;
	/** The event type; "message" for an event published without one. */
	type: string;
	/** The topic it came on: WebSocket only (SSE events do not name it). */
	topic?: string;
	/** The data, as published: text (a JSON value arrives serialized). */
	data: string;
}

/**
 * The state of a client:
 * - connecting: the first connection is being made;
 * - open: connected, events flow;
 * - reconnecting: the connection ended and the client (or the browser) comes back by itself;
 * - paused: the server asked it to come back later, at pausedUntil;
 * - closed: close() was called, or a WebSocket was refused again after a 1008 close.
 */
export type State = 'connecting' | 'open' | 'reconnecting' | 'paused' | 'closed';

/** What a client hands events and changes to. Every handler is optional. */
export interface Handlers {
	/** Every event an app published (not pause or push.*), whatever its type. */
	onEvent?(ev: PushEvent): void;
	/**
	 * Handlers by event type, the server's own included (push.join, ...).
	 * Over SSE their keys are also the types the EventSource listens to.
	 */
	on?: Record<string, (ev: PushEvent) => void>;
	/**
	 * push.reset: the server could not replay what was missed (history
	 * too short, hub restarted); refetch your state. ev.data says why.
	 */
	onReset?(ev: PushEvent): void;
	/** The server paused the connection: it comes back at until (Unix ms), and resumes. */
	onPause?(until: number): void;
	/**
	 * The state changed. info: the delay in ms when reconnecting, the time
	 * to come back at when paused, the CloseEvent when a WebSocket gives up.
	 */
	onState?(state: State, info?: unknown): void;
	/** WebSocket: an error frame that belongs to no pending publish or request. */
	onError?(message: string): void;
	/** A Presence map to keep up to date from push.presence, push.join and push.leave. */
	presence?: Presence;
}

/** Where to connect, and how. A string or URL is { url }. */
export interface Options {
	/** The endpoint, absolute or relative to the page; http(s) or ws(s) for connect(). */
	url: string | URL;
	/**
	 * Topics to add to the URL as topicParam query parameters, for
	 * endpoints that take the client's topics from the query. With
	 * connect(), topics changed by subscribe() and unsubscribe() are
	 * carried in the URL of later connections.
	 */
	topics?: string[];
	/** The topics query parameter. Default: "topic" (push_mercure also takes "match"). */
	topicParam?: string;
	/** The id to resume after on the first connection. Default: none (live from now). */
	lastEventId?: string;
	/** The query parameter that carries the id to resume after. Default: "last_event_id". */
	lastEventIdParam?: string;
	/** Reconnect delays after failures in a row: min·2ⁿ capped at max, halved at random. Default: 500 and 30000 ms. */
	backoff?: { min?: number; max?: number };
	/** Up to this many ms added at random to the time a pause says to come back at. Default: 1000. */
	jitter?: number;
}

export interface SubscribeOptions extends Options {
	/** Event types to receive besides "message" and the keys of handlers.on. */
	types?: string[];
	/** Send cookies to an endpoint on another origin (its CORS must allow it). */
	withCredentials?: boolean;
}

export interface ConnectOptions extends Options {
	/** WebSocket subprotocols. */
	protocols?: string | string[];
	/** The endpoint's format: "json" (the envelope) or "text" (the data alone). Default: "json". */
	format?: 'json' | 'text';
	/**
	 * A publish with no echo and no error counts as through once the
	 * connection has stayed open this many ms after it went out. Default: 2000.
	 */
	settle?: number;
	/** How long subscribe() and unsubscribe() wait for the answer, in ms. Default: 10000. */
	timeout?: number;
	/**
	 * Called before the one reconnect after a 1008 close (token expired):
	 * refresh the credentials (a cookie), or return a new URL (one with a
	 * fresh access_token).
	 */
	refresh?(): void | string | URL | Promise<void | string | URL>;
}

/** An EventSource subscription, as subscribe() returns it. */
export interface Subscription {
	readonly state: State;
	/** The id of the last event received: where the next connection resumes. */
	readonly lastEventId: string;
	/** The time (Unix ms) the last pause said to come back at; 0 if never paused. */
	readonly pausedUntil: number;
	/** Closes the stream for good. */
	close(): void;
}

/** A message to publish over the WebSocket. */
export interface Message {
	/** The topic; may be left out when the endpoint has one publish topic. */
	topic?: string;
	/** The event type. Default: none ("message"). */
	event?: string;
	/** The data: text, or any JSON value (sent serialized). */
	data?: unknown;
	/** The event's own id, instead of the hub's. */
	id?: string;
	/** The idempotency key. Default: a random one, kept for every resend. */
	key?: string;
}

/** A WebSocket connection, as connect() returns it. */
export interface Connection {
	readonly state: State;
	/** The id of the last event received: where the next connection resumes. */
	readonly lastEventId: string;
	/** The time (Unix ms) the last pause said to come back at; 0 if never paused. */
	readonly pausedUntil: number;
	/**
	 * Follows one more topic on the open connection, replaying from
	 * lastEventId ("earliest": everything history holds) when given.
	 * Resolves when the server answers {"subscribed"}; rejects with its
	 * error, or after the timeout.
	 */
	subscribe(topic: string, opts?: { lastEventId?: string }): Promise<void>;
	/** Stops following a topic on the open connection; resolves on {"unsubscribed"}. */
	unsubscribe(topic: string): Promise<void>;
	/**
	 * Publishes with an idempotency key and sends it again, with the same
	 * key, after a reconnect until it is known to be through. Resolves with
	 * the event id when its echo comes back (the connection follows the
	 * topic), else with undefined once settled; rejects with an error frame
	 * that names its key or can only be its own, or when closed.
	 */
	publish(msg: Message): Promise<string | undefined>;
	/** Closes the connection for good; pending publishes and requests reject. */
	close(): void;
}

/** Follows topics over Server-Sent Events (push_sse, push_mercure). */
export function subscribe(target: string | URL | SubscribeOptions, handlers?: Handlers): Subscription;

/** Opens a WebSocket (push_ws) that reconnects and resumes by itself. */
export function connect(target: string | URL | ConnectOptions, handlers?: Handlers): Connection;

/** A member of a topic: its connection id and, when known, its user. */
export interface Member {
	connection: string;
	/** "" when anonymous. */
	user: string;
}

/** Presence callbacks. onJoin and onLeave also fire for the changes a fresh push.presence shows after a reconnect. */
export interface PresenceHandlers {
	onJoin?(topic: string, member: Member): void;
	onLeave?(topic: string, member: Member): void;
	/** Any change to a topic's members; members maps connection id → user. */
	onChange?(topic: string, members: Map<string, string>): void;
}

/** Who is on each topic, kept from the presence events a client hands it. */
export class Presence {
	constructor(handlers?: PresenceHandlers);
	/** The topics it has a list of. */
	readonly topics: string[];
	/** A copy of a topic's members: connection id → user. */
	members(topic: string): Map<string, string>;
	/** How many are on a topic (over presence_limit the server sends the count only). */
	count(topic: string): number;
	/** Takes a push.presence, push.join or push.leave event; others are ignored. */
	handle(ev: PushEvent): void;
	/** Forgets a topic, or every topic. */
	clear(topic?: string): void;
}
