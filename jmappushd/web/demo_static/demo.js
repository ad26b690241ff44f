// The jmappushd demo page: plain JavaScript, no build step, no other site.
//
// Log in with a password (POST login → a short-lived bearer token), read the session,
// then watch StateChanges over EventSource and WebSocket side by side. A browser's
// EventSource and WebSocket cannot send an Authorization header, so both pass the token
// as the access_token query parameter. The last EventSource id and the last WebSocket
// pushState are kept in sessionStorage: after a reload both resume from there (the
// lastEventId query parameter; pushState in WebSocketPushEnable), so a change made
// while the page was away arrives at once.
"use strict";

const KEY = "jmappushd-demo:";
const store = {
  get: (name) => sessionStorage.getItem(KEY + name),
  set: (name, value) => sessionStorage.setItem(KEY + name, value),
  clear: () => {
    for (const name of ["token", "username", "es-last", "ws-last"]) {
      sessionStorage.removeItem(KEY + name);
    }
  },
};
const $ = (id) => document.getElementById(id);
let eventSource = null;
let socket = null;
let reconnectTimer = null;

function base64Utf8(text) {
  const bytes = new TextEncoder().encode(text);
  let binary = "";
  for (const b of bytes) binary += String.fromCharCode(b);
  return btoa(binary);
}

function setStatus(id, text, isError) {
  const el = $(id);
  el.textContent = text;
  el.classList.toggle("error", Boolean(isError));
}

function setBadge(id, text, kind) {
  const el = $(id);
  el.textContent = text;
  el.className = "badge " + (kind || "");
}

function logLine(listId, text, kind) {
  const li = document.createElement("li");
  li.textContent = new Date().toLocaleTimeString() + "  " + text;
  if (kind) li.className = kind;
  const list = $(listId);
  list.prepend(li);
  while (list.children.length > 200) list.lastChild.remove();
}

async function problemText(response) {
  try {
    const body = await response.json();
    return body.detail || body.title || response.statusText;
  } catch (e) {
    return response.status + " " + response.statusText;
  }
}

function expand(template, values) {
  // RFC 6570 level 1, which is what eventSourceUrl uses (SES-10).
  return template.replace(/\{([A-Za-z0-9_]+)\}/g,
    (_, name) => encodeURIComponent(values[name] ?? ""));
}

function withQuery(url, params) {
  const parsed = new URL(url, location.href);
  for (const [name, value] of Object.entries(params)) {
    if (value !== null && value !== undefined) parsed.searchParams.set(name, value);
  }
  return parsed.toString();
}

async function login(event) {
  event.preventDefault();
  const username = $("username").value;
  setStatus("login-status", "logging in…");
  const response = await fetch("login", {
    method: "POST",
    headers: {
      Authorization: "Basic " + base64Utf8(username + ":" + $("password").value),
      "Content-Type": "application/json",
    },
    body: "{}",
  });
  if (!response.ok) {
    setStatus("login-status", "login failed: " + (await problemText(response)), true);
    return;
  }
  const body = await response.json();
  store.clear();
  store.set("token", body.accessToken);
  store.set("username", body.username);
  setStatus("login-status", "");
  await start();
}

async function start() {
  const token = store.get("token");
  if (!token) return showLogin("");
  const response = await fetch("../jmap/session", {
    headers: { Authorization: "Bearer " + token },
  });
  if (!response.ok) {
    store.clear();
    return showLogin("your demo login expired; log in again");
  }
  const session = await response.json();
  $("session").textContent = JSON.stringify(session, null, 2);
  $("who").textContent = session.username;
  $("login-section").hidden = true;
  $("demo-section").hidden = false;
  const origin = new URL(session.apiUrl, location.href).origin;
  if (origin !== location.origin) {
    logLine("es-log", "the session's URLs are on " + origin + ": open this page there " +
      "(or list " + location.origin + " in [server] cors-origins)", "info");
  }
  openEventSource(session, token);
  openWebSocket(session, token);
}

function openEventSource(session, token) {
  const last = store.get("es-last");
  $("es-last").textContent = last || "(nothing yet)";
  const url = withQuery(expand(session.eventSourceUrl,
    { types: "*", closeafter: "no", ping: "30" }), { access_token: token, lastEventId: last });
  eventSource = new EventSource(url);
  eventSource.onopen = () => {
    setBadge("es-state", "open", "open");
    const resumeFrom = store.get("es-last");
    logLine("es-log", resumeFrom ? "connected, resuming from " + resumeFrom : "connected",
      resumeFrom ? "resumed" : "info");
  };
  eventSource.addEventListener("state", (event) => {
    const change = JSON.parse(event.data);
    logLine("es-log", JSON.stringify(change.changed) + "  id " + event.lastEventId);
    store.set("es-last", event.lastEventId);
    $("es-last").textContent = event.lastEventId;
  });
  eventSource.addEventListener("ping", (event) => {
    setBadge("es-state", "open (ping " + JSON.parse(event.data).interval + " s)", "open");
  });
  eventSource.onerror = () => {
    const closed = eventSource.readyState === EventSource.CLOSED;
    setBadge("es-state", closed ? "closed" : "reconnecting", "closed");
  };
}

function openWebSocket(session, token) {
  const capability = session.capabilities["urn:ietf:params:jmap:websocket"];
  if (!capability) {
    setBadge("ws-state", "not offered", "closed");
    return;
  }
  const last = store.get("ws-last");
  $("ws-last").textContent = last || "(nothing yet)";
  socket = new WebSocket(withQuery(capability.url, { access_token: token }), "jmap");
  socket.onopen = () => {
    setBadge("ws-state", "open", "open");
    const resumeFrom = store.get("ws-last");
    const enable = { "@type": "WebSocketPushEnable", dataTypes: null };
    if (resumeFrom) enable.pushState = resumeFrom;
    socket.send(JSON.stringify(enable));
    logLine("ws-log", resumeFrom ? "connected, resuming from " + resumeFrom : "connected",
      resumeFrom ? "resumed" : "info");
  };
  socket.onmessage = (event) => {
    const message = JSON.parse(event.data);
    if (message["@type"] !== "StateChange") {
      logLine("ws-log", event.data, "info");
      return;
    }
    logLine("ws-log", JSON.stringify(message.changed) + "  pushState " + message.pushState);
    if (message.pushState) {
      store.set("ws-last", message.pushState);
      $("ws-last").textContent = message.pushState;
    }
  };
  socket.onclose = (event) => {
    setBadge("ws-state", "closed (" + event.code + ")", "closed");
    socket = null;
    // 1000: we closed it; 1008: the token is no longer valid. Otherwise try again.
    if (store.get("token") && event.code !== 1000 && event.code !== 1008) {
      reconnectTimer = setTimeout(() => openWebSocket(session, store.get("token")), 3000);
    }
  };
}

async function publish() {
  const type = $("type").value;
  setStatus("publish-status", "publishing…");
  const response = await fetch("publish", {
    method: "POST",
    headers: { Authorization: "Bearer " + store.get("token"), "Content-Type": "application/json" },
    body: JSON.stringify({ type }),
  });
  if (!response.ok) {
    setStatus("publish-status", "refused: " + (await problemText(response)), true);
    return;
  }
  const body = await response.json();
  setStatus("publish-status", "published " + body.type + " = " + body.state +
    " in account " + body.accountId);
}

function stopStreams() {
  if (eventSource) eventSource.close();
  eventSource = null;
  clearTimeout(reconnectTimer);
  if (socket) socket.close(1000);
  socket = null;
}

function showLogin(message) {
  stopStreams();
  $("demo-section").hidden = true;
  $("login-section").hidden = false;
  setStatus("login-status", message, Boolean(message));
}

function logout() {
  store.clear();
  for (const id of ["es-log", "ws-log"]) $(id).replaceChildren();
  showLogin("");
}

$("login-form").addEventListener("submit", (event) => {
  login(event).catch((error) => setStatus("login-status", String(error), true));
});
$("publish").addEventListener("click", () => {
  publish().catch((error) => setStatus("publish-status", String(error), true));
});
$("logout").addEventListener("click", logout);
start().catch((error) => setStatus("login-status", String(error), true));
