// push.js: the browser client of caddy-push, served by the push_client
// directive. One ES module, no dependencies: subscribe() over EventSource
// (push_sse, push_mercure), connect() over WebSocket (push_ws), and a
// Presence map either one feeds. The API is in push.d.ts and
// docs/browser-client.md.

// The server's own event types; never an app's.
const PRESENCE = ['push.presence', 'push.join', 'push.leave'];
const SERVER = ['pause', 'push.reset', ...PRESENCE];

const options = (target) =>
	typeof target === 'string' || target instanceof URL ? { url: target } : { ...target };

// address is the endpoint's URL with the topics and the id to resume from.
function address(o, topics, lastEventId, ws) {
	const u = new URL(o.url, location.href);
	if (ws) u.protocol = u.protocol.replace(/^http/, 'ws');
	for (const t of topics ?? []) u.searchParams.append(o.topicParam ?? 'topic', t);
	if (lastEventId) u.searchParams.set(o.lastEventIdParam ?? 'last_event_id', lastEventId);
	return u;
}

// The n-th failure in a row waits half to all of min(max, min·2ⁿ) ms,
// so clients a failure hit together do not come back together.
function backoff(n, b = {}) {
	const min = b.min ?? 500;
	return Math.min(b.max ?? 30000, min * 2 ** n) * (0.5 + Math.random() / 2);
}

// after is how long to wait to come back at until (Unix ms): never
// before, and up to jitter ms later, spread at random.
const after = (until, jitter = 1000) => Math.max(0, until - Date.now()) + Math.random() * jitter;

const randomKey = () => Array.from(crypto.getRandomValues(new Uint8Array(16)), (b) => b.toString(16).padStart(2, '0')).join('');

// stateSetter sets client.state and tells onState of a change.
const stateSetter = (client, h) => (state, info) => {
	if (client.state !== state) {
		client.state = state;
		h.onState?.(state, info);
	}
};

// route hands an event to its handlers: on[type] whatever the type, then
// a reset to onReset, presence to the Presence map, the rest to onEvent.
function route(h, ev) {
	h.on?.[ev.type]?.(ev);
	if (ev.type === 'push.reset') h.onReset?.(ev);
	else if (PRESENCE.includes(ev.type)) h.presence?.handle(ev);
	else h.onEvent?.(ev);
}

// subscribe follows topics over Server-Sent Events, resuming where it
// left off: the browser's own reconnects, a pause, and an EventSource that
// gave up (any answer but 200) reopened with backoff.
export function subscribe(target, h = {}) {
	const o = options(target);
	const s = { state: '', lastEventId: o.lastEventId ?? '', pausedUntil: 0, close };
	const set = stateSetter(s, h);
	// an EventSource hands on only the types it listens to
	const types = new Set(['message', ...(o.types ?? []), ...Object.keys(h.on ?? {})].filter((t) => !SERVER.includes(t)));
	let es, timer;
	let failures = 0;
	let listed = []; // the topics this stream's push.presence events named

	function open() {
		es = new EventSource(address(o, o.topics, s.lastEventId), { withCredentials: !!o.withCredentials });
		listed = [];
		es.onopen = () => {
			failures = 0;
			set('open');
		};
		es.onerror = () => {
			listed = []; // the next stream brings a fresh push.presence
			// CLOSED: the browser gave up for good; CONNECTING: it comes back by itself
			if (es.readyState === EventSource.CLOSED) retry(backoff(failures++, o.backoff));
			else set('reconnecting');
		};
		const listen = (type, fn) =>
			es.addEventListener(type, (e) => {
				if (e.lastEventId) s.lastEventId = e.lastEventId;
				fn({ id: e.lastEventId, type, data: e.data });
			});
		for (const type of types) listen(type, (ev) => route(h, ev));
		listen('push.reset', (ev) => route(h, ev));
		// the pause has no id: e.lastEventId is the last event's, to resume from
		listen('pause', (ev) => {
			h.on?.pause?.(ev);
			s.pausedUntil = +ev.data;
			retry(after(s.pausedUntil, o.jitter), 'paused');
		});
		listen('push.presence', (ev) => {
			const topic = JSON.parse(ev.data).topic;
			listed.push(topic);
			route(h, { ...ev, topic });
		});
		// over SSE a join or leave names no topic: it is on this stream's
		for (const type of PRESENCE.slice(1))
			listen(type, (ev) => {
				h.on?.[type]?.(ev);
				for (const topic of listed) h.presence?.handle({ ...ev, topic });
			});
	}
	function retry(delay, why = 'reconnecting') {
		es.close();
		set(why, why === 'paused' ? s.pausedUntil : delay);
		if (why === 'paused') h.onPause?.(s.pausedUntil);
		timer = setTimeout(open, delay);
	}
	function close() {
		clearTimeout(timer);
		es.close();
		set('closed');
	}
	set('connecting');
	open();
	return s;
}

// connect opens a WebSocket that comes back by itself and resumes, changes
// its topics while open, and publishes messages that survive a dropped
// connection.
export function connect(target, h = {}) {
	const o = options(target);
	const c = { state: '', lastEventId: o.lastEventId ?? '', pausedUntil: 0, subscribe, unsubscribe, publish, close };
	const set = stateSetter(c, h);
	// an endpoint that takes its topics from the query gets the current
	// ones in the URL; one with fixed topics gets the changes again on
	// every connection
	const query = o.topics && new Set(o.topics);
	const added = new Set();
	const removed = new Set();
	const outbox = []; // publishes not known to have reached the server
	const waiting = []; // subscribe and unsubscribe requests not answered
	let ws, timer;
	let seq = 0; // orders what goes out: the server answers in that order
	let failures = 0;
	let strike = false; // closed with 1008: one more try

	function open() {
		ws = new WebSocket(address(o, query, c.lastEventId, true), o.protocols);
		let opened = false;
		ws.onopen = () => {
			opened = true;
			failures = 0;
			strike = false;
			set('open');
			for (const w of waiting) send(w);
			const again = (kind, topic, id) => request(kind, topic, id).catch((e) => h.onError?.(e.message));
			for (const t of removed) again('unsubscribe', t);
			for (const t of added) again('subscribe', t, c.lastEventId || undefined);
			for (const p of outbox) send(p);
		};
		ws.onmessage = (e) => {
			let m = null;
			if (o.format !== 'text') {
				try {
					m = JSON.parse(e.data);
				} catch {}
			}
			if (!m || typeof m !== 'object') m = { data: e.data }; // format text: the data alone
			if ('subscribed' in m) answer('subscribe', m.subscribed);
			else if ('unsubscribed' in m) answer('unsubscribe', m.unsubscribed);
			else if ('error' in m && !('data' in m)) error(String(m.error));
			else if (m.event === 'pause') c.pausedUntil = +m.data; // the close (1013) follows
			else {
				if (m.id) c.lastEventId = m.id;
				if (removed.has(m.topic)) return; // replayed before the unsubscribe went through
				const ev = { id: m.id ?? '', type: m.event || 'message', topic: m.topic, data: m.data ?? '' };
				const p = outbox.find((p) => p.ws && p.type === ev.type && p.data === ev.data && (!p.topic || p.topic === ev.topic));
				if (p) done(p, null, ev.id); // its echo
				route(h, ev);
			}
		};
		ws.onclose = async (e) => {
			if (c.state === 'closed') return;
			if (e.code === 1013) {
				const until = c.pausedUntil || +(/come back at (\d+)/.exec(e.reason)?.[1] ?? Date.now());
				c.pausedUntil = until;
				return wait(after(until, o.jitter), 'paused');
			}
			// 1008 (token expired, policy): one more try, with fresh credentials
			if (strike && !opened) return end('closed', e);
			if (e.code === 1008) {
				strike = true;
				const url = o.refresh && (await Promise.resolve().then(o.refresh).catch(() => {}));
				if (url) o.url = url;
				if (c.state === 'closed') return;
			}
			wait(backoff(opened ? 0 : failures++, o.backoff));
		};
	}
	function wait(delay, why = 'reconnecting') {
		set(why, why === 'paused' ? c.pausedUntil : delay);
		if (why === 'paused') h.onPause?.(c.pausedUntil);
		timer = setTimeout(open, delay);
	}

	// send writes a publish or a request on the open socket
	function send(x) {
		x.ws = ws;
		x.seq = ++seq;
		ws.send(x.frame);
		if (x.key) {
			// no answer means it went through, once the connection has
			// stayed open a while after it
			clearTimeout(x.timer);
			x.timer = setTimeout(() => x.ws === ws && ws.readyState === 1 && done(x), o.settle ?? 2000);
		}
	}
	// done settles a publish or a request: resolved with id, or rejected with err
	function done(x, err, id) {
		clearTimeout(x.timer);
		for (const list of [outbox, waiting]) {
			const i = list.indexOf(x);
			if (i >= 0) list.splice(i, 1);
		}
		if (err) x.reject(err);
		else x.resolve(id);
	}

	function request(kind, topic, lastEventId) {
		return new Promise((resolve, reject) => {
			const w = { kind, topic, resolve, reject, frame: JSON.stringify({ [kind]: topic, lastEventId }) };
			w.timer = setTimeout(() => done(w, new Error(`no answer to ${kind} ${topic}`)), o.timeout ?? 10000);
			waiting.push(w);
			if (c.state === 'open') send(w);
		});
	}
	function answer(kind, topic) {
		const w = waiting.find((w) => w.kind === kind && w.topic === topic && w.ws === ws);
		if (!w) return;
		// the publishes sent before it went through: an error would have come first
		for (const p of [...outbox]) if (p.ws === ws && p.seq < w.seq) done(p);
		const on = kind === 'subscribe';
		if (query) query[on ? 'add' : 'delete'](topic);
		else if (on) removed.delete(topic) || added.add(topic);
		else added.delete(topic) || removed.add(topic);
		if (!on) h.presence?.clear(topic);
		done(w);
	}
	// error takes an error frame: it belongs to the publish whose key it
	// names, or to the first unanswered message when nothing sent before
	// it could have caused it; otherwise it goes to onError
	function error(text) {
		const p = outbox.find((p) => text.includes(`"${p.key}"`));
		if (p && /still being published/.test(text)) return setTimeout(() => outbox.includes(p) && p.ws === ws && ws.readyState === 1 && send(p), 1000);
		if (p) return done(p, new Error(text));
		const sent = [...waiting, ...outbox].filter((x) => x.ws === ws).sort((a, b) => a.seq - b.seq);
		if (sent[0] && (sent[0].kind || sent.length === 1)) done(sent[0], new Error(text));
		else h.onError?.(text);
	}

	function subscribe(topic, opts = {}) {
		return request('subscribe', topic, opts.lastEventId);
	}
	function unsubscribe(topic) {
		return request('unsubscribe', topic);
	}
	function publish(msg) {
		return new Promise((resolve, reject) => {
			const key = msg.key ?? randomKey();
			const data = msg.data === undefined ? '' : typeof msg.data === 'string' ? msg.data : JSON.stringify(msg.data);
			const frame = JSON.stringify({ topic: msg.topic, event: msg.event, data: msg.data, id: msg.id, key });
			outbox.push({ key, frame, topic: msg.topic, type: msg.event || 'message', data, resolve, reject });
			if (c.state === 'open') send(outbox.at(-1));
		});
	}
	function end(state, info) {
		clearTimeout(timer);
		set(state, info);
		for (const x of [...outbox, ...waiting]) done(x, new Error('connection closed'));
	}
	function close() {
		end('closed');
		ws.close(1000);
	}
	set('connecting');
	open();
	return c;
}

// Presence keeps who is on each topic, from the push.presence,
// push.join and push.leave events that subscribe() and connect() hand it.
export class Presence {
	constructor(h = {}) {
		this.h = h;
		this.lists = new Map(); // topic → { members: Map(connection → user), count, listed }
	}
	get topics() {
		return [...this.lists.keys()];
	}
	members(topic) {
		return new Map(this.lists.get(topic)?.members);
	}
	count(topic) {
		return this.lists.get(topic)?.count ?? 0;
	}
	handle(ev) {
		if (!PRESENCE.includes(ev.type)) return;
		const d = JSON.parse(ev.data);
		const h = this.h;
		const topic = d.topic ?? ev.topic;
		const old = this.lists.get(topic);
		if (ev.type === 'push.presence') {
			// over presence_limit the count comes without the list
			const members = new Map((d.members ?? []).map((m) => [m.connection, m.user ?? '']));
			this.lists.set(topic, { members, count: d.count ?? members.size, listed: !!d.members });
			// a fresh list after a reconnect: who came and went meanwhile
			if (old) {
				for (const [connection, user] of members) if (!old.members.has(connection)) h.onJoin?.(topic, { connection, user });
				for (const [connection, user] of old.members) if (!members.has(connection)) h.onLeave?.(topic, { connection, user });
			}
		} else {
			const list = old ?? { members: new Map(), count: 0, listed: true };
			this.lists.set(topic, list);
			const m = { connection: d.connection, user: d.user ?? '' };
			// a connection's own join follows the list that has it already
			if (ev.type === 'push.join') {
				if (list.members.has(m.connection)) return;
				list.members.set(m.connection, m.user);
				list.count++;
				h.onJoin?.(topic, m);
			} else {
				if (!list.members.delete(m.connection) && list.listed) return;
				list.count = Math.max(0, list.count - 1);
				h.onLeave?.(topic, m);
			}
		}
		h.onChange?.(topic, this.members(topic));
	}
	// clear forgets a topic (all topics without one), as after leaving it.
	clear(topic) {
		for (const t of topic === undefined ? this.topics : [topic]) {
			if (this.lists.delete(t)) this.h.onChange?.(t, new Map());
		}
	}
}
