// Refit console: a client of the service's own HTTP API, written without a framework so it
// ships with the service and works offline. Every text goes into the page as a text node
// (never as HTML); the token stays in this tab's sessionStorage and travels only as a
// bearer header (no cookies, so no cross-site request can borrow it).
"use strict";

const Refit = (() => {
  const TOKEN_KEY = "refit-token";
  const routes = [];
  let leaving = [];

  class ApiError extends Error {
    constructor(status, message, fix) {
      super(message);
      this.status = status;
      this.fix = fix;
    }
  }

  // h("button", {class: "primary", onclick: f}, "text", child, ...): an element
  function h(tag, attrs, ...children) {
    const svg = ["svg", "line", "polyline", "circle", "rect", "text", "g"].includes(tag);
    const el = svg ? document.createElementNS("http://www.w3.org/2000/svg", tag)
      : document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
      else if (key === "class") el.setAttribute("class", value);
      else el.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      el.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return el;
  }

  function token() { return sessionStorage.getItem(TOKEN_KEY) || ""; }

  async function api(method, path, body, contentType) {
    const headers = {};
    if (token()) headers.Authorization = "Bearer " + token();
    let payload;
    if (body !== undefined) {
      headers["Content-Type"] = contentType || "application/json";
      payload = contentType ? body : JSON.stringify(body);
    }
    const response = await fetch(path, { method, headers, body: payload, credentials: "omit" });
    const text = await response.text();
    let data = null;
    try { data = text ? JSON.parse(text) : null; } catch (_) { data = { error: text }; }
    if (!response.ok) {
      const first = Array.isArray(data) ? data[0] : data;
      const message = (first && (first.error || first.detail)) || response.statusText;
      throw new ApiError(response.status, typeof message === "string" ? message
        : JSON.stringify(message), first && first.fix);
    }
    return data;
  }

  function toast(message, bad) {
    const box = document.getElementById("toast");
    const note = h("div", { class: bad ? "bad" : "" }, message);
    box.append(note);
    setTimeout(() => note.remove(), bad ? 8000 : 3000);
  }

  function explain(error) {
    if (error instanceof ApiError) {
      const hint = error.status === 401 ? " (enter the API token above)" : "";
      return `${error.status}: ${error.message}${error.fix ? " — " + error.fix : ""}${hint}`;
    }
    return String(error && error.message ? error.message : error);
  }

  // run an action from a button: errors become a toast, the button is busy meanwhile
  async function act(button, work, done) {
    if (button) button.disabled = true;
    try {
      const result = await work();
      if (done) toast(done);
      return result;
    } catch (error) {
      toast(explain(error), true);
      return undefined;
    } finally {
      if (button) button.disabled = false;
    }
  }

  function route(pattern, render) { routes.push([pattern, render]); }

  // called when the page changes: timers and key handlers of the old page stop
  function onLeave(cleanup) { leaving.push(cleanup); }

  async function go() {
    for (const cleanup of leaving) cleanup();
    leaving = [];
    const main = document.getElementById("main");
    const hash = decodeURIComponent(location.hash.slice(1) || "/");
    for (const [pattern, render] of routes) {
      const match = pattern.exec(hash);
      if (!match) continue;
      // each visit renders into its own element: a slow render of a page the user has
      // left writes into a detached element, never over the page now shown
      const page = h("div", { class: "page" }, h("p", { class: "muted" }, "Loading…"));
      main.replaceChildren(page);
      try {
        await render(page, ...match.slice(1));
      } catch (error) {
        page.replaceChildren(h("p", { class: "error" }, explain(error)));
      }
      return;
    }
    main.replaceChildren(h("p", { class: "error" }, "No such page: " + hash));
  }

  function pct(x) { return x === null || x === undefined ? "–" : (100 * x).toFixed(1) + "%"; }
  function when(seconds) { return seconds ? new Date(seconds * 1000).toLocaleString() : "–"; }
  function link(text, hash) { return h("a", { href: "#" + hash }, text); }
  function path(...parts) { return parts.map(encodeURIComponent).join("/"); }

  function setupToken() {
    const form = document.getElementById("token-form");
    const input = document.getElementById("token");
    const state = document.getElementById("token-state");
    const show = () => { state.textContent = token() ? "token set" : "no token: reads only"; };
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      if (input.value) sessionStorage.setItem(TOKEN_KEY, input.value);
      else sessionStorage.removeItem(TOKEN_KEY);
      input.value = "";
      input.blur();  // keys belong to the page again (the labeling view reads them)
      show();
      go();
    });
    show();
  }

  window.addEventListener("hashchange", go);
  window.addEventListener("DOMContentLoaded", () => { setupToken(); go(); });
  return { h, api, act, toast, explain, route, onLeave, pct, when, link, path, ApiError, reload: go };
})();
