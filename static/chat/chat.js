// The chat page: the Flask-SocketIO demo's actions on the wire protocol (PROTOCOL.md),
// a live latency chart, and a socket that comes back by itself without losing room
// messages. No library and no build step; user text only ever goes into textContent.
(function () {
  "use strict";

  const PING_EVERY_MS = 1000; // the demo pings once a second...
  const LATENCY_WINDOW = 30; // ...and averages the last 30 round trips
  const BACKOFF_FIRST_MS = 500; // first retry: quick, a restart often takes a second
  const BACKOFF_MAX_MS = 15000; // a server that comes back is found within 15 s
  const STALE_AFTER_MS = 10000; // a ping unanswered this long: the socket is dead, open or not
  const HISTORY_PAGE = 200; // the protocol's largest `limit`: fewest round trips to catch up
  const LOG_LIMIT = 500; // entries kept on screen; older ones scroll away for good
  const LOGIN_REQUIRED = 4401; // logged out (in this tab or another), or guests are off
  const RELOAD_KEY = "chat-reloaded-for-login"; // sessionStorage: reload once, never in a loop
  // Closes worth telling a person about; each is retried with the usual backoff.
  const CLOSE_REASONS = {
    1008: "The server closed the connection: too many messages too fast.",
    1009: "The server closed the connection: a message was too big.",
    1012: "The server lost touch with the other servers for a moment; reconnecting to catch up.",
    4408: "The connection fell too far behind; reconnecting to catch up.",
    4429: "Too many open connections for you: close another tab of this chat.",
  };

  const $ = (id) => document.getElementById(id);
  const config = JSON.parse($("chat-config").textContent);
  const url = `${location.protocol === "https:" ? "wss:" : "ws:"}//${location.host}/ws/chat/`;

  // What the tests (and a curious person in the console) can read.
  const client = (window.chatClient = {
    url, // the socket's address: wss: under https, same host as the page
    ready: false, // true while the socket is open
    state: "connecting", // connecting, connected, reconnecting, disconnected, login-required
    user: null,
    rooms: [], // the rooms this page is in, sorted by code point
    members: {}, // room -> connections in it, from `presence`
    latencies: [], // the last LATENCY_WINDOW round trips, in ms
    attempts: 0, // failed connection attempts since the socket was last open
    reconnects: 0, // times the socket came back after a drop
    recovered: 0, // room messages fetched with `history since` after a reconnect
  });

  let socket = null;
  let retryTimer = null;
  let pingTimer = null;
  let stoppedByUser = false;
  let everOpen = false;
  let nextRef = 1;
  let nextPingId = 1;
  let lastHeardAt = 0; // when the server last sent anything
  const requests = new Map(); // ref -> {type, room}: what each reply answers
  const pingsSent = new Map(); // ping id -> performance.now() when sent
  const rooms = new Set(); // the rooms to be in, kept across reconnects
  // room -> ids of the messages shown, kept after leaving, so that joining again shows as
  // history only what this page has not shown yet. Ids increase within a room, but with
  // several server processes two messages can arrive in the other order (each process
  // publishes its own after storing it): a late one is shown, never dropped, and a
  // catch-up asks for history from SINCE_MARGIN messages back, so it finds late ones too.
  const shownIds = new Map();
  const SHOWN_KEEP = 1000; // ids remembered per room
  const SINCE_MARGIN = 50; // how far back a catch-up looks, in messages shown
  const catchingUp = new Map(); // room -> messages held until its catch-up is complete
  const outbox = []; // what the person sent while the socket was down

  // --- text rules, as the server applies them (lengths in code points) -----------

  const codePoints = (text) => [...text].length;
  // Python's str.strip(): the server trims room names with it, not with JS's trim().
  const PY_SPACE = "[\\t\\n\\x0b\\x0c\\r\\x1c-\\x1f \\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000]";
  const PY_STRIP = new RegExp(`^${PY_SPACE}+|${PY_SPACE}+$`, "g");
  const roomName = (text) => text.replace(PY_STRIP, "");
  const BAD_ROOM_CHARS = /[\p{Cc}\p{Cs}]/u;

  function problemWith(name, value) {
    if (name === "data") {
      if (value.length === 0) return "Write a message first.";
      const length = codePoints(value);
      if (length > config.maxMessageChars)
        return `A message is at most ${config.maxMessageChars} characters (this one is ${length}).`;
    } else if (name === "room") {
      const room = roomName(value);
      if (room.length === 0) return "Give the room a name.";
      if (codePoints(room) > config.maxRoomChars)
        return `A room name is at most ${config.maxRoomChars} characters.`;
      if (BAD_ROOM_CHARS.test(room)) return "A room name cannot contain control characters.";
    }
    return "";
  }

  // --- the log ----------------------------------------------------------------

  const log = $("log");

  function show(kind, text, details = {}) {
    const stick = log.scrollTop + log.clientHeight >= log.scrollHeight - 8;
    const item = document.createElement("li");
    item.className = `entry kind-${kind}`;
    item.dataset.kind = kind;
    const meta = document.createElement("span");
    meta.className = "meta";
    const parts = [kind];
    for (const key of ["room", "sender", "code", "id"]) {
      if (details[key] === undefined || details[key] === null) continue;
      item.dataset[key] = String(details[key]);
      if (key === "room") parts.push(`in ${details.room}`);
      if (key === "sender" && kind !== "presence") parts.push(`from ${details.sender}`);
    }
    meta.textContent = parts.join(" · ");
    const body = document.createElement("span");
    body.className = "text";
    body.textContent = text; // user text is always text, never HTML
    item.append(meta, body);
    log.append(item);
    while (log.childElementCount > LOG_LIMIT) log.firstElementChild.remove();
    if (stick) log.scrollTop = log.scrollHeight;
  }

  function showMessage(message, label) {
    const text = label ? `${label}: ${message.data}` : `Received #${message.count}: ${message.data}`;
    show(message.kind, text, { room: message.room, sender: message.sender, id: message.id });
  }

  // --- rooms --------------------------------------------------------------------

  function setRooms(names) {
    rooms.clear();
    for (const name of names) rooms.add(name);
    for (const name of Object.keys(client.members)) if (!rooms.has(name)) delete client.members[name];
    renderRooms();
  }

  function renderRooms() {
    client.rooms = [...rooms].sort(byCodePoint);
    const list = $("rooms");
    const options = $("my-rooms");
    list.replaceChildren();
    options.replaceChildren();
    for (const name of client.rooms) {
      const item = document.createElement("li");
      item.dataset.room = name;
      const label = document.createElement("span");
      label.className = "room-name";
      label.textContent = name;
      const members = document.createElement("span");
      members.className = "members";
      const count = client.members[name];
      members.textContent = count === undefined ? "…" : `${count} connected`;
      item.append(label, members);
      list.append(item);
      const option = document.createElement("option");
      option.value = name;
      options.append(option);
    }
    $("no-rooms").hidden = client.rooms.length > 0;
  }

  function byCodePoint(a, b) {
    const left = [...a].map((c) => c.codePointAt(0));
    const right = [...b].map((c) => c.codePointAt(0));
    for (let i = 0; i < Math.min(left.length, right.length); i++) {
      if (left[i] !== right[i]) return left[i] - right[i];
    }
    return left.length - right.length;
  }

  // A room message is shown once, in id order: ids increase within a room.
  function deliver(message, label) {
    const room = message.room;
    if (room !== undefined && typeof message.id === "number") {
      const held = catchingUp.get(room);
      if (held) {
        held.push({ message, label });
        return;
      }
      if (wasShown(room, message.id)) return;
      markShown(room, message.id);
    }
    showMessage(message, label);
  }

  function wasShown(room, id) {
    const ids = shownIds.get(room);
    return ids !== undefined && ids.has(id);
  }

  function markShown(room, id) {
    let ids = shownIds.get(room);
    if (ids === undefined) shownIds.set(room, (ids = new Set()));
    ids.add(id);
    if (ids.size > 2 * SHOWN_KEEP) {
      shownIds.set(room, new Set([...ids].sort((a, b) => a - b).slice(-SHOWN_KEEP)));
    }
  }

  // The `since` of a catch-up: SINCE_MARGIN messages before the newest shown, so that a
  // message that arrived late, or never, before the drop is fetched (and shown once).
  function catchUpSince(room) {
    const ids = [...(shownIds.get(room) || [])].sort((a, b) => a - b);
    return ids.length > SINCE_MARGIN ? ids[ids.length - SINCE_MARGIN - 1] : 0;
  }

  function finishCatchUp(room) {
    const held = catchingUp.get(room) || [];
    catchingUp.delete(room);
    held.sort((a, b) => a.message.id - b.message.id);
    for (const { message, label } of held) deliver(message, label);
  }

  // --- sending ----------------------------------------------------------------

  function send(message) {
    if (!client.ready) return false;
    if (message.type !== "ping") {
      message.ref = nextRef++;
      requests.set(message.ref, { type: message.type, room: message.room, data: message.data });
    }
    socket.send(JSON.stringify(message));
    return true;
  }

  function request(message) {
    if (send(message)) return;
    outbox.push(message);
    show("system", `Not connected: your ${message.type.replace("_", " ")} will be sent when the connection is back.`);
  }

  // After a drop: be in the same rooms again and fetch what was said meanwhile.
  function rejoin(room) {
    catchingUp.set(room, []);
    send({ type: "join", room });
    send({ type: "history", room, since: catchUpSince(room), limit: HISTORY_PAGE });
  }

  // --- receiving ----------------------------------------------------------------

  const handlers = {
    message(message) {
      if (message.kind === "system" && message.user) {
        client.user = message.user;
        $("display-name").textContent = message.user;
      }
      deliver(message);
    },
    joined(message, asked) {
      const caughtUp = catchingUp.has(message.room);
      setRooms(message.rooms);
      const history = message.history || [];
      if (caughtUp) {
        for (const old of history) deliver(old, "Missed");
        return;
      }
      // Joining again after leaving shows only what this page has not shown yet.
      const unseen = history.filter((old) => !wasShown(message.room, old.id));
      const intro = unseen.length ? `; ${unseen.length} earlier message${unseen.length > 1 ? "s" : ""}:` : ".";
      show("system", `Joined room ${message.room}${intro}`, { room: message.room });
      for (const old of unseen) deliver(old, "History");
      if (asked) fillRoomInputs(message.room);
    },
    left(message) {
      setRooms(message.rooms);
      show("system", `Left room ${message.room}.`, { room: message.room });
    },
    presence(message) {
      if (rooms.has(message.room)) {
        client.members[message.room] = message.members;
        renderRooms();
      }
      const verb = message.event === "join" ? "joined" : "left";
      show("presence", `${message.user} ${verb} room ${message.room}; ${message.members} connected.`, {
        room: message.room,
        sender: message.user,
      });
    },
    room_closed(message) {
      rooms.delete(message.room);
      delete client.members[message.room];
      catchingUp.delete(message.room);
      renderRooms();
      show("system", `Room ${message.room} was closed by ${message.by}.`, { room: message.room });
    },
    history(message, asked) {
      if (!asked || !catchingUp.has(message.room)) return;
      for (const old of message.messages) {
        if (!wasShown(message.room, old.id)) client.recovered++;
        deliver(old, "Missed");
      }
      if (message.more && message.messages.length) {
        const newest = message.messages[message.messages.length - 1].id;
        send({ type: "history", room: message.room, since: newest, limit: HISTORY_PAGE });
      } else {
        finishCatchUp(message.room);
      }
    },
    pong(message) {
      const sentAt = pingsSent.get(message.id);
      if (sentAt === undefined) return;
      pingsSent.delete(message.id);
      client.latencies.push(performance.now() - sentAt);
      if (client.latencies.length > LATENCY_WINDOW) client.latencies.shift();
      drawLatency();
    },
    error(message, asked) {
      if (asked && asked.type === "join" && catchingUp.has(asked.room)) {
        // The room can no longer be joined: stop waiting for it.
        catchingUp.delete(asked.room);
        rooms.delete(asked.room);
        renderRooms();
      }
      const what = asked ? ` (${asked.type.replace("_", " ")}${asked.room ? ` ${asked.room}` : ""})` : "";
      show("error", `Error${what}: ${message.detail}`, { code: message.code, room: asked && asked.room });
    },
  };

  function receive(event) {
    lastHeardAt = Date.now();
    let message;
    try {
      message = JSON.parse(event.data);
    } catch {
      return;
    }
    const asked = message.ref === undefined ? undefined : requests.get(message.ref);
    if (asked) requests.delete(message.ref);
    const handler = Object.hasOwn(handlers, message.type) ? handlers[message.type] : null;
    if (handler) handler(message, asked);
  }

  // --- connection ---------------------------------------------------------------

  function setState(state, text) {
    client.state = state;
    const status = $("status");
    status.dataset.state = state;
    status.textContent = text || state;
    $("connect").hidden = state !== "disconnected";
  }

  function connect() {
    clearTimeout(retryTimer);
    stoppedByUser = false;
    if (socket && socket.readyState <= WebSocket.OPEN) {
      // An attempt still pending (the `online` event came first): one socket at a time.
      const pending = socket;
      socket = null;
      pending.close();
    }
    const opened = new WebSocket(url);
    socket = opened;
    opened.addEventListener("open", () => opened === socket && onOpen());
    opened.addEventListener("message", (event) => opened === socket && receive(event));
    opened.addEventListener("close", (event) => opened === socket && onClose(event));
  }

  function onOpen() {
    client.ready = true;
    client.attempts = 0;
    if (everOpen) client.reconnects++;
    everOpen = true;
    lastHeardAt = Date.now();
    setState("connected");
    send({ type: "echo", data: "I'm connected!" }); // as the demo does
    for (const room of rooms) rejoin(room);
    for (const message of outbox.splice(0)) send(message);
    pingTimer = setInterval(ping, PING_EVERY_MS);
  }

  function ping() {
    // Compared with the oldest unanswered ping, not with the clock alone: a background
    // tab's timers may fire only once a minute, while its socket is perfectly fine.
    const now = performance.now();
    const oldest = pingsSent.size ? Math.min(...pingsSent.values()) : now;
    if (now - oldest > STALE_AFTER_MS && Date.now() - lastHeardAt > STALE_AFTER_MS) {
      // Open on this side, gone on the other (a laptop that slept, a dead NAT entry).
      const stale = socket;
      socket = null;
      stale.close();
      onClose({ code: 1006 });
      return;
    }
    for (const [id, sentAt] of pingsSent) if (now - sentAt > STALE_AFTER_MS) pingsSent.delete(id);
    const id = nextPingId++;
    pingsSent.set(id, now);
    send({ type: "ping", id });
  }

  function onClose(event) {
    client.ready = false;
    clearInterval(pingTimer);
    pingsSent.clear();
    for (const asked of requests.values()) {
      // Sent, but the socket went before it was confirmed as stored: say so, rather than
      // send it again (and perhaps twice) or pretend it arrived.
      if (asked.type === "broadcast" || asked.type === "room_message") {
        show("error", `Not confirmed before the connection dropped: your ${asked.type.replace("_", " ")} "${asked.data}".`, {
          room: asked.room,
        });
      }
    }
    requests.clear();
    catchingUp.clear();
    client.members = {};
    renderRooms();
    if (event.code === LOGIN_REQUIRED) {
      loginRequired();
      return;
    }
    if (Object.hasOwn(CLOSE_REASONS, event.code)) show("error", CLOSE_REASONS[event.code]);
    if (stoppedByUser) {
      // Disconnect means leaving: the server has dropped this socket's rooms.
      setRooms([]);
      setState("disconnected");
      return;
    }
    if (client.attempts === 0 && everOpen) show("system", "Connection lost; reconnecting…");
    scheduleReconnect();
  }

  // The session is no longer who this page says (it logged out), or guests are off:
  // the server decides what this person sees now, so load the page again, once.
  function loginRequired() {
    const last = Number(sessionStorage.getItem(RELOAD_KEY) || 0);
    if (Date.now() - last > 30000) {
      sessionStorage.setItem(RELOAD_KEY, String(Date.now()));
      setState("login-required", "logged out; reloading…");
      location.reload();
      return;
    }
    setState("login-required", "log in to chat");
    show("system", "This chat needs you to log in: log in or sign up, then come back.");
  }

  function scheduleReconnect() {
    // Exponential backoff with jitter: after a restart, a crowd of pages must not
    // all knock at the same instant.
    const ceiling = Math.min(BACKOFF_MAX_MS, BACKOFF_FIRST_MS * 2 ** client.attempts);
    const delay = ceiling / 2 + Math.random() * (ceiling / 2);
    client.attempts++;
    setState("reconnecting", `reconnecting… (attempt ${client.attempts}, in ${(delay / 1000).toFixed(1)} s)`);
    retryTimer = setTimeout(connect, delay);
  }

  window.addEventListener("online", () => {
    if (client.state === "reconnecting") connect(); // no need to wait out the backoff
  });

  $("connect").addEventListener("click", () => {
    setState("connecting", "connecting…");
    connect();
  });

  // --- the forms ----------------------------------------------------------------

  function fillRoomInputs(room) {
    for (const input of document.querySelectorAll('input[name="room"]')) {
      if (input.id !== "join-room" && input.value === "") input.value = room;
    }
  }

  for (const input of document.querySelectorAll("form[data-type] input")) {
    input.addEventListener("input", () => input.setCustomValidity(""));
  }

  for (const form of document.querySelectorAll("form[data-type]")) {
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      const type = form.dataset.type;
      if (type === "disconnect") {
        stoppedByUser = true;
        clearTimeout(retryTimer);
        if (!send({ type })) setState("disconnected");
        return;
      }
      const message = { type };
      for (const input of form.querySelectorAll("input[name]")) {
        const problem = problemWith(input.name, input.value);
        input.setCustomValidity(problem);
        if (problem) {
          input.reportValidity();
          return;
        }
        message[input.name] = input.value;
      }
      request(message);
      const data = form.querySelector('input[name="data"]');
      if (data) data.value = ""; // ready for the next message; the room stays
      (data || form.querySelector("input")).focus();
    });
  }

  // --- the latency figure and chart ------------------------------------------------

  const CHART = { left: 40, right: 300, top: 5, bottom: 80 }; // as drawn in index.html

  function drawLatency() {
    const values = client.latencies;
    const average = values.reduce((sum, value) => sum + value, 0) / values.length;
    $("ping-pong").textContent = (Math.round(average * 10) / 10).toFixed(1);
    // A round scale that only grows in steps, so the line does not jump at every ping.
    const peak = Math.max(...values, 1);
    const scale = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000].find((s) => s >= peak) || peak;
    $("latency-max").textContent = String(scale);
    const step = (CHART.right - CHART.left) / (LATENCY_WINDOW - 1);
    const height = CHART.bottom - CHART.top;
    const points = values.map((value, i) => {
      const x = CHART.left + step * (i + LATENCY_WINDOW - values.length);
      const y = CHART.bottom - (Math.min(value, scale) / scale) * height;
      return `${x.toFixed(1)},${y.toFixed(1)}`;
    });
    $("latency-line").setAttribute("points", points.join(" "));
  }

  renderRooms();
  connect();
})();
