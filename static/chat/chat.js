// A minimal client for the chat protocol: one socket, one form per action, a log.
(function () {
  "use strict";
  const log = document.getElementById("log");
  const status = document.getElementById("status");
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const client = (window.chatClient = { ready: false, socket: null });

  function show(text) {
    const item = document.createElement("li");
    item.textContent = text; // user text is always text, never HTML
    log.prepend(item);
  }

  function describe(msg) {
    if (msg.type === "message") {
      const where = msg.room ? ` [${msg.room}]` : "";
      const who = msg.sender ? ` ${msg.sender}:` : "";
      return `Received #${msg.count} (${msg.kind})${where}${who} ${msg.data}`;
    }
    if (msg.type === "error") return `Error (${msg.code}): ${msg.detail}`;
    return `Received ${msg.type}: ${JSON.stringify(msg)}`;
  }

  const socket = new WebSocket(`${scheme}//${location.host}/ws/chat/`);
  client.socket = socket;
  socket.addEventListener("open", () => {
    client.ready = true;
    status.textContent = "connected";
    socket.send(JSON.stringify({ type: "echo", data: "I'm connected!" }));
  });
  socket.addEventListener("close", (event) => {
    client.ready = false;
    status.textContent = `disconnected (${event.code})`;
  });
  socket.addEventListener("message", (event) => show(describe(JSON.parse(event.data))));

  document.querySelectorAll("form[data-type]").forEach((form) => {
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      const message = { type: form.dataset.type };
      new FormData(form).forEach((value, key) => { message[key] = value; });
      socket.send(JSON.stringify(message));
    });
  });
})();
