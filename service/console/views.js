// Refit console: models, a model's versions and history, jobs, data upload.
"use strict";

(() => {
  const { h, api, act, route, onLeave, pct, when, link, path } = Refit;

  // -- models ---------------------------------------------------------------------------
  route(/^\/$/, async (main) => {
    const view = await api("GET", "/models");
    const rows = view.models.map((m) => h("tr", {},
      h("td", {}, link(m.name, "/model/" + m.name)),
      h("td", {}, m.production || "–"),
      h("td", {}, m.default ? h("span", { class: "tag" }, "default") : ""),
      h("td", {}, link("label", "/label/" + m.name), " · ", link("jobs", "/jobs/" + m.name))));
    main.replaceChildren(
      h("h1", {}, "Models"),
      h("table", {}, h("tr", {}, h("th", {}, "model"), h("th", {}, "production"),
        h("th", {}, ""), h("th", {}, "")), rows));
  });

  // -- one model ------------------------------------------------------------------------
  route(/^\/model\/([^/]+)$/, async (main, name) => {
    const view = await api("GET", "/models/" + path(name));
    const live = view.live_accuracy || {};
    const versions = view.versions.filter((v) => v.status === "ok");
    const header = h("div", { class: "row" },
      h("h1", {}, name),
      view.production ? h("span", { class: "tag production" }, "production " + view.production) : "",
      h("a", { href: "#/label/" + encodeURIComponent(name) }, h("button", { class: "primary" }, "Label")),
      h("a", { href: "#/jobs/" + encodeURIComponent(name) }, h("button", {}, "Jobs")),
      h("button", { onclick: (e) => act(e.target, () => api("POST", `/models/${path(name)}/rollback`),
        "rolled back").then(() => Refit.reload()) }, "Roll back"));
    main.replaceChildren(header, h("h2", {}, "History"), plot(versions),
      h("h2", {}, "Versions"), versionTable(name, view, versions, live),
      h("h2", {}, "Labeling"), queueCard(name, view), h("h2", {}, "Data"), uploadCard(name));
  });

  function versionTable(name, view, versions, live) {
    const head = h("tr", {}, ...["version", "aliases", "created", "strategy", "validation",
      "test", "live", "calibration", "examples", "reason", ""].map((t) => h("th", {}, t)));
    const rows = versions.map((v) => {
      const m = v.metrics || {};
      const t = v.test_metrics;
      const l = live[v.version];
      const cal = v.calibration;
      const actions = h("td", {},
        v.aliases.includes("production") ? "" : h("button", {
          onclick: (e) => act(e.target, () => api("POST", `/models/${path(name)}/promote`,
            { version: v.version }), "promoted " + v.version).then(() => Refit.reload()),
        }, "Promote"),
        view.default && !v.aliases.includes("production") && !v.aliases.includes("shadow")
          ? h("button", { onclick: (e) => act(e.target, () => api("POST", "/models/shadow",
            { version: v.version }), "shadowing " + v.version).then(() => Refit.reload()) }, "Shadow")
          : "",
        v.suspects ? h("a", { href: `#/suspects/${encodeURIComponent(name)}/${encodeURIComponent(v.version)}` },
          h("button", {}, `${v.suspects} suspects`)) : "");
      return h("tr", {},
        h("td", {}, v.version),
        h("td", {}, v.aliases.map((a) => h("span", { class: "tag " + a }, a))),
        h("td", {}, new Date(v.created_at).toLocaleString()),
        h("td", {}, v.strategy, v.backbone ? h("div", { class: "muted" }, v.backbone) : ""),
        h("td", {}, m.accuracy !== undefined ? pct(m.accuracy) : pct(m.micro_f1),
          h("div", { class: "muted" }, `macro-F1 ${pct(m.macro_f1)}`)),
        h("td", {}, t ? pct(t.accuracy) : "–"),
        h("td", {}, l ? `${pct(l.accuracy)} (${l.labeled})` : "–"),
        h("td", {}, cal ? `T=${cal.temperature.toFixed(2)}` : "–",
          cal && cal.ece_after !== null && cal.ece_after !== undefined
            ? h("div", { class: "muted" }, `ECE ${cal.ece_after.toFixed(3)}`) : ""),
        h("td", {}, v.data ? v.data.count : "–"),
        h("td", { class: "reason" }, v.reason || ""),
        actions);
    });
    return h("table", { id: "versions" }, head, rows);
  }

  // accuracy of each version over time (line) and the examples it was trained on (bars)
  function plot(versions) {
    const points = versions.slice().reverse().filter((v) => v.metrics);
    const W = 720, H = 220, L = 44, R = 52, T = 12, B = 28;
    const svg = h("svg", { class: "plot", width: W, height: H, viewBox: `0 0 ${W} ${H}`,
      role: "img", "aria-label": "accuracy and examples per version" });
    if (!points.length) {
      svg.append(h("text", { x: 20, y: 30 }, "no version yet"));
      return svg;
    }
    const acc = points.map((v) => (v.metrics.accuracy !== undefined ? v.metrics.accuracy : v.metrics.micro_f1));
    const counts = points.map((v) => (v.data ? v.data.count : 0));
    const lo = Math.max(0, Math.floor(Math.min(...acc) * 10) / 10 - 0.1), hi = 1;
    const maxCount = Math.max(...counts, 1);
    const x = (i) => L + (points.length === 1 ? (W - L - R) / 2 : (i * (W - L - R)) / (points.length - 1));
    const y = (a) => T + (1 - (a - lo) / (hi - lo)) * (H - T - B);
    for (let k = 0; k <= 4; k++) {
      const a = lo + ((hi - lo) * k) / 4;
      svg.append(h("line", { class: "grid", x1: L, x2: W - R, y1: y(a), y2: y(a) }),
        h("text", { x: 4, y: y(a) + 4 }, (100 * a).toFixed(0) + "%"));
    }
    const barW = Math.max(4, Math.min(24, (W - L - R) / points.length / 2));
    points.forEach((v, i) => {
      const bh = (counts[i] / maxCount) * (H - T - B) * 0.5;
      svg.append(h("rect", { class: "count", x: x(i) - barW / 2, y: H - B - bh, width: barW, height: bh }));
      svg.append(h("text", { x: x(i) - 20, y: H - 8 }, v.version.slice(-8)));
    });
    svg.append(h("text", { x: W - R + 4, y: H - B }, `${maxCount} ex.`));
    svg.append(h("polyline", { class: "acc", points: acc.map((a, i) => `${x(i)},${y(a)}`).join(" ") }));
    acc.forEach((a, i) => svg.append(h("circle", { class: "acc-dot", cx: x(i), cy: y(a), r: 4 },
      h("title", {}, `${points[i].version}: ${pct(a)}, ${counts[i]} examples`))));
    return svg;
  }

  function queueCard(name, view) {
    const settings = (view.settings && view.settings.effective) || {};
    const card = h("div", { class: "card" });
    const store = h("input", { type: "checkbox", id: "store-texts", checked: settings.store_texts });
    const strategy = h("select", { id: "query-strategy" },
      ["margin", "entropy", "diverse"].map((s) => h("option", { value: s, selected: s === settings.query_strategy }, s)));
    const save = h("button", { onclick: (e) => act(e.target, () => api("PUT", `/models/${path(name)}/settings`,
      { store_texts: store.checked, query_strategy: strategy.value }), "settings saved") }, "Save");
    const counts = h("span", { class: "muted" }, "");
    api("GET", `/models/${path(name)}/queue?limit=1`).then((q) => {
      const c = q.counts;
      counts.textContent = `${c.open} open (${c.leased} leased), ${c.answered} answered, ${c.skipped} skipped`;
    }).catch((error) => { counts.textContent = Refit.explain(error); });
    card.append(h("div", { class: "row" }, h("label", {}, store, " queue served texts worth a label"),
      h("label", {}, "strategy ", strategy), save), h("div", { class: "row" }, counts));
    return card;
  }

  function uploadCard(name) {
    const text = h("textarea", { id: "upload-text", placeholder: "text,label\nmy card is lost,lost_card" });
    const format = h("select", { id: "upload-format" },
      h("option", { value: "text/csv" }, "CSV"), h("option", { value: "application/x-ndjson" }, "JSONL"));
    const retrain = h("button", { class: "primary", onclick: (e) => act(e.target, async () => {
      const job = await api("POST", `/retrain/submit?model=${encodeURIComponent(name)}&mode=append`,
        text.value, format.value);
      location.hash = "#/jobs/" + encodeURIComponent(name);
      return job;
    }, "retrain queued") }, "Retrain with these examples");
    const pool = h("button", { onclick: (e) => act(e.target, async () => {
      const r = await api("POST", `/models/${path(name)}/pool`, text.value, format.value);
      Refit.toast(`${r.accepted} texts queued for labeling (${r.already_queued} already there)`);
    }) }, "Add unlabeled texts to the labeling pool");
    return h("div", { class: "card" }, h("p", { class: "muted" },
      "Labeled examples (CSV text,label or JSONL) retrain the model; unlabeled texts (a text column) go to the labeling queue."),
    text, h("div", { class: "row" }, format, retrain, pool));
  }

  // -- jobs -----------------------------------------------------------------------------
  route(/^\/jobs(?:\/([^/]+))?$/, async (main, name) => {
    const query = name ? "?model=" + encodeURIComponent(name) : "";
    const table = h("table", { id: "jobs" });
    main.replaceChildren(h("h1", {}, "Jobs" + (name ? " of " + name : "")), table);
    const refresh = async () => {
      const { jobs } = await api("GET", "/jobs" + query);
      table.replaceChildren(h("tr", {}, ...["job", "state", "phase", "progress", "message",
        "created", ""].map((t) => h("th", {}, t))), jobs.map(jobRow));
    };
    await refresh();
    const timer = setInterval(() => refresh().catch(() => {}), 2000);
    onLeave(() => clearInterval(timer));
  });

  function jobRow(job) {
    const active = job.state === "queued" || job.state === "running";
    const retryable = ["failed", "cancelled", "interrupted"].includes(job.state);
    return h("tr", {},
      h("td", {}, job.id.slice(0, 12), h("div", { class: "muted" }, job.model)),
      h("td", {}, job.state),
      h("td", {}, job.phase),
      h("td", {}, h("div", { class: "bar" }, h("div", { "data-f": job.fraction })),
        `${Math.round(100 * job.fraction)}%`),
      h("td", { class: "reason" }, job.error || job.message || ""),
      h("td", {}, when(job.created_at)),
      h("td", {},
        active ? h("button", { onclick: (e) => act(e.target, () => api("POST", `/jobs/${path(job.id)}/cancel`), "cancel requested") }, "Cancel") : "",
        retryable ? h("button", { onclick: (e) => act(e.target, () => api("POST", `/jobs/${path(job.id)}/retry`), "retry queued") }, "Retry") : ""));
  }

  // progress bars: widths through the CSSOM (allowed by the CSP, unlike style attributes)
  new MutationObserver(() => {
    for (const bar of document.querySelectorAll(".bar > div[data-f]")) {
      bar.style.width = `${Math.round(100 * Number(bar.getAttribute("data-f")))}%`;
    }
  }).observe(document.documentElement, { childList: true, subtree: true });
})();
