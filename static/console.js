// The live console: one WebSocket, a model of the buffered requests, and a DOM built from it.
// Everything that comes from a request is put on the page as text (textContent), never as HTML.
"use strict";

(function () {
  const body = document.body;
  const WS_PATH = body.dataset.wsPath || "/console/ws";
  const CLEARED_KEY = "iss-llm-console-cleared-at";
  const FOLD_SYSTEM = 160;
  const FOLD_OTHER = 900;
  const HELD_MAX = 5000;
  const SAME_TURN_GRACE_S = 1.5;
  // The server's one table of event types: type name -> role (request, iss, text, outcome, station).
  const ROLE_OF = JSON.parse(body.dataset.eventTypes || "{}");

  const $ = (id) => document.getElementById(id);
  const feed = $("feed");
  const empty = $("empty");
  const filterSelect = $("filter");
  const pauseButton = $("pause");

  const model = {
    requests: new Map(), // id -> record
    convs: new Map(), // conversation key -> {key, section, turnsEl, lastRec, count, ...}
    clearedAt: Number(sessionStorage.getItem(CLEARED_KEY) || 0),
    filter: "",
    paused: false,
    held: [],
    heldOverflow: false,
    stats: { frames: 0, events: 0, dropped: 0, resyncs: 0, lastAt: 0, connectedAt: 0 },
  };

  const map = new window.IssMap($("map"), body.dataset.landUrl);
  let lastIssState = null;

  // ---- small DOM helpers (text only) -------------------------------------------------------

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function kv(dl, key, value) {
    if (value === undefined || value === null || value === "") return;
    dl.appendChild(el("dt", null, key));
    dl.appendChild(el("dd", null, value));
  }

  function clock(t) {
    if (!t) return "";
    const d = new Date(t * 1000);
    const pad = (n, w) => String(n).padStart(w || 2, "0");
    return pad(d.getHours()) + ":" + pad(d.getMinutes()) + ":" + pad(d.getSeconds()) + "." + pad(d.getMilliseconds(), 3);
  }

  function ms(value) {
    if (value === undefined || value === null) return "–";
    return value >= 1000 ? (value / 1000).toFixed(2) + " s" : Math.round(value) + " ms";
  }

  function textOf(content) {
    if (typeof content === "string") return content;
    if (Array.isArray(content)) {
      return content
        .map((part) => (part && part.type === "text" ? part.text : "[" + ((part && part.type) || "part") + "]"))
        .join("\n");
    }
    if (content === null || content === undefined) return "";
    return JSON.stringify(content);
  }

  function lastUserText(rec) {
    const messages = Array.isArray(rec.messages) ? rec.messages : [];
    for (let i = messages.length - 1; i >= 0; i--) {
      if (messages[i] && messages[i].role === "user") return textOf(messages[i].content);
    }
    return "";
  }

  function oneLine(text, max) {
    const flat = String(text).replace(/\s+/g, " ").trim();
    return flat.length > max ? flat.slice(0, max - 1) + "…" : flat;
  }

  // ---- curl replay -------------------------------------------------------------------------

  function shellQuote(value) {
    return "'" + String(value).replace(/'/g, "'\\''") + "'";
  }

  function curlFor(rec) {
    const payload = Object.assign({ messages: rec.messages }, rec.params || {});
    // Replay what the caller asked for; the server resolves the model again (LLM_MODEL, default).
    const requested = "requested_model" in rec ? rec.requested_model : rec.model;
    if (requested) payload.model = requested;
    if (rec.stream !== undefined) payload.stream = rec.stream;
    const url = location.origin + (rec.path || "/chat/completions");
    const lines = [
      "curl -sN " + shellQuote(url) + " \\",
      '  -H "Authorization: Bearer $SERVER_API_KEY" \\',
      "  -H 'Content-Type: application/json' \\",
    ];
    if (rec.conversation_id) lines.push("  -H " + shellQuote("conversation-id: " + rec.conversation_id) + " \\");
    // Compact JSON is one line (newlines inside strings are escaped), so it can never end the heredoc.
    lines.push("  --data-binary @- <<'ISS_LLM_REQUEST'", JSON.stringify(payload), "ISS_LLM_REQUEST");
    return lines.join("\n");
  }

  function showCurl(rec) {
    const text = curlFor(rec);
    const dialog = $("curl-dialog");
    $("curl-text").value = text;
    const done = () => toast("curl command copied (uses $SERVER_API_KEY from your shell)");
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(text).then(done, () => dialog.showModal());
    } else {
      dialog.showModal();
    }
  }

  $("curl-copy").addEventListener("click", () => {
    const area = $("curl-text");
    area.select();
    const ok = navigator.clipboard && window.isSecureContext
      ? navigator.clipboard.writeText(area.value).then(() => true, () => false)
      : Promise.resolve(document.execCommand && document.execCommand("copy"));
    ok.then((copied) => copied && toast("copied"));
  });
  $("curl-close").addEventListener("click", () => $("curl-dialog").close());

  let toastTimer = null;
  function toast(text) {
    let node = $("toast");
    if (!node) {
      node = el("div", "toast");
      node.id = "toast";
      document.body.appendChild(node);
    }
    node.textContent = text;
    node.classList.add("show");
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => node.classList.remove("show"), 2200);
  }

  // ---- notices -----------------------------------------------------------------------------

  function notice(text, actionLabel, action) {
    $("notice-text").textContent = text;
    const button = $("notice-action");
    button.hidden = !action;
    button.textContent = actionLabel || "";
    button.onclick = action
      ? () => {
          $("notice").hidden = true;
          action();
        }
      : null;
    $("notice").hidden = false;
  }

  function unclear() {
    model.clearedAt = 0;
    sessionStorage.removeItem(CLEARED_KEY);
    if (socket && socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify({ op: "resync" }));
  }
  $("notice-close").addEventListener("click", () => {
    $("notice").hidden = true;
  });

  // ---- conversations and turns -------------------------------------------------------------

  function convKey(rec) {
    return rec.conversation_id ? "c:" + rec.conversation_id : "ip:" + (rec.remote_ip || "?");
  }

  function convFor(rec) {
    const key = convKey(rec);
    let conv = model.convs.get(key);
    if (conv) return conv;
    const section = el("section", "conv");
    section.dataset.key = key;
    const head = el("header", "conv-head");
    const title = el("h2", "conv-title");
    if (rec.conversation_id) {
      title.appendChild(el("span", "muted", "conversation "));
      title.appendChild(el("code", "conv-id", rec.conversation_id));
    } else {
      title.appendChild(el("span", "muted", "no conversation-id · caller "));
      title.appendChild(el("code", "conv-id", rec.remote_ip || "?"));
    }
    const meta = el("span", "conv-meta muted");
    const only = el("button", "link", "only this");
    only.type = "button";
    only.addEventListener("click", () => setFilter(model.filter === key ? "" : key));
    head.append(title, meta, only);
    const turnsEl = el("div", "turns");
    section.append(head, turnsEl);
    conv = { key: key, section: section, turnsEl: turnsEl, meta: meta, only: only, lastRec: null, count: 0, turns: 0, lastT: 0, ips: new Set() };
    model.convs.set(key, conv);
    const option = el("option", null, rec.conversation_id || "no id · " + (rec.remote_ip || "?"));
    option.value = key;
    filterSelect.appendChild(option);
    applyFilter(conv);
    return conv;
  }

  function updateConvMeta(conv) {
    const ips = Array.from(conv.ips).join(", ");
    conv.meta.textContent =
      conv.turns + (conv.turns === 1 ? " turn · " : " turns · ") + conv.count + (conv.count === 1 ? " request" : " requests") +
      (ips ? " · from " + ips : "") + " · last " + clock(conv.lastT);
  }

  // A request joins the open turn when it overlaps the previous one (speculative inference).
  function sameTurn(prev, rec) {
    if (!prev) return false;
    if (prev.status === "streaming") return true;
    const end = prev.endT || prev.t;
    if (end > rec.t) return true;
    return (prev.status === "cancelled" || prev.status === "superseded") && rec.t - end <= SAME_TURN_GRACE_S;
  }

  function newTurn(conv) {
    const turn = el("article", "turn");
    const head = el("div", "turn-head muted");
    const list = el("div", "turn-reqs");
    turn.append(head, list);
    conv.turnsEl.prepend(turn);
    conv.turns += 1;
    return { el: turn, head: head, list: list, recs: [] };
  }

  function updateTurnHead(turn) {
    const n = turn.recs.length;
    const cancelled = turn.recs.filter((r) => r.status === "cancelled").length;
    const superseded = turn.recs.filter((r) => r.status === "superseded").length;
    turn.head.textContent =
      "turn at " + clock(turn.recs[0].t) + (n > 1 ? " · speculative burst of " + n + " requests" +
      (cancelled ? ", " + cancelled + " abandoned" : "") + (superseded ? ", " + superseded + " superseded" : "") : "");
    turn.el.classList.toggle("burst", n > 1);
  }

  // ---- one request card --------------------------------------------------------------------

  function placeRequest(rec) {
    const conv = convFor(rec);
    let turn = conv.lastRec && sameTurn(conv.lastRec, rec) ? conv.lastRec.turn : null;
    if (!turn) turn = newTurn(conv);
    for (const other of turn.recs) other.ui.card.open = false; // the newest attempt is the one to read
    turn.recs.push(rec);
    rec.turn = turn;
    conv.lastRec = rec;
    conv.count += 1;
    conv.lastT = Math.max(conv.lastT, rec.t || 0);
    if (rec.remote_ip) conv.ips.add(rec.remote_ip);
    buildCard(rec);
    turn.list.appendChild(rec.ui.card);
    updateTurnHead(turn);
    updateConvMeta(conv);
    if (feed.firstElementChild !== conv.section) feed.insertBefore(conv.section, feed.firstElementChild);
    empty.hidden = true;
  }

  function buildCard(rec) {
    const card = el("details", "req");
    card.open = true;
    card.dataset.id = rec.id;
    const sum = el("summary", "req-sum");
    const badge = el("span", "badge");
    const time = el("span", "time", clock(rec.t));
    const said = el("span", "said", "");
    const right = el("span", "sum-right muted");
    sum.append(badge, time, said, right);

    const meta = el("div", "req-meta");
    const dl = el("dl", "kv kv-inline");
    kv(dl, "request", rec.request_id || rec.id);
    kv(dl, "arrived", new Date((rec.t || 0) * 1000).toLocaleString());
    kv(dl, "caller", rec.remote_ip);
    kv(dl, "key", rec.key_name);  // the name of the caller's server key (never the key)
    kv(dl, "worker", rec.worker);
    kv(dl, "path", rec.path);
    kv(dl, "model", rec.model);
    kv(dl, "stream", rec.stream === undefined ? "" : String(rec.stream));
    const up = rec.upstream || {};
    kv(dl, "upstream", [up.backend || up.name, up.host, up.model].filter(Boolean).join(" · "));
    meta.appendChild(dl);
    const params = el("div", "params");
    for (const [key, value] of Object.entries(rec.params || {})) {
      const chip = el("span", "chip");
      chip.append(el("b", null, key), el("span", null, " " + (typeof value === "string" ? value : JSON.stringify(value))));
      params.appendChild(chip);
    }
    if (!params.childElementCount) params.appendChild(el("span", "muted small", "no extra parameters"));
    const actions = el("div", "actions");
    const curl = el("button", null, "Copy as curl");
    curl.type = "button";
    curl.addEventListener("click", () => showCurl(rec));
    actions.appendChild(curl);
    meta.append(params, actions);

    const messages = el("details", "messages");
    const list = Array.isArray(rec.messages) ? rec.messages : [];
    const systems = list.filter((m) => m && m.role === "system").length;
    messages.open = true;
    messages.appendChild(el("summary", "section-title", list.length + " incoming messages" + (systems ? " (" + systems + " system)" : "")));
    for (const message of list) messages.appendChild(messageRow(message));

    const iss = el("div", "iss-block");
    const output = el("section", "output-wrap");
    output.appendChild(el("div", "section-title", "response"));
    const out = el("pre", "output");
    output.appendChild(out);
    const outcome = el("div", "outcome");

    const inner = el("div", "req-body");
    inner.append(meta, messages, iss, output, outcome);
    card.append(sum, inner);
    rec.ui = { card: card, badge: badge, said: said, right: right, iss: iss, out: out, outcome: outcome };
    said.textContent = "“" + oneLine(lastUserText(rec), 120) + "”";
    replayAnswer(rec);
    renderIss(rec);
    renderStatus(rec);
  }

  function messageRow(message) {
    const role = (message && message.role) || "?";
    const row = el("div", "msg role-" + String(role).replace(/[^a-z_]/gi, ""));
    row.appendChild(el("span", "role", role + (message && message.name ? " · " + message.name : "")));
    let text = textOf(message && message.content);
    if (message && message.tool_calls) text += (text ? "\n" : "") + "tool_calls: " + JSON.stringify(message.tool_calls);
    if (message && message.tool_call_id) text = "(tool_call_id " + message.tool_call_id + ") " + text;
    const limit = role === "system" ? FOLD_SYSTEM : FOLD_OTHER;
    if (text.length > limit || (role === "system" && text.split("\n").length > 2)) {
      const fold = el("details", "fold");
      const summary = el("summary");
      summary.append(el("span", "preview", oneLine(text, 110)), el("span", "size", text.length + " chars"));
      fold.appendChild(summary);
      fold.appendChild(el("div", "content", text));
      row.appendChild(fold);
    } else {
      row.appendChild(el("div", "content", text));
    }
    return row;
  }

  function renderIss(rec) {
    const box = rec.ui && rec.ui.iss;
    if (!box) return;
    box.replaceChildren();
    if (!rec.iss) {
      box.hidden = true;
      return;
    }
    box.hidden = false;
    box.appendChild(el("div", "section-title", "ISS context added by this server"));
    box.appendChild(el("div", "content", rec.iss.block || ""));
    const s = rec.iss.state;
    const facts = s
      ? [s.source && "source " + s.source, s.measured_at && "measured at " + s.measured_at, s.rough ? "rough estimate" : null]
      : ["no position was available"];
    box.appendChild(el("div", "muted small", facts.filter(Boolean).join(" · ")));
  }

  function renderStatus(rec) {
    const ui = rec.ui;
    if (!ui) return;
    const status = rec.status || "streaming";
    ui.card.dataset.status = status;
    ui.badge.className = "badge badge-" + status;
    ui.badge.textContent = status;
    ui.out.classList.toggle("streaming", status === "streaming");
    ui.outcome.replaceChildren();
    const o = rec.outcome || {};
    const dl = el("dl", "kv kv-inline");
    if (status === "done") {
      const usage = o.usage || {};
      ui.right.textContent =
        "TTFT " + ms(o.ttft_ms) + " · " + ms(o.total_ms) + (o.tokens_per_second ? " · " + o.tokens_per_second + " tok/s" : "");
      kv(dl, "finish", o.finish_reason || "–");
      kv(dl, "TTFT", ms(o.ttft_ms));
      kv(dl, "total", ms(o.total_ms));
      kv(dl, "tokens/s", o.tokens_per_second === null || o.tokens_per_second === undefined ? "–" : o.tokens_per_second);
      kv(dl, "chunks", o.chunks);
      for (const call of o.tool_calls || []) kv(dl, "tool call", call.name + "(" + call.arguments + ")");
      if (o.usage) kv(dl, "usage", "prompt " + (usage.prompt_tokens ?? "?") + " · completion " + (usage.completion_tokens ?? "?") + " · total " + (usage.total_tokens ?? "?"));
      else kv(dl, "usage", "not reported");
    } else if (status === "cancelled") {
      ui.right.textContent = "abandoned at " + ms(o.at_ms) + " · " + (o.chunks || 0) + " chunks";
      kv(dl, "cancelled", "the caller went away at " + ms(o.at_ms) + " (" + clock(o.t) + ")");
      kv(dl, "chunks sent", o.chunks || 0);
    } else if (status === "superseded") {
      ui.right.textContent = "superseded at " + ms(o.at_ms) + " · " + (o.chunks || 0) + " chunks";
      kv(dl, "superseded", "a newer request of this conversation replaced it at " + ms(o.at_ms) + " (" + clock(o.t) + ")");
      kv(dl, "chunks sent", o.chunks || 0);
    } else if (status === "error") {
      ui.right.textContent = "error " + (o.status || "") + " · " + (o.where || "");
      kv(dl, "error", (o.status || "") + (o.code ? " " + o.code : ""));
      kv(dl, "where", o.where);
      kv(dl, "when", ms(o.at_ms));
      kv(dl, "message", o.message);
    } else if (status !== "streaming") {
      // An outcome this page has no special view for (a new row in the server's table).
      ui.right.textContent = status + (o.at_ms !== undefined ? " at " + ms(o.at_ms) : "");
      for (const [key, value] of Object.entries(o)) {
        if (key !== "t") kv(dl, key, typeof value === "string" ? value : JSON.stringify(value));
      }
    } else {
      ui.right.textContent = "streaming…";
    }
    if (dl.childElementCount) ui.outcome.appendChild(dl);
    ui.outcome.className = "outcome outcome-" + status;
    if (rec.text_truncated) ui.outcome.appendChild(el("div", "muted small", "text truncated in the server's buffer"));
    if (rec.turn) updateTurnHead(rec.turn);
  }

  // ---- applying events ---------------------------------------------------------------------

  function visible(rec) {
    return !(model.clearedAt && rec.t && rec.t <= model.clearedAt);
  }

  // The page keeps about twice the server's buffer, so a console left open for days stays light.
  const KEEP = 2 * (Number(body.dataset.buffer) || 100);
  const MAX_TEXT = 64 * 1024; // the server keeps no more of one answer either
  const MAX_TOOLS = 20; // nor more of its tool calls
  // The event type the table gives to pieces of the answer's text.
  const TEXT_TYPE = Object.keys(ROLE_OF).find((type) => ROLE_OF[type] === "text");

  function forgetOldest() {
    while (model.requests.size > KEEP) {
      const [id, old] = model.requests.entries().next().value;
      model.requests.delete(id);
      const turn = old.turn;
      if (old.ui) old.ui.card.remove();
      if (!turn) continue;
      turn.recs = turn.recs.filter((r) => r !== old);
      if (turn.recs.length) updateTurnHead(turn);
      else turn.el.remove();
      old.turn = null;
    }
  }

  function addRecord(rec) {
    if (!rec || !rec.id || model.requests.has(rec.id)) return;
    model.requests.set(rec.id, rec);
    forgetOldest();
    if (rec.iss && rec.iss.state) map.observe(rec.iss.state);
    if (!visible(rec) || !Array.isArray(rec.messages)) return;
    placeRequest(rec);
  }

  function apply(event) {
    model.stats.events += 1;
    const rec = model.requests.get(event.id);
    switch (ROLE_OF[event.type]) {
      case "request": {
        if (rec && rec.ui) return;
        const fresh = Object.assign(rec || {}, event, { status: (rec && rec.status) || "streaming", text: (rec && rec.text) || "" });
        delete fresh.type;
        if (rec) model.requests.delete(event.id);
        addRecord(fresh);
        break;
      }
      case "iss": {
        const target = rec || { id: event.id, t: event.t, status: "streaming", text: "" };
        target.iss = { block: event.block, state: event.state, t: event.t };
        if (!rec) model.requests.set(event.id, target);
        if (event.state) showIss(event.state, "injected into a request");
        renderIss(target);
        break;
      }
      case "text":
      case "tool":
        if (rec) addToAnswer(rec, event);
        break;
      case "outcome":
        if (!rec) return;
        rec.status = event.type;
        rec.outcome = event;
        rec.endT = event.t;
        renderStatus(rec);
        break;
      case "station":
        showIss(event.state, "pushed by the server");
        break;
      case "feed":
        showFeed(event.state === "connected" ? "cluster" : "cluster-down", event.reason);
        break;
      default:
        break;
    }
  }

  // The answer's events (text, and the layer's own tool calls) go through here whether they arrive
  // live or come back in a replayed record: one way to keep them and one way to draw them.
  function addToAnswer(rec, event) {
    const role = ROLE_OF[event.type];
    if (role === "text") {
      const have = (rec.text || "").length;
      const piece = String(event.text || "").slice(0, Math.max(0, MAX_TEXT - have));
      if (piece.length < String(event.text || "").length) rec.text_truncated = true;
      if (!piece) return;
      rec.text = (rec.text || "") + piece;
      if (rec.ui) rec.ui.out.appendChild(document.createTextNode(piece));
    } else if (role === "tool") {
      // One of the layer's own tools, run for the model: never part of the caller's answer.
      if ((rec.tools || []).length >= MAX_TOOLS) return; // the server keeps no more either
      const call = {
        type: event.type, name: event.name, arguments: event.arguments, result: event.result, ok: event.ok,
        ms: event.ms, round: event.round, text_at: (rec.text || "").length,
      };
      rec.tools = (rec.tools || []).concat([call]);
      if (rec.ui) rec.ui.out.appendChild(el("div", "tool-call", toolLine(call)));
    }
  }

  // A record's answer so far (from the server's replay, or gathered before its card existed), drawn
  // again as the events it was made of, each tool line where it came in the text.
  function replayAnswer(rec) {
    const text = String(rec.text || "");
    const tools = Array.isArray(rec.tools) ? rec.tools : [];
    const truncated = rec.text_truncated;
    rec.text = "";
    rec.tools = [];
    if (rec.ui) rec.ui.out.replaceChildren();
    let at = 0;
    for (const call of tools) {
      if (!call || typeof call !== "object") continue;
      const upto = Math.min(text.length, Math.max(at, Number(call.text_at) || 0));
      if (upto > at) addToAnswer(rec, { type: TEXT_TYPE, text: text.slice(at, upto) });
      at = upto;
      addToAnswer(rec, call);
    }
    if (at < text.length) addToAnswer(rec, { type: TEXT_TYPE, text: text.slice(at) });
    if (truncated) rec.text_truncated = true;
  }

  function toolLine(call) {
    return "[tool " + String(call.name) + "(" + String(call.arguments || "").slice(0, 300) + ") → " +
      String(call.result || "").slice(0, 600) + " · " + String(call.ms) + " ms" + (call.ok ? "" : " · failed") + "]";
  }

  function showIss(state, how) {
    if (!state) return;
    if (lastIssState && Date.parse(lastIssState.at) > Date.parse(state.at)) return;
    lastIssState = state;
    map.observe(state);
    const dl = $("iss-info");
    dl.replaceChildren();
    const fmt = (v, unit, digits) => (typeof v === "number" ? v.toFixed(digits) + unit : null);
    kv(dl, "position", fmt(state.latitude, "°", 2) + ", " + fmt(state.longitude, "°", 2));
    kv(dl, "over", state.over);
    if (state.nearest_city) kv(dl, "nearest city", state.nearest_city + (state.nearest_city_km ? " (" + Math.round(state.nearest_city_km) + " km " + (state.nearest_city_direction || "") + ")" : ""));
    kv(dl, "altitude", fmt(state.altitude_km, " km", 0));
    kv(dl, "speed", fmt(state.speed_kmh, " km/h", 0));
    if (typeof state.sunlit === "boolean") kv(dl, "station", state.sunlit ? "in sunlight" : "in Earth's shadow");
    kv(dl, "at", state.at ? new Date(state.at).toLocaleTimeString() : null);
    $("iss-src").textContent = state.source ? "· " + state.source : "";
    issHow = how;
    describeIss();
  }

  let issHow = "";
  function describeIss() {
    const state = lastIssState;
    if (!state) return;
    $("iss-note").textContent =
      (state.accuracy ? "Accuracy: " + state.accuracy + ". " : "") +
      "Position " + issHow + "; track " + (map.trackSource === "iss" ? "from /iss, 45 min back (solid) and 90 min ahead (dashed)." : "from the positions seen so far.");
  }
  map.onTrack = describeIss;

  function reset() {
    model.requests.clear();
    model.convs.clear();
    for (const node of Array.from(feed.children)) if (node !== empty) node.remove();
    while (filterSelect.options.length > 1) filterSelect.remove(1);
    empty.hidden = false;
  }

  function loadSnapshot(requests) {
    const keep = model.filter;
    reset();
    for (const r of requests || []) {
      const rec = Object.assign({}, r);
      if (rec.outcome) rec.endT = rec.outcome.t;
      addRecord(rec);
    }
    if (keep && model.convs.has(keep)) setFilter(keep);
    else setFilter("");
  }

  // The link of this page's worker to the cluster feed (Redis), when there is one.
  function showFeed(feed, reason) {
    const pill = $("cluster");
    model.stats.feed = feed;
    if (feed === "cluster") {
      pill.hidden = false;
      pill.textContent = "cluster feed";
      pill.className = "pill pill-ok";
      pill.title = "Requests of every worker, through Redis";
    } else if (feed === "cluster-down") {
      pill.hidden = false;
      pill.textContent = "cluster feed lost: this worker only";
      pill.className = "pill pill-bad";
      pill.title = "Redis is unreachable" + (reason ? " (" + reason + ")" : "") + ": showing the requests of worker " + (model.stats.worker || "?") + " until it is back";
    } else {
      pill.hidden = true;
    }
  }

  function handleFrame(frame) {
    model.stats.frames += 1;
    model.stats.lastAt = Date.now();
    if (frame.type === "hello") {
      model.stats.buffer = frame.buffer;
      model.stats.batchMs = frame.batch_ms;
      model.stats.worker = frame.worker;
      showFeed(frame.feed);
      loadSnapshot(frame.requests);
    } else if (frame.type === "snapshot") {
      model.stats.resyncs += 1;
      if (frame.dropped) {
        model.stats.dropped += frame.dropped;
        notice("This page fell behind: " + frame.dropped + " live events were skipped, and the view was rebuilt from the server's buffer of recent requests.");
      }
      loadSnapshot(frame.requests);
    } else if (frame.type === "events") {
      for (const event of frame.events || []) apply(event);
    }
    updateCounts();
  }

  // ---- controls ----------------------------------------------------------------------------

  function applyFilter(conv) {
    conv.section.hidden = Boolean(model.filter) && conv.key !== model.filter;
    conv.only.textContent = model.filter === conv.key ? "show all" : "only this";
  }

  function setFilter(key) {
    model.filter = key;
    filterSelect.value = key;
    for (const conv of model.convs.values()) applyFilter(conv);
  }
  filterSelect.addEventListener("change", () => setFilter(filterSelect.value));

  pauseButton.addEventListener("click", () => {
    model.paused = !model.paused;
    pauseButton.setAttribute("aria-pressed", String(model.paused));
    body.classList.toggle("paused", model.paused);
    if (!model.paused) {
      const held = model.held;
      const overflow = model.heldOverflow;
      model.held = [];
      model.heldOverflow = false;
      if (overflow && socket && socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify({ op: "resync" }));
      else for (const frame of held) handleFrame(frame);
    }
    updateCounts();
  });

  $("clear").addEventListener("click", () => {
    let newest = Date.now() / 1000;
    for (const rec of model.requests.values()) newest = Math.max(newest, rec.t || 0);
    model.clearedAt = newest;
    sessionStorage.setItem(CLEARED_KEY, String(newest));
    const count = model.requests.size;
    reset();
    updateCounts();
    notice("Cleared " + count + " requests from this view; the server still keeps its buffer.", "show them again", unclear);
  });

  function updateCounts() {
    let streaming = 0;
    let shown = 0;
    for (const rec of model.requests.values()) {
      if (!rec.ui) continue;
      shown += 1;
      if (rec.status === "streaming") streaming += 1;
    }
    $("counts").textContent =
      shown + " requests · " + model.convs.size + " conversations" + (streaming ? " · " + streaming + " streaming" : "");
    pauseButton.textContent = model.paused ? "Resume" + (model.held.length ? " (" + model.held.length + " held)" : "") : "Pause";
    const dl = $("feed-info");
    dl.replaceChildren();
    const s = model.stats;
    kv(dl, "socket", socketState);
    kv(dl, "worker", s.worker);
    kv(dl, "feed", s.feed === "cluster" ? "every worker (Redis)" : s.feed === "cluster-down" ? "this worker only (Redis unreachable)" : s.feed ? "this process" : null);
    kv(dl, "server buffer", s.buffer ? "last " + s.buffer + " requests" : null);
    kv(dl, "batching", s.batchMs ? "every " + s.batchMs + " ms" : null);
    kv(dl, "frames · events", s.frames + " · " + s.events);
    kv(dl, "events skipped", s.dropped ? s.dropped + " (page too slow; resynced " + s.resyncs + "×)" : "none");
    kv(dl, "last frame", s.lastAt ? new Date(s.lastAt).toLocaleTimeString() : "–");
  }

  // ---- the socket --------------------------------------------------------------------------

  let socket = null;
  let socketState = "connecting";
  let retryMs = 1000;

  function setConn(text, kind) {
    socketState = text;
    const pill = $("conn");
    pill.textContent = text;
    pill.className = "pill pill-" + kind;
  }

  function connect() {
    const scheme = location.protocol === "https:" ? "wss://" : "ws://";
    socket = new WebSocket(scheme + location.host + WS_PATH);
    setConn("connecting…", "wait");
    socket.addEventListener("open", () => {
      retryMs = 1000;
      model.stats.connectedAt = Date.now();
      setConn("live", "ok");
    });
    socket.addEventListener("message", (msg) => {
      let frame;
      try {
        frame = JSON.parse(msg.data);
      } catch (err) {
        return;
      }
      if (model.paused) {
        // A snapshot supersedes everything held before it.
        if (frame.type !== "events") {
          model.held = [];
          model.heldOverflow = false;
        }
        if (model.held.length < HELD_MAX) model.held.push(frame);
        else model.heldOverflow = true;
        updateCounts();
        return;
      }
      handleFrame(frame);
    });
    socket.addEventListener("close", (ev) => {
      const why = ev.code === 1013 ? "dropped (too slow)" : "disconnected";
      setConn(why + " · retrying in " + Math.round(retryMs / 1000) + " s", "bad");
      if (!model.stats.connectedAt) notice("Cannot open the live feed. If the server restarted with a new token, open the console URL it printed.");
      setTimeout(connect, retryMs);
      retryMs = Math.min(retryMs * 2, 15000);
      updateCounts();
    });
  }

  if (model.clearedAt) notice("Requests up to " + clock(model.clearedAt) + " are hidden (cleared in this tab).", "show them", unclear);
  updateCounts();
  connect();
})();
