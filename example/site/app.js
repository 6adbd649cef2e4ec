// The demo's browser code: push.js, the client the server itself serves
// (push_client /push.js), and fetch. No framework, no build step.
import { subscribe, connect, Presence } from '/push.js';

const $ = (id) => document.getElementById(id);

// Keep a list short enough to read.
function append(list, text, kind) {
	const item = document.createElement('li');
	item.textContent = text;
	if (kind) item.className = kind;
	list.prepend(item);
	while (list.children.length > 50) list.lastChild.remove();
	return item;
}

// HH:MM:SS, local time.
const clockTime = (ms) => new Date(ms).toTimeString().slice(0, 8);

// for the browser tests
window.pushDemo = { feed: null, received: [], resumedFrom: [], pauses: [], chat: [], chatOpens: 0, online: new Map() };

// ---- Live feed over Server-Sent Events ----------------------------------
// The server pauses this stream now and then (event "pause", its data the
// time to come back at): push.js closes it and comes back then, resuming
// from the last event's id, as it does after any other break.
const feed = $('feed');
let feedState = '';
let reconnects = 0;

// Every event the page handles, and which handler got it.
function record(ev, via) {
	$('last-id').textContent = ev.id || '–';
	window.pushDemo.received.push({ id: ev.id, type: ev.type, data: ev.data, via });
}

const feedSub = subscribe('/events/pausing', {
	on: {
		message: (ev) => {
			record(ev, 'message');
			append(feed, `#${ev.id} message: ${ev.data}`);
		},
		like: (ev) => {
			record(ev, 'like');
			append(feed, `#${ev.id} like: ${ev.data}`, 'like');
		},
		alert: (ev) => {
			record(ev, 'alert');
			append(feed, `#${ev.id} alert: ${ev.data}`, 'alert');
		},
		tick: (ev) => {
			$('last-id').textContent = ev.id;
			$('clock').textContent = ev.data;
		},
	},
	// The server could not fill a gap (history too short, server
	// restarted): an app would refetch its state here.
	onReset: (ev) => {
		record(ev, 'push.reset');
		append(feed, `reset: ${ev.data}`, 'alert');
	},
	onPause: (until) => {
		window.pushDemo.pauses.push({ id: feedSub.lastEventId, until, at: Date.now() });
		append(feed, `paused by the server until ${clockTime(until)}`, 'note');
	},
	onState: (state, info) => {
		$('ready-state').textContent = state === 'paused' ? `paused until ${clockTime(info)}` : state;
		if (state === 'open') {
			const from = feedSub.lastEventId || 'given at connect';
			if (feedState === 'paused') append(feed, `resumed after the pause, from id ${from}`, 'note');
			else if (feedState === 'reconnecting') append(feed, `reconnected, resuming after id ${from}`, 'note');
			else append(feed, 'connected', 'note');
			if (feedState !== 'connecting') {
				reconnects++;
				window.pushDemo.resumedFrom.push(feedSub.lastEventId);
			}
			$('reconnects').textContent = reconnects;
		} else if (state === 'reconnecting') {
			append(feed, 'stream ended, reconnecting', 'note');
		}
		feedState = state;
	},
});
window.pushDemo.feed = feedSub;

// ---- Chat over WebSocket ------------------------------------------------
// The page follows one room, chat/<room>; switching rooms changes the
// topic on the open connection (subscribe, then unsubscribe).
const chat = $('chat');
let room = $('chat-room').value;
const topic = (r) => `chat/${r}`;

function showOnline(members) {
	window.pushDemo.online = members;
	const names = [...members].map(([id, user]) => user || id.slice(0, 6));
	$('chat-online').textContent = `${members.size}: ${names.join(', ')}`;
}

// who is online in each room: the snapshot each connection gets first
// (push.presence), then push.join and push.leave
const presence = new Presence({
	onChange: (t, members) => t === topic(room) && showOnline(members),
	onJoin: (t, m) => t === topic(room) && append(chat, `someone (${m.connection.slice(0, 6)}) joined`, 'note'),
	onLeave: (t, m) => t === topic(room) && append(chat, `someone (${m.connection.slice(0, 6)}) left`, 'note'),
});

const remember = (ev) => window.pushDemo.chat.push({ id: ev.id, topic: ev.topic, event: ev.type, data: ev.data });

function connectChat() {
	return connect(
		{ url: '/chat', topics: [topic(room)] },
		{
			onEvent: (ev) => {
				remember(ev);
				append(chat, ev.data);
			},
			on: { 'push.presence': remember, 'push.join': remember, 'push.leave': remember },
			onReset: (ev) => append(chat, `missed messages: ${ev.data}`, 'alert'),
			onError: (message) => append(chat, `error: ${message}`, 'alert'),
			// after a server reload (1001) it comes back and resumes by itself
			onState: (state) => {
				$('chat-state').textContent = state;
				if (state === 'open') window.pushDemo.chatOpens++;
			},
			presence,
		},
	);
}
let chatConn = connectChat();
window.pushDemo.chatConn = chatConn;

$('chat-room').addEventListener('change', async (e) => {
	const from = room;
	if (e.target.value === from) return; // no move: unsubscribing would leave the room
	room = e.target.value;
	showOnline(presence.members(topic(room)));
	try {
		await chatConn.subscribe(topic(room));
		await chatConn.unsubscribe(topic(from));
		window.pushDemo.roomSwitch = { room, how: 'open connection' };
		append(chat, `moved to ${room} on the open connection`, 'note');
	} catch (err) {
		// a server that cannot change topics on an open connection:
		// a new connection, in the new room
		window.pushDemo.roomSwitch = { room, how: 'new connection', error: err.message };
		append(chat, `moved to ${room} on a new connection (${err.message})`, 'note');
		chatConn.close();
		presence.clear();
		chatConn = connectChat();
		window.pushDemo.chatConn = chatConn;
	}
});

$('chat-form').addEventListener('submit', (e) => {
	e.preventDefault();
	// sent now, or once the connection is back; resent after a break
	// with the same idempotency key, so it is published once
	chatConn
		.publish({ topic: topic(room), event: 'chat', data: `${$('chat-name').value}: ${$('chat-text').value}` })
		.catch((err) => append(chat, `not sent: ${err.message}`, 'alert'));
	$('chat-text').value = '';
});

// ---- Publish form -------------------------------------------------------
$('publish-form').addEventListener('submit', async (e) => {
	e.preventDefault();
	const body = new URLSearchParams(new FormData(e.target));
	if (!body.get('type')) body.delete('type');
	const res = await fetch('/publish', { method: 'POST', body });
	const text = await res.text();
	$('publish-result').textContent = res.ok ? `published as #${text}` : `error ${res.status}: ${text}`;
});
