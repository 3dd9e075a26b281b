// Refit console: the labeling view (one item at a time, labels as buttons and number keys,
// skip, undo, new label) and the review of a version's label-error hints.
"use strict";

(() => {
  const { h, api, act, toast, explain, route, onLeave, pct, path } = Refit;
  const ANNOTATOR_KEY = "refit-annotator";

  route(/^\/label\/([^/]+)$/, async (main, name) => {
    const base = `/models/${path(name)}/queue`;
    const s = { buffer: [], item: null, done: [], answered: 0, busy: false, labels: [], multi: false,
      picked: new Set(), filter: "" };
    const who = h("input", { id: "annotator", value: sessionStorage.getItem(ANNOTATOR_KEY) || "console",
      "aria-label": "annotator", onchange: () => sessionStorage.setItem(ANNOTATOR_KEY, who.value) });
    const info = h("div", { class: "muted", id: "item-info" });
    const text = h("div", { class: "item-text", id: "item-text" });
    const filter = h("input", { id: "label-filter", placeholder: "filter labels (Enter picks the first)",
      oninput: () => { s.filter = filter.value.toLowerCase(); drawLabels(); } });
    const buttons = h("div", { class: "labels", id: "label-buttons" });
    const fresh = h("input", { id: "new-label", placeholder: "new label" });
    const status = h("div", { class: "muted", id: "answered-count" }, "answered 0 in this session");
    const counts = h("span", { class: "muted", id: "queue-counts" });
    const strategy = h("span", { class: "tag", id: "strategy" });
    const submit = h("button", { class: "primary", onclick: () => answer({ labels: [...s.picked] }) },
      "Submit (Enter)");

    main.replaceChildren(
      h("div", { class: "row" }, h("h1", {}, "Label: " + name), strategy, counts),
      h("div", { class: "row" }, h("label", {}, "annotator ", who)),
      h("div", { class: "card", id: "label-card" }, info, text, filter, buttons,
        h("div", { class: "row" },
          h("button", { id: "skip", onclick: () => answer({ skip: true }) }, "Skip (s)"),
          h("button", { id: "undo", onclick: undo }, "Undo (u)"),
          fresh, h("button", { onclick: () => addLabel() }, "Add as new label"))),
      status);

    function visible() { return s.labels.filter((l) => l.toLowerCase().includes(s.filter)); }

    function drawLabels() {
      const shown = visible();
      buttons.replaceChildren(...shown.map((label, i) => h("button", {
        class: s.picked.has(label) ? "primary" : "", "data-label": label,
        onclick: () => pick(label),
      }, i < 9 ? h("kbd", {}, String(i + 1)) : "", label)));
      if (s.multi) buttons.append(submit);
    }

    function draw() {
      const item = s.item;
      s.picked = new Set();
      if (!item) {
        info.textContent = "";
        text.textContent = "Nothing to label: the queue is empty.";
        buttons.replaceChildren();
        return;
      }
      const flags = [item.out_of_scope ? "answered out of scope" : "",
        item.disagree ? "production and shadow disagree" : ""].filter(Boolean).join(", ");
      info.textContent = `#${item.id} · ${item.source} · model says ${item.label ?? "–"}` +
        (item.score !== null && item.score !== undefined ? ` (${pct(item.score)})` : "") +
        (flags ? " · " + flags : "");
      text.textContent = item.text;
      drawLabels();
    }

    async function load() {
      const r = await api("POST", base + "/next", { annotator: who.value, count: 10, lease_s: 900 });
      s.labels = [...r.labels, r.out_of_scope_label];
      s.multi = r.multi_label;
      strategy.textContent = r.strategy;
      counts.textContent = `${r.counts.open} open · ${r.counts.answered} answered`;
      s.buffer = r.items.map((item) => ({ ...item, lease: r.lease }));
      s.item = s.buffer.shift() || null;
      draw();
    }

    async function next() {
      s.item = s.buffer.shift() || null;
      if (!s.item) await load(); else draw();
    }

    function pick(label) {
      if (!s.multi) return answer({ label });
      if (s.picked.has(label)) s.picked.delete(label); else s.picked.add(label);
      drawLabels();
      return undefined;
    }

    async function answer(choice, isNew) {
      if (s.busy || !s.item) return;
      s.busy = true;
      const item = s.item;
      try {
        await api("POST", base + "/answers", { annotator: who.value, lease: item.lease,
          answers: [{ id: item.id, ...choice, ...(isNew ? { new_label: true } : {}) }] });
        if (!choice.skip) s.answered += 1;
        s.done.push({ ...item, skipped: Boolean(choice.skip) });
        status.textContent = `answered ${s.answered} in this session`;
        await next();
      } catch (error) {
        toast(explain(error), true);
        if (error.status === 409 || error.status === 404) await next();
      } finally {
        s.busy = false;
      }
    }

    async function undo() {
      const last = s.done.pop();
      if (!last || s.busy) return;
      s.busy = true;
      try {
        const r = await api("POST", `${base}/${last.id}/undo`, { annotator: who.value, lease_s: 900 });
        if (!last.skipped && s.answered > 0) s.answered -= 1;
        if (s.item) s.buffer.unshift(s.item);
        s.item = { ...r.items[0], lease: r.lease };
        status.textContent = `answered ${s.answered} in this session`;
        draw();
      } catch (error) {
        toast(explain(error), true);
      } finally {
        s.busy = false;
      }
    }

    function addLabel() {
      const label = fresh.value.trim();
      if (!label) return;
      if (!s.labels.includes(label)) s.labels.push(label);
      fresh.value = "";
      answer(s.multi ? { labels: [label] } : { label }, true);
    }

    function onKey(event) {
      const typing = event.target instanceof HTMLInputElement;
      if (typing) {
        if (event.key === "Enter" && event.target === filter && visible().length) pick(visible()[0]);
        if (event.key === "Enter" && event.target === fresh) addLabel();
        if (event.key === "Escape") event.target.blur();
        return;
      }
      if (event.ctrlKey || event.metaKey || event.altKey) return;
      if (/^[1-9]$/.test(event.key)) {
        const label = visible()[Number(event.key) - 1];
        if (label) { event.preventDefault(); pick(label); }
      } else if (event.key === "s") { event.preventDefault(); answer({ skip: true }); }
      else if (event.key === "u") { event.preventDefault(); undo(); }
      else if (event.key === "Enter" && s.multi) { event.preventDefault(); answer({ labels: [...s.picked] }); }
    }

    document.addEventListener("keydown", onKey);
    onLeave(() => document.removeEventListener("keydown", onKey));
    await load();
  });

  // -- label-error hints --------------------------------------------------------------
  route(/^\/suspects\/([^/]+)\/([^/]+)$/, async (main, name, version) => {
    const base = `/models/${path(name)}/versions/${path(version)}/suspects`;
    const r = await api("GET", base);
    const model = await api("GET", "/models/" + path(name));
    const labels = (model.versions.find((v) => v.version === r.version) || {}).labels || [];
    const rows = r.suspects.map((s) => {
      const state = h("td", { class: "muted" }, s.reviewed ? "reviewed: " + s.reviewed : "");
      const choose = h("select", {}, labels.map((l) => h("option", { value: l, selected: l === s.suggested }, l)));
      const send = (button, body) => act(button, async () => {
        const done = await api("POST", `${base}/${s.index}`, body);
        state.textContent = "reviewed: " + done.label;
      }, "stored as feedback");
      return h("tr", {},
        h("td", {}, s.text),
        h("td", {}, s.label, h("div", { class: "muted" }, pct(s.label_probability))),
        h("td", {}, s.suggested, h("div", { class: "muted" }, pct(s.suggested_probability))),
        h("td", {},
          h("button", { onclick: (e) => send(e.target, { action: "confirm" }) }, "Keep label"),
          h("button", { onclick: (e) => send(e.target, { action: "relabel", label: choose.value }) }, "Relabel as"),
          choose),
        state);
    });
    main.replaceChildren(
      h("h1", {}, `Label-error hints: ${name} ${r.version}`),
      h("p", { class: "muted" }, r.computed
        ? `${r.suspects.length} of ${r.training_examples} training examples look mislabeled to a probe that never saw them.`
        : "This version has no hints (multi-label, a class with one example, or made before hints existed)."),
      h("table", { id: "suspects" }, h("tr", {}, ...["text", "label", "suggested", "", ""].map((t) => h("th", {}, t))), rows));
  });
})();
