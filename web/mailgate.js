/* mailgate.js: the browser side of mailgate's /ws (the protocol is in mailgate/edges/web/ws.py).
 *
 * Plain ES2017, no dependencies, no build step. Usage:
 *
 *   const client = Mailgate.connect({
 *     token: "...",                    // from POST /api/sessions/{id}/token, via the web application
 *     renew: "/app/mailgate-token",    // or async () => "new token": asked when the token has expired
 *     runTimeout: 30000,               // ms; default 30 s
 *   });                                // url defaults to ws(s)://<host>/ws
 *   const result = await client.run("start", {value: 2});     // a foreground action; rejects on error
 *
 * Token renewal: a token is checked when a connection opens. When a (re)connection fails, the client
 * asks /ws with a plain GET why (401: the token is bad or expired; a cross-origin page cannot read the
 * answer, and then the token's own expiry decides), gets a new token from `renew` (a function returning
 * the token or {token}, or a URL answered by a POST with JSON {token}) and connects again, resuming
 * from the last event it saw. Without `renew`, or when the origin is refused (403) or the session is
 * gone (404), it gives up: state "failed".
 *
 * Connection state: <html class="mailgate-STATE" data-mailgate="STATE">, STATE one of connecting (no
 * connection yet), connected, reconnecting (was connected; retrying with backoff), failed (gave up),
 * closed (client.close()); "mailgate:state" (detail {state, previous, reason}) on every change.
 * <html class="mailgate-busy"> and "mailgate:busy" ({busy, runs, tasks}) while a run waits for its
 * answer or a background task that a run started (its result's `tasks`) has not ended.
 *
 * Runs: run(action, args, {timeout}) rejects with a Mailgate.MailgateError whose `code` says why:
 * "server" (the action's error), "timeout" (no answer in time), "lost" (the connection dropped after
 * it was sent: it may have run), "offline" (called while reconnecting or failed: it is not sent, not
 * later either), "closed". A run made before the first connection waits for it (within its timeout).
 *
 * Forms marked <form data-mailgate-checkin="ACTION"> check in on connect, on every change event and
 * every checkin_interval seconds. Commands (pushed events and check-in answers) are applied here,
 * after a cancelable DOM event: "mailgate:command" and "mailgate:<name>" (detail = the command);
 * call preventDefault() to handle one yourself. Also fired on document: mailgate:connected,
 * mailgate:disconnected, mailgate:renewed, mailgate:checkin (a check-in's answer), mailgate:email and
 * mailgate:task and mailgate:automation (detail = the event data: for an automation {id, class,
 * state, open, interactions}), mailgate:reset (cancelable; reloads the page) and
 * mailgate:error. Automations: client.submitTask(step, values) submits a form as the page's user,
 * client.message(KEY, name, token) messages the session's automation (publish_receivers = True).
 */
(function (global) {
  "use strict";

  const BASE_DELAY_MS = 250;
  const MAX_DELAY_MS = 10000;
  const FLASH_KEEP = 5;
  const RUN_TIMEOUT_MS = 30000;

  function fire(name, detail, cancelable) {
    return document.dispatchEvent(new CustomEvent(name, {detail: detail, cancelable: !!cancelable}));
  }

  // -- flash -----------------------------------------------------------------------------------
  function flashBox() {
    let box = document.getElementById("mailgate-flash");
    if (!box) {
      box = document.createElement("div");
      box.id = "mailgate-flash";
      document.body.insertBefore(box, document.body.firstChild);
    }
    box.setAttribute("aria-live", "polite");
    return box;
  }

  function flash(message, options) {
    const box = flashBox();
    const item = document.createElement("div");
    item.className = "mailgate-flash-message";
    item.setAttribute("role", "status");
    const text = message == null ? "" : String(message);
    if (options && options.html) item.innerHTML = text; else item.textContent = text;
    box.appendChild(item);
    while (box.children.length > FLASH_KEEP) box.removeChild(box.firstElementChild);
    return item;
  }

  // -- fields ----------------------------------------------------------------------------------
  function isInput(el) {
    return el.name && !el.disabled && /^(INPUT|SELECT|TEXTAREA)$/.test(el.tagName)
      && !/^(submit|button|reset|image|file)$/.test(el.type);
  }

  /** The values of a form's named inputs, as the check-in sends them. */
  function formFields(form) {
    const out = {};
    for (const el of Array.from(form.elements).filter(isInput)) {
      if (el.type === "checkbox") out[el.name] = el.checked;
      else if (el.type === "radio") {
        if (!(el.name in out)) out[el.name] = null;
        if (el.checked) out[el.name] = el.value;
      } else if (el.type === "number" || el.type === "range") {
        const n = el.valueAsNumber;
        out[el.name] = Number.isFinite(n) ? n : el.value;
      } else if (el.tagName === "SELECT" && el.multiple) {
        out[el.name] = Array.from(el.selectedOptions, (o) => o.value);
      } else out[el.name] = el.value;
    }
    return out;
  }

  function setValue(el, value) {
    if (el.type === "checkbox") el.checked = value === true || value === "true";
    else if (el.type === "radio") el.checked = value != null && el.value === String(value);
    else if (el.tagName === "SELECT" && el.multiple && Array.isArray(value)) {
      const wanted = value.map(String);
      for (const o of el.options) o.selected = wanted.includes(o.value);
    } else if ("value" in el) el.value = value == null ? "" : String(value);
  }

  function choicePairs(choices) {
    return (choices || []).map((c) => (Array.isArray(c)
      ? [String(c[0]), String(c.length > 1 ? c[1] : c[0])] : [String(c), String(c)]));
  }

  /** Rebuild a select's options or a radio group's inputs from {choices, value}. */
  function setChoices(name, spec) {
    const pairs = choicePairs(spec.choices);
    const named = Array.from(document.getElementsByName(name));
    const current = named.filter((el) => el.checked || (el.tagName === "SELECT")).map((el) => el.value)[0];
    const value = spec.value == null ? (current == null ? null : String(current)) : String(spec.value);
    for (const select of named.filter((el) => el.tagName === "SELECT")) {
      select.replaceChildren(...pairs.map(([v, label]) => new Option(label, v, false, v === value)));
    }
    for (const group of document.querySelectorAll(`[data-mailgate-radio="${CSS.escape(name)}"]`)) {
      group.replaceChildren(...pairs.map(([v, label]) => {
        const wrap = document.createElement("label");
        const input = document.createElement("input");
        input.type = "radio";
        input.name = name;
        input.value = v;
        input.checked = v === value;
        wrap.append(input, " " + label);
        return wrap;
      }));
    }
  }

  function setFields(fields) {
    for (const [name, value] of Object.entries(fields || {})) {
      if (value !== null && typeof value === "object" && !Array.isArray(value) && "choices" in value) {
        setChoices(name, value);
      } else {
        for (const el of document.getElementsByName(name)) setValue(el, value);
      }
    }
  }

  // -- commands --------------------------------------------------------------------------------
  const handlers = {
    flash: (c) => flash(c.message, {html: c.html === true}),
    fields: (c) => setFields(c.fields),
    target: (c) => {
      for (const el of document.querySelectorAll(`[data-mailgate-target="${CSS.escape(String(c.target))}"]`)) {
        if (c.html === false) el.textContent = c.content; else el.innerHTML = c.content == null ? "" : c.content;
      }
    },
    refresh: () => global.location.reload(),
    javascript: (c) => { new Function(c.script)(); },
  };

  /** Fire the command's DOM events, then apply it unless a listener called preventDefault(). */
  function applyCommand(command) {
    if (!command || typeof command.command !== "string") return;
    const general = fire("mailgate:command", command, true);
    const specific = fire("mailgate:" + command.command, command, true);
    const handler = handlers[command.command];
    if (!general || !specific || !handler) return;
    try {
      handler(command);
    } catch (err) {
      console.error("mailgate: the " + command.command + " command failed", err);
      fire("mailgate:error", {error: String(err), command: command});
    }
  }

  // -- the connection --------------------------------------------------------------------------
  function defaultUrl() {
    return (global.location.protocol === "https:" ? "wss://" : "ws://") + global.location.host + "/ws";
  }

  /** An Error with a `code`: "offline", "timeout", "lost", "closed" or "server" (the action's error). */
  class MailgateError extends Error {
    constructor(message, code) {
      super(message);
      this.name = "MailgateError";
      this.code = code;
    }
  }

  /** The token's expiry (seconds since the epoch) by its payload, or null if it cannot be read. */
  function tokenExpiry(token) {
    try {
      const body = String(token).split(".")[0].replace(/-/g, "+").replace(/_/g, "/");
      const exp = JSON.parse(atob(body + "===".slice((body.length + 3) % 4))).exp;
      return typeof exp === "number" ? exp : null;
    } catch (err) {
      return null;
    }
  }

  class Client {
    constructor(options) {
      this.token = options.token || "";
      this.url = options.url || defaultUrl();
      this.renew = options.renew || null;  // a function returning a token (or a promise of one), or a URL to POST to
      this.runTimeout = options.runTimeout == null ? RUN_TIMEOUT_MS : Number(options.runTimeout);
      this.last = 0;             // id of the last event seen, sent as &last= when reconnecting
      this.nextRef = 0;
      this.pending = new Map();  // ref -> {resolve, reject, sent, timer, msg}
      this.outbox = [];          // "run" messages made before the first connection, waiting for it
      this.tasks = new Set();    // ids of tasks that runs of this page started and that have not ended
      this.ended = new Set();    // ids of tasks whose end came before the run's answer
      this.attempt = 0;
      this.connected = false;
      this.everConnected = false;
      this.renewedUnused = false;  // a renewed token has not led to a welcome yet
      this.closed = false;
      this.state = null;
      this.busy = false;
      this.ws = null;
      this.timer = null;
      this.retry = null;
      this.onChange = (e) => {
        const el = e.target;
        const form = el && (el.form || (el.closest && el.closest("form")));
        if (form && form.hasAttribute("data-mailgate-checkin")) this.checkinForm(form, el.name || null);
      };
      document.addEventListener("change", this.onChange);
      this.setState("connecting");
      this.open();
    }

    /** Show the state on <html> (class "mailgate-STATE" and data-mailgate="STATE") and fire mailgate:state. */
    setState(state, reason) {
      const previous = this.state;
      if (previous === state) return;
      this.state = state;
      const root = document.documentElement;
      if (previous) root.classList.remove("mailgate-" + previous);
      root.classList.add("mailgate-" + state);
      root.setAttribute("data-mailgate", state);
      fire("mailgate:state", {state: state, previous: previous, reason: reason || null});
    }

    updateBusy() {
      const busy = this.pending.size > 0 || this.tasks.size > 0;
      if (busy === this.busy) return;
      this.busy = busy;
      document.documentElement.classList.toggle("mailgate-busy", busy);
      fire("mailgate:busy", {busy: busy, runs: this.pending.size, tasks: Array.from(this.tasks)});
    }

    open() {
      let url = this.url + (this.url.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(this.token);
      if (this.everConnected) url += "&last=" + this.last;  // resume from there (0 too: nothing seen yet)
      const ws = this.ws = new WebSocket(url);
      ws.onmessage = (e) => this.receive(e.data);
      ws.onclose = (e) => { if (this.ws === ws) this.lost(e); };
    }

    receive(text) {
      let msg;
      try { msg = JSON.parse(text); } catch (err) { return; }
      switch (msg.type) {
        case "welcome": return this.welcome(msg);
        case "event":
          // a "late" event became visible after a higher id was sent: it is new although its id is lower
          if (msg.id <= this.last && !msg.late) return;
          if (msg.id > this.last) this.last = msg.id;
          if (msg.kind === "task" && msg.data) this.taskEnded(msg.data.task);
          if (msg.kind === "command") return applyCommand(msg.data);
          return void fire("mailgate:" + msg.kind, msg.data);
        case "reset":
          if (fire("mailgate:reset", {}, true)) global.location.reload();
          return;
        case "checkin":
          fire("mailgate:checkin", msg);
          return (msg.commands || []).forEach(applyCommand);
        case "result": return this.settle(msg.ref, (p) => {
          for (const id of (msg.result && msg.result.tasks) || []) {
            if (!this.ended.delete(id)) this.tasks.add(id);
          }
          p.resolve(msg.result);
        });
        case "error":
          if (this.pending.has(msg.ref)) {
            const err = new MailgateError(msg.error, "server");
            if (msg.status) { err.status = msg.status; err.errors = msg.errors || null; }
            return this.settle(msg.ref, (p) => p.reject(err));
          }
          console.warn("mailgate:", msg.error);
          return void fire("mailgate:error", msg);
      }
    }

    taskEnded(id) {
      if (this.tasks.delete(id)) return this.updateBusy();
      this.ended.add(id);  // its run's answer may still be on its way
      if (this.ended.size > 100) this.ended.delete(this.ended.values().next().value);
    }

    welcome(msg) {
      this.connected = true;
      this.everConnected = true;
      this.renewedUnused = false;
      this.attempt = 0;
      this.setState("connected");
      if (this.last === 0) this.last = msg.last_event || 0;
      clearInterval(this.timer);
      const seconds = Number(msg.checkin_interval) || 6;
      this.timer = setInterval(() => this.checkin(), seconds * 1000);
      const waiting = this.outbox.splice(0);
      for (const m of waiting) this.send(m);
      fire("mailgate:connected", {session: msg.session, checkin_interval: seconds});
      this.checkin();
    }

    lost(e) {
      const was = this.connected;
      this.connected = false;
      clearInterval(this.timer);
      for (const [ref, p] of this.pending) {  // a sent run may or may not have happened: let the page decide
        if (p.sent) this.settle(ref, (q) => q.reject(new MailgateError("connection lost before the answer came", "lost")));
      }
      if (was || this.attempt === 0) fire("mailgate:disconnected", {code: e.code, reason: e.reason});
      if (this.closed) return;
      this.setState(this.everConnected ? "reconnecting" : "connecting");
      if (was) return this.later();
      // The handshake failed, and a browser does not say why: ask /ws with a plain GET, which answers
      // 401 for a bad or expired token (a cross-origin page cannot read it, so the expiry decides).
      this.diagnose().then((why) => {
        if (this.closed) return;
        if (why === "expired") return this.renewAndOpen();
        if (why) return this.fail(why);
        this.later();
      });
    }

    later() {
      const cap = Math.min(MAX_DELAY_MS, BASE_DELAY_MS * Math.pow(2, this.attempt++));
      clearTimeout(this.retry);
      this.retry = setTimeout(() => this.open(), cap / 2 + Math.random() * cap / 2);
    }

    /** Why the last handshake failed: "expired", a reason to give up, or null (try again later). */
    async diagnose() {
      let status = 0;
      try {
        const probe = this.url.replace(/^ws/, "http") + (this.url.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(this.token);
        status = (await fetch(probe, {cache: "no-store", credentials: "omit"})).status;
      } catch (err) {
        status = 0;  // the server is down, or it is another origin's
      }
      const exp = tokenExpiry(this.token);
      if (status === 401 || (status === 0 && exp !== null && exp * 1000 <= Date.now())) return "expired";
      if (status === 403) return "this page's origin is not allowed";
      if (status === 404) return "the session no longer exists";
      return null;
    }

    async renewAndOpen() {
      if (!this.renew) return this.fail("the token expired and the page has no way to renew it (renew option)");
      let token = null;
      try {
        token = await this.fetchToken();
      } catch (err) {
        console.warn("mailgate: renewing the token failed", err);
      }
      if (this.closed) return;
      if (!token) return this.later();
      if (this.renewedUnused) {  // the last renewed token was refused as well: do not ask again at once
        this.renewedUnused = false;
        return this.later();
      }
      this.renewedUnused = true;
      this.token = token;
      fire("mailgate:renewed", {});
      this.open();
    }

    async fetchToken() {
      let got;
      if (typeof this.renew === "function") got = await this.renew();
      else {
        const r = await fetch(this.renew, {method: "POST", cache: "no-store", credentials: "same-origin",
          headers: {Accept: "application/json"}});
        if (!r.ok) throw new Error("POST " + this.renew + " answered " + r.status);
        got = await r.json();
      }
      const token = got && typeof got === "object" ? got.token : got;
      if (typeof token !== "string" || !token) throw new Error("the renew option gave no token");
      return token;
    }

    fail(reason) {
      for (const ref of Array.from(this.pending.keys())) this.settle(ref, (p) => p.reject(new MailgateError(reason, "offline")));
      this.outbox = [];
      this.setState("failed", reason);
      console.warn("mailgate: giving up:", reason);
    }

    settle(ref, how) {
      const p = this.pending.get(ref);
      if (!p) return;
      this.pending.delete(ref);
      clearTimeout(p.timer);
      const queued = this.outbox.indexOf(p.msg);
      if (queued >= 0) this.outbox.splice(queued, 1);
      how(p);
      this.updateBusy();
    }

    send(msg) {
      if (!this.connected || this.ws.readyState !== WebSocket.OPEN) return false;
      this.ws.send(JSON.stringify(msg));
      const p = this.pending.get(msg.ref);
      if (p) p.sent = true;
      return true;
    }

    /**
     * Run a foreground action of the session; resolves with its result, rejects with a MailgateError.
     * Made while the page is reconnecting it rejects at once ("offline"): it is never sent later,
     * when the page may show something else. Made before the first connection it waits for it.
     * Without an answer within options.timeout ms (default runTimeout) it rejects ("timeout").
     */
    run(action, args, options) {
      return this.request({type: "run", action: action, arguments: args || {}}, action, options);
    }

    /**
     * Submit the values of an automation's form (the step id of its "automation" event's
     * interactions) as the page's user; resolves with {step, node, values, automation}. A refusal
     * rejects with a MailgateError whose `status` is 403 (not assigned), 400 (invalid: `errors` by
     * field) or 409 (already submitted).
     */
    submitTask(step, values, options) {
      return this.request({type: "submit", step: String(step), values: values || {}}, "submit " + step, options);
    }

    /**
     * The seed's page-view hook: send message `name` to this session's automation with `key`
     * (accepted only if its class publishes its receivers); its data is this page's query
     * parameters and path (the server adds the user). Resolves with the queued message.
     */
    message(key, name, token, options) {
      const query = {};
      new URLSearchParams(global.location.search).forEach((v, k) => { query[k] = v; });
      const data = {query: query, path: global.location.pathname};
      return this.request({type: "message", key: String(key), name: String(name), token: token == null ? null : String(token),
        data: data}, "message " + name, options);
    }

    request(body, what, options) {
      const ref = ++this.nextRef;
      const msg = Object.assign({ref: ref}, body);
      const action = what;
      const timeout = options && options.timeout != null ? Number(options.timeout) : this.runTimeout;
      return new Promise((resolve, reject) => {
        if (this.closed) return reject(new MailgateError("the client is closed", "closed"));
        if (!this.connected && this.state !== "connecting") {
          return reject(new MailgateError("not connected: " + action + " was not run", "offline"));
        }
        const p = {resolve: resolve, reject: reject, sent: false, msg: msg, timer: null};
        this.pending.set(ref, p);
        p.timer = setTimeout(() => this.settle(ref, (q) => q.reject(new MailgateError(
          "no answer to " + action + " within " + timeout / 1000 + " s", "timeout"))), timeout);
        if (!this.send(msg)) this.outbox.push(msg);
        this.updateBusy();
      });
    }

    /** Check in every form marked with data-mailgate-checkin now (while disconnected: a no-op). */
    checkin() {
      for (const form of document.querySelectorAll("form[data-mailgate-checkin]")) this.checkinForm(form, null);
    }

    checkinForm(form, changed) {
      this.send({type: "checkin", ref: ++this.nextRef, action: form.getAttribute("data-mailgate-checkin"),
        fields: formFields(form), changed: changed});
    }

    /** Apply a command as if the server had sent it. */
    apply(command) { applyCommand(command); }

    close() {
      this.closed = true;
      clearInterval(this.timer);
      clearTimeout(this.retry);
      document.removeEventListener("change", this.onChange);
      for (const ref of Array.from(this.pending.keys())) this.settle(ref, (p) => p.reject(new MailgateError("the client is closed", "closed")));
      this.outbox = [];
      this.tasks.clear();
      this.updateBusy();
      this.setState("closed");
      if (this.ws) this.ws.close(1000);
    }
  }

  global.Mailgate = {
    connect: (options) => new Client(options || {}),
    MailgateError: MailgateError,
    flash: flash,
    fields: formFields,
  };
})(window);
