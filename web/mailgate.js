/* mailgate.js: the browser side of mailgate's /ws (the protocol is in mailgate/webapp/ws.py).
 *
 * Plain ES2017, no dependencies, no build step. Usage:
 *
 *   const client = Mailgate.connect({token: "..."});          // url defaults to ws(s)://<host>/ws
 *   const result = await client.run("start", {value: 2});     // a foreground action; rejects on error
 *
 * Forms marked <form data-mailgate-checkin="ACTION"> check in on connect, on every change event and
 * every checkin_interval seconds. Commands (pushed events and check-in answers) are applied here,
 * after a cancelable DOM event: "mailgate:command" and "mailgate:<name>" (detail = the command);
 * call preventDefault() to handle one yourself. Also fired on document: mailgate:connected,
 * mailgate:disconnected, mailgate:checkin (a check-in's answer), mailgate:email and mailgate:task
 * (detail = the event data), mailgate:reset (cancelable; reloads the page) and mailgate:error.
 * <html data-mailgate="connected|disconnected"> tells CSS (and tests) the connection's state.
 */
(function (global) {
  "use strict";

  const BASE_DELAY_MS = 250;
  const MAX_DELAY_MS = 10000;
  const FLASH_KEEP = 5;

  function setState(state) {  // for CSS and tests: <html data-mailgate="connected|disconnected">
    document.documentElement.setAttribute("data-mailgate", state);
  }

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

  class Client {
    constructor(options) {
      this.token = options.token;
      this.url = options.url || defaultUrl();
      this.last = 0;             // id of the last event seen, sent as &last= when reconnecting
      this.nextRef = 0;
      this.pending = new Map();  // ref -> {resolve, reject, sent}
      this.outbox = [];          // "run" messages waiting for a connection
      this.attempt = 0;
      this.connected = false;
      this.closed = false;
      this.ws = null;
      this.timer = null;
      this.retry = null;
      this.onChange = (e) => {
        const el = e.target;
        const form = el && (el.form || (el.closest && el.closest("form")));
        if (form && form.hasAttribute("data-mailgate-checkin")) this.checkinForm(form, el.name || null);
      };
      document.addEventListener("change", this.onChange);
      this.open();
    }

    open() {
      let url = this.url + (this.url.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(this.token);
      if (this.last > 0) url += "&last=" + this.last;
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
          if (msg.kind === "command") return applyCommand(msg.data);
          return void fire("mailgate:" + msg.kind, msg.data);
        case "reset":
          if (fire("mailgate:reset", {}, true)) global.location.reload();
          return;
        case "checkin":
          fire("mailgate:checkin", msg);
          return (msg.commands || []).forEach(applyCommand);
        case "result": return this.settle(msg.ref, (p) => p.resolve(msg.result));
        case "error":
          if (this.pending.has(msg.ref)) return this.settle(msg.ref, (p) => p.reject(new Error(msg.error)));
          console.warn("mailgate:", msg.error);
          return void fire("mailgate:error", msg);
      }
    }

    welcome(msg) {
      this.connected = true;
      this.attempt = 0;
      setState("connected");
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
      setState("disconnected");
      clearInterval(this.timer);
      for (const [ref, p] of this.pending) {  // a sent run may or may not have happened: let the page decide
        if (p.sent) this.settle(ref, (q) => q.reject(new Error("connection lost before the answer came")));
      }
      if (was || this.attempt === 0) fire("mailgate:disconnected", {code: e.code, reason: e.reason});
      if (this.closed) return;
      const cap = Math.min(MAX_DELAY_MS, BASE_DELAY_MS * Math.pow(2, this.attempt++));
      this.retry = setTimeout(() => this.open(), cap / 2 + Math.random() * cap / 2);
    }

    settle(ref, how) {
      const p = this.pending.get(ref);
      if (!p) return;
      this.pending.delete(ref);
      how(p);
    }

    send(msg) {
      if (!this.connected || this.ws.readyState !== WebSocket.OPEN) return false;
      this.ws.send(JSON.stringify(msg));
      const p = this.pending.get(msg.ref);
      if (p) p.sent = true;
      return true;
    }

    /** Run a foreground action of the session; resolves with its result, rejects with its error. */
    run(action, args) {
      const ref = ++this.nextRef;
      const msg = {type: "run", ref: ref, action: action, arguments: args || {}};
      return new Promise((resolve, reject) => {
        if (this.closed) return reject(new Error("the client is closed"));
        this.pending.set(ref, {resolve: resolve, reject: reject, sent: false});
        if (!this.send(msg)) this.outbox.push(msg);
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
      for (const ref of Array.from(this.pending.keys())) this.settle(ref, (p) => p.reject(new Error("the client is closed")));
      this.outbox = [];
      if (this.ws) this.ws.close(1000);
    }
  }

  global.Mailgate = {
    connect: (options) => new Client(options || {}),
    flash: flash,
    fields: formFields,
  };
})(window);
