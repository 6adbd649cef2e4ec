// The demo's browser code: plain EventSource and fetch, no framework.
'use strict';

const $ = (id) => document.getElementById(id);
const stateNames = ['CONNECTING', 'OPEN', 'CLOSED'];

// Keep a list short enough to read.
function append(list, text, kind) {
	const item = document.createElement('li');
	item.textContent = text;
	if (kind) item.className = kind;
	list.prepend(item);
	while (list.children.length > 50) list.lastChild.remove();
	return item;
}

// ---- Live feed over Server-Sent Events ----------------------------------
// The server pauses this stream now and then (event "pause", its data the
// time to come back at, in Unix ms): the page closes it and reconnects
// then, resuming with ?lastEventId= as a new EventSource has no
// Last-Event-ID of its own.
const feed = $('feed');
const feedURL = '/events/pausing';
let source = null;
let lastId = '';
let opened = false;
let pausedUntil = 0; // set while paused, until the next open
let reconnects = 0;
window.pushDemo = { source: null, received: [], resumedFrom: [], pauses: [] }; // for the browser tests

function showState(note) {
	const state = source.readyState + ' ' + stateNames[source.readyState];
	$('ready-state').textContent = note ? `${state}, ${note}` : state;
}

// HH:MM:SS, local time.
const clockTime = (ms) => new Date(ms).toTimeString().slice(0, 8);

// Every event the page handles, and which handler got it.
function record(e, via) {
	lastId = e.lastEventId;
	$('last-id').textContent = lastId || '–';
	window.pushDemo.received.push({ id: e.lastEventId, type: e.type, data: e.data, via });
}

function connectFeed() {
	const url = new URL(feedURL, location.href);
	if (lastId) url.searchParams.set('lastEventId', lastId);
	source = new EventSource(url);
	window.pushDemo.source = source;
	showState();

	source.onopen = () => {
		if (pausedUntil) {
			reconnects++;
			window.pushDemo.resumedFrom.push(lastId);
			append(feed, `resumed after the pause, from id ${lastId || 'given at connect'}`, 'note');
		} else if (opened) {
			reconnects++;
			window.pushDemo.resumedFrom.push(lastId);
			append(feed, `reconnected, resuming after id ${lastId || 'given at connect'}`, 'note');
		} else {
			append(feed, 'connected', 'note');
		}
		$('reconnects').textContent = reconnects;
		opened = true;
		pausedUntil = 0;
		showState();
	};

	source.onerror = () => {
		showState(); // CONNECTING while the browser retries, CLOSED if it gave up
		append(feed, 'stream ended, the browser reconnects by itself', 'note');
	};

	// Events without a type arrive here.
	source.onmessage = (e) => {
		record(e, 'onmessage');
		append(feed, `#${e.lastEventId} message: ${e.data}`);
	};

	// Custom event types have their own listeners and never reach onmessage.
	source.addEventListener('like', (e) => {
		record(e, 'like');
		append(feed, `#${e.lastEventId} like: ${e.data}`, 'like');
	});
	source.addEventListener('alert', (e) => {
		record(e, 'alert');
		append(feed, `#${e.lastEventId} alert: ${e.data}`, 'alert');
	});
	source.addEventListener('tick', (e) => {
		lastId = e.lastEventId;
		$('last-id').textContent = lastId;
		$('clock').textContent = e.data;
	});
	// The server could not fill a gap (history too short, server restarted):
	// an app would refetch its state here.
	source.addEventListener('push.reset', (e) => {
		record(e, 'push.reset');
		append(feed, `reset: ${e.data}`, 'alert');
	});
	// The pause carries no id, so e.lastEventId is the stream's last one.
	source.addEventListener('pause', (e) => {
		lastId = e.lastEventId || lastId;
		pausedUntil = +e.data;
		source.close();
		window.pushDemo.pauses.push({ id: e.lastEventId, until: pausedUntil, at: Date.now() });
		showState(`paused until ${clockTime(pausedUntil)}`);
		append(feed, `paused by the server until ${clockTime(pausedUntil)}`, 'note');
		setTimeout(connectFeed, pausedUntil - Date.now());
	});
}
connectFeed();

// ---- Chat over WebSocket ------------------------------------------------
const chat = $('chat');
let chatSocket = null;
let chatLastId = '';
const unsent = []; // typed while reconnecting; sent once open
window.pushDemo.chat = []; // for the browser tests
window.pushDemo.chatOpens = 0;
// who is online: connection id → user, from the snapshot each connection
// gets first (push.presence), then push.join and push.leave
const online = new Map();
window.pushDemo.online = online;
function showOnline() {
	const names = [...online].map(([id, user]) => user || id.slice(0, 6));
	$('chat-online').textContent = `${online.size}: ${names.join(', ')}`;
}

function connectChat() {
	const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
	const resume = chatLastId ? `&lastEventId=${encodeURIComponent(chatLastId)}` : '';
	const ws = new WebSocket(`${proto}//${location.host}/chat?room=lobby${resume}`);
	chatSocket = ws;
	$('chat-state').textContent = 'connecting';
	ws.onopen = () => {
		$('chat-state').textContent = 'open';
		window.pushDemo.chatOpens++;
		while (unsent.length) ws.send(unsent.shift());
	};
	ws.onmessage = (e) => {
		// json format: {"id","topic","event","data"}
		const msg = JSON.parse(e.data);
		if (msg.error) {
			append(chat, `error: ${msg.error}`, 'alert');
			return;
		}
		if (msg.id) chatLastId = msg.id;
		window.pushDemo.chat.push(msg);
		if (msg.event === 'push.presence') {
			// a fresh list on every (re)connect
			online.clear();
			for (const m of JSON.parse(msg.data).members ?? []) online.set(m.connection, m.user);
			showOnline();
		} else if (msg.event === 'push.join' || msg.event === 'push.leave') {
			const who = JSON.parse(msg.data);
			const verb = msg.event === 'push.join' ? 'joined' : 'left';
			if (msg.event === 'push.join') online.set(who.connection, who.user);
			else online.delete(who.connection);
			showOnline();
			append(chat, `someone (${who.connection.slice(0, 6)}) ${verb}`, 'note');
		} else if (msg.event === 'push.reset') {
			append(chat, `missed messages: ${msg.data}`, 'alert');
		} else {
			append(chat, msg.data);
		}
	};
	// 1001: the server reloads or stops; reconnect and resume either way
	ws.onclose = (e) => {
		$('chat-state').textContent = `closed (${e.code}), reconnecting`;
		setTimeout(connectChat, 250 + Math.random() * 750);
	};
}
connectChat();

$('chat-form').addEventListener('submit', (e) => {
	e.preventDefault();
	const text = $('chat-text').value;
	// with one publish topic, plain text would do; the envelope names an event type
	const frame = JSON.stringify({ event: 'chat', data: `${$('chat-name').value}: ${text}` });
	if (chatSocket.readyState === WebSocket.OPEN) chatSocket.send(frame);
	else unsent.push(frame);
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
