/* Shared by the demo pages, loaded after mailgate.js and before Mailgate.connect(): shows the
 * connection's state in a banner, turns the pages' buttons off while there is no connection (a click
 * then would not be run), and shows "Working…" while a run or a task it started is under way. */
(function () {
  "use strict";
  const TEXT = {
    connecting: "Connecting…",
    reconnecting: "Reconnecting… the server cannot be reached; buttons are off until it is back.",
    failed: "Disconnected",
    closed: "Disconnected.",
  };
  const banner = document.createElement("div");
  banner.id = "mailgate-status";
  banner.setAttribute("role", "status");
  banner.setAttribute("aria-live", "polite");
  const working = document.createElement("div");
  working.id = "mailgate-working";
  working.textContent = "Working…";
  document.addEventListener("DOMContentLoaded", () => {
    document.body.insertBefore(banner, document.body.firstChild);
    const form = document.querySelector("form");
    if (form) form.after(working); else document.body.append(working);
  });
  document.addEventListener("mailgate:state", (e) => {
    const state = e.detail.state;
    banner.textContent = state === "failed" ? TEXT.failed + ": " + e.detail.reason + ". Reload the page." : (TEXT[state] || "");
    for (const button of document.querySelectorAll("form button, form input[type=submit]")) {
      button.disabled = state !== "connected";
    }
  });
})();
