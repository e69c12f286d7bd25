// The glossrec page: a client of the service's own JSON API (GET /health, GET /items,
// POST /recommend, POST and DELETE /items, GET /report), nothing more. Every URL is relative,
// so the page works behind a proxy prefix (--root-path). Every text from the service is put in
// the page with textContent, never parsed as HTML. The API key lives in one variable of this
// script: it is never written to storage, cookies or the URL, and a reload forgets it.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const SOURCE_LABELS = { lis: "LIS", gloss: "LM text", sasrec: "SASRec", itemknn: "item-kNN", pop: "Popularity" };
  const sourceLabel = (name) => SOURCE_LABELS[name] || name;

  let apiKey = null;          // typed into the page, kept here only
  let health = null;          // the last GET /health
  const history = [];         // [{item_id, title} | {title, free: true}], oldest first
  let lastRun = false;        // whether recommendations are on show (re-run after a catalog write)
  const addedHere = new Set(); // ids added from this page: flagged "new" in the results

  // ---- talking to the service -------------------------------------------------------------

  /** One API call; resolves to {ok, status, body}, body being the service's JSON (or an error
   *  body made here when the service cannot be reached or did not answer JSON). */
  async function api(method, path, { body, key, signal } = {}) {
    const headers = { Accept: "application/json" };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    if (key) headers["X-API-Key"] = key;
    let res;
    try {
      res = await fetch(path, { method, headers, signal, cache: "no-store",
        body: body === undefined ? undefined : JSON.stringify(body) });
    } catch (e) {
      if (e.name === "AbortError") throw e;
      return { ok: false, status: 0, body: { error: "cannot reach the service", detail: String(e.message || e) } };
    }
    let json = null;
    try { json = await res.json(); } catch (_) { /* not JSON */ }
    if (json === null || typeof json !== "object") {
      json = res.ok ? {} : { error: `HTTP ${res.status} ${res.statusText}`, detail: null };
    }
    return { ok: res.ok, status: res.status, body: json };
  }

  /** The service's error body {error, detail} as readable lines. */
  function errorLines(status, body) {
    const head = (status ? `${status}: ` : "") + (body.error || "request failed");
    const d = body.detail;
    const lines = [];
    if (Array.isArray(d)) {
      for (const x of d) lines.push(x && x.field ? `${x.field}: ${x.message}` : JSON.stringify(x));
      if (lines.length === 1 && head.includes(lines[0])) lines.length = 0;  // already in the head line
    } else if (d && Array.isArray(d.unknown_ids)) {
      lines.push(`unknown ids: ${d.unknown_ids.join(", ")}`);
    } else if (d && typeof d === "object") {
      lines.push(JSON.stringify(d));
    } else if (d) {
      lines.push(String(d));
    }
    return [head, ...lines];
  }

  function showMsg(el, kind, lines) {
    el.replaceChildren();
    el.className = `msg ${kind}`;
    const [head, ...rest] = Array.isArray(lines) ? lines : [lines];
    const strong = document.createElement("strong");
    strong.textContent = head;
    el.append(strong);
    if (rest.length) {
      const ul = document.createElement("ul");
      for (const line of rest) { const li = document.createElement("li"); li.textContent = line; ul.append(li); }
      el.append(ul);
    }
    el.hidden = false;
  }

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }

  // ---- run info ---------------------------------------------------------------------------

  function modeLabel(h) {
    const comps = h.components || [];
    if (comps.length > 1) return "Hybrid: " + comps.map(sourceLabel).join(" + ");
    return h.mode === "lm" ? "LM (GLoSS)" : "LIS";
  }

  async function loadHealth() {
    const r = await api("GET", "health");
    const info = $("run-info");
    if (!r.ok) { info.textContent = errorLines(r.status, r.body)[0]; info.classList.add("bad"); return; }
    health = r.body;
    info.classList.remove("bad");
    renderRunInfo();
    const lim = health.limits || {};
    if (lim.max_k) $("k").max = String(lim.max_k);
    if (!apiKey) $("key-state").textContent = keyNeed();
  }

  function keyNeed() {
    if (!health) return "not set";
    return health.writes_need_key ? "needed to add or remove items" : "not needed: this service's writes are open";
  }

  function renderRunInfo() {
    const info = $("run-info");
    info.replaceChildren(
      el("span", "badge mode", modeLabel(health)),
      el("span", null, `${Number(health.items).toLocaleString("en")} items`),
      el("span", null, health.retriever),
      el("span", "version", `version ${health.catalog_version}`));
  }

  // ---- history ----------------------------------------------------------------------------

  function renderHistory() {
    const ol = $("history");
    ol.replaceChildren();
    history.forEach((h, i) => {
      const li = el("li", h.free ? "free" : "");
      const text = el("div", "text");
      text.append(el("span", "title", h.title));
      text.append(el("span", "id", h.free ? "free text" : h.item_id));
      const rm = el("button", "ghost small remove", "×");
      rm.type = "button";
      rm.title = "Remove from history";
      rm.setAttribute("aria-label", `Remove ${h.title} from history`);
      rm.addEventListener("click", () => { history.splice(i, 1); renderHistory(); });
      li.append(el("span", "pos", String(i + 1)), text, rm);
      ol.append(li);
    });
    $("history-empty").hidden = history.length > 0;
  }

  function addToHistory(entry) {
    history.push(entry);
    renderHistory();
  }

  // ---- type-ahead over GET /items ----------------------------------------------------------

  let searchSeq = 0;
  let searchTimer = null;
  let active = -1;
  let suggestions = [];

  function closeSuggestions() {
    $("suggestions").hidden = true;
    $("search").setAttribute("aria-expanded", "false");
    active = -1;
  }

  async function runSearch() {
    const q = $("search").value;
    const seq = ++searchSeq;
    if (!q.trim()) { suggestions = []; closeSuggestions(); $("search-info").textContent = ""; return; }
    const r = await api("GET", `items?q=${encodeURIComponent(q)}&limit=8`);
    if (seq !== searchSeq) return;  // a newer keystroke has its own answer coming
    const info = $("search-info");
    if (!r.ok) { suggestions = []; closeSuggestions(); info.textContent = errorLines(r.status, r.body).join(" — "); return; }
    suggestions = r.body.items;
    const ul = $("suggestions");
    ul.replaceChildren();
    suggestions.forEach((it, i) => {
      const li = el("li");
      li.setAttribute("role", "option");
      li.dataset.itemId = it.item_id;
      li.append(el("span", "title", it.title), el("span", "id", it.item_id));
      li.addEventListener("mousedown", (e) => { e.preventDefault(); pick(i); });
      ul.append(li);
    });
    active = suggestions.length ? 0 : -1;
    highlight();
    ul.hidden = suggestions.length === 0;
    $("search").setAttribute("aria-expanded", String(!ul.hidden));
    info.textContent = r.body.matches === 0 ? "No title matches."
      : r.body.matches > suggestions.length ? `${r.body.matches.toLocaleString("en")} matches, showing the best ${suggestions.length}.`
      : `${r.body.matches} match${r.body.matches === 1 ? "" : "es"}.`;
  }

  function highlight() {
    [...$("suggestions").children].forEach((li, i) => li.classList.toggle("active", i === active));
  }

  function pick(i) {
    const it = suggestions[i];
    if (!it) return;
    addToHistory({ item_id: it.item_id, title: it.title });
    $("search").value = "";
    $("search-info").textContent = "";
    suggestions = [];
    $("suggestions").replaceChildren();
    closeSuggestions();
    $("search").focus();
  }

  // ---- recommendations --------------------------------------------------------------------

  let inflight = null;

  function requestBody() {
    const raw = $("k").value.trim();
    // The service validates k: anything that is not a whole number goes as typed, to be refused
    // with the service's own message.
    const k = /^-?\d+$/.test(raw) ? Number(raw) : raw;
    return {
      history: history.map((h) => (h.free ? { title: h.title } : h.item_id)),
      k,
      exclude_history: $("exclude").checked,
    };
  }

  async function recommend() {
    if (inflight) inflight.abort();
    const ctrl = new AbortController();
    inflight = ctrl;
    const body = requestBody();
    const t0 = performance.now();
    const lm = health && health.mode === "lm";
    const busyText = $("busy-text");
    const tick = () => {
      const s = ((performance.now() - t0) / 1000).toFixed(1);
      busyText.textContent = lm ? `The model is writing titles… ${s} s` : `Searching… ${s} s`;
    };
    tick();
    const timer = setInterval(tick, 100);
    $("busy").hidden = false;
    $("recommend").disabled = true;
    document.querySelector(".results-card").classList.add("loading");
    try {
      const r = await api("POST", "recommend", { body, signal: ctrl.signal });
      const ms = performance.now() - t0;
      if (!r.ok) {
        showMsg($("rec-error"), "error", errorLines(r.status, r.body));
        return;
      }
      $("rec-error").hidden = true;
      renderResults(r.body, ms);
      lastRun = true;
    } catch (e) {
      if (e.name !== "AbortError") throw e;
      showMsg($("rec-error"), "warn", "Cancelled. (The service still finishes the request.)");
    } finally {
      clearInterval(timer);
      if (inflight === ctrl) {
        inflight = null;
        $("busy").hidden = true;
        $("recommend").disabled = false;
        document.querySelector(".results-card").classList.remove("loading");
      }
    }
  }

  function renderResults(res, ms) {
    const tbody = $("results").querySelector("tbody");
    tbody.replaceChildren();
    const lm = res.mode === "lm";
    for (const it of res.items) {
      const tr = el("tr");
      tr.dataset.itemId = it.item_id;
      const item = el("td", "item");
      const title = el("div", "title", it.title);
      title.title = it.title;
      const id = el("div", "id", it.item_id);
      if (addedHere.has(it.item_id)) id.append(el("span", "badge new", "added here"));
      item.append(title, id);
      if (lm && it.queries && it.queries.length) {
        item.append(el("div", "via", "found by: " + it.queries.join(" · ")));
      }
      const from = el("td", "from");
      for (const s of it.sources || []) from.append(el("span", `badge src src-${s}`, sourceLabel(s)));
      const add = el("button", "ghost small", "+ history");
      add.type = "button";
      add.title = "Add to the history";
      add.addEventListener("click", () => addToHistory({ item_id: it.item_id, title: it.title }));
      const act = el("td", "act");
      act.append(add);
      tr.append(el("td", "num rank", String(it.rank)), item, el("td", "num score", it.score.toFixed(4)), from, act);
      tbody.append(tr);
    }
    $("results").hidden = res.items.length === 0;
    $("results-empty").hidden = res.items.length > 0;
    $("results-empty").textContent = res.items.length ? "" : "No items found for this history.";

    const texts = $("lm-texts");
    texts.hidden = !lm;
    if (lm) {
      const ol = $("lm-texts-list");
      ol.replaceChildren(...res.queries.map((q) => el("li", null, q)));
    }
    $("rec-meta").textContent =
      `${res.items.length} items · ${res.mode.toUpperCase()} · ${res.catalog_version} · ${(ms / 1000).toFixed(2)} s`;
  }

  // ---- the live catalog -------------------------------------------------------------------

  function setKey() {
    const v = $("api-key").value.trim();
    $("api-key").value = "";
    apiKey = v || null;
    $("api-key").placeholder = apiKey ? "•••••• (type to replace)" : "Kept in this page only, never saved";
    $("forget-key").hidden = !apiKey;
    $("key-state").textContent = apiKey ? "set: kept in this page only, forgotten on reload" : keyNeed();
    $("key-state").classList.toggle("set", Boolean(apiKey));
    catalogMsg("info", apiKey ? "Key set. Writes from this page send it; the service checks it." : "Key forgotten.");
  }

  function catalogMsg(kind, lines) { showMsg($("catalog-msg"), kind, lines); }

  async function afterWrite(r, verb) {
    if (!r.ok) { catalogMsg("error", errorLines(r.status, r.body)); return; }
    const b = r.body;
    const ids = [...b.added, ...b.replaced, ...b.removed];
    catalogMsg("ok", `${verb} ${ids.join(", ")}. The catalog now holds ${b.items.toLocaleString("en")} items (${b.catalog_version}).`);
    if (health) { health.items = b.items; health.catalog_version = b.catalog_version; renderRunInfo(); }
    if (lastRun && !inflight) await recommend();  // show what the change does, at once
  }

  async function addItem() {
    const item_id = $("new-id").value;
    const title = $("new-title").value;
    const body = { item_id, title };
    const rawAttrs = $("new-attrs").value.trim();
    if (rawAttrs) {
      try { body.attributes = JSON.parse(rawAttrs); } catch (e) {
        catalogMsg("error", ["Attributes are not valid JSON", String(e.message || e)]);
        return;
      }
    }
    const r = await api("POST", "items", { body, key: apiKey });
    if (r.ok) {
      for (const id of r.body.added) addedHere.add(id);
      for (const id of r.body.replaced) addedHere.add(id);
      $("new-id").value = ""; $("new-title").value = ""; $("new-attrs").value = "";
    }
    await afterWrite(r, r.ok && r.body.replaced.length ? "Replaced" : "Added");
  }

  async function removeItem() {
    const id = $("remove-id").value;
    if (!id.trim()) { catalogMsg("error", "Give the id of the item to remove."); return; }
    const r = await api("DELETE", `items/${encodeURIComponent(id)}`, { key: apiKey });
    if (r.ok) { addedHere.delete(id); $("remove-id").value = ""; }
    await afterWrite(r, "Removed");
  }

  // ---- the report view --------------------------------------------------------------------

  const fmt = (x) => (x === null || x === undefined ? "–" : x.toFixed(4));

  async function loadReport() {
    const r = await api("GET", "report");
    const tables = $("report-tables");
    tables.replaceChildren();
    $("report-figure").hidden = true;
    if (!r.ok) { showMsg($("report-error"), "error", errorLines(r.status, r.body)); return; }
    $("report-error").hidden = true;
    const rep = r.body;
    $("report-run").textContent = rep.run || "";
    $("report-empty").hidden = rep.results.length > 0;
    if (rep.results.length) {
      const names = [...new Set(rep.results.flatMap((x) => x.metrics.map((m) => m.name)))];
      tables.append(el("h3", null, "Overall, with 95% bootstrap confidence intervals over users"));
      const t = el("table", "report");
      const head = el("tr");
      head.append(el("th", null, "result"), el("th", "num", "users"), ...names.map((n) => el("th", "num", n)));
      t.append(el("thead")); t.tHead.append(head);
      const tb = el("tbody");
      for (const res of rep.results) {
        const tr = el("tr");
        const name = el("td", "name", res.name);
        if (res.folder !== ".") name.append(el("span", "id", res.folder));
        tr.append(name, el("td", "num", res.users.toLocaleString("en")));
        for (const n of names) {
          const m = res.metrics.find((x) => x.name === n);
          const td = el("td", "num");
          if (m) {
            td.append(el("div", "mean", fmt(m.mean)));
            if (m.ci_low !== null) td.append(el("div", "ci", `[${fmt(m.ci_low)}, ${fmt(m.ci_high)}]`));
          } else td.textContent = "–";
          tr.append(td);
        }
        tb.append(tr);
      }
      t.append(tb);
      tables.append(t);
      const segs = rep.results.filter((x) => x.segments.length);
      if (segs.length) {
        tables.append(el("h3", null, "Per user segment (means)"));
        const st = el("table", "report");
        const sh = el("tr");
        const segNames = ["recall@5", "ndcg@5", "recall@10", "ndcg@10"].filter((n) => names.includes(n));
        sh.append(el("th", null, "result"), el("th", null, "segment"), el("th", "num", "users"), ...segNames.map((n) => el("th", "num", n)));
        st.append(el("thead")); st.tHead.append(sh);
        const sb = el("tbody");
        for (const res of segs) {
          for (const g of res.segments) {
            const tr = el("tr");
            tr.append(el("td", "name", res.name), el("td", null, g.name), el("td", "num", g.users.toLocaleString("en")),
              ...segNames.map((n) => el("td", "num", fmt(g.metrics[n]))));
            sb.append(tr);
          }
        }
        st.append(sb);
        tables.append(st);
      }
    }
    if (rep.report_png) {
      $("report-png").src = `report.png?t=${Date.now()}`;
      $("report-figure").hidden = false;
    }
  }

  // ---- views and wiring -------------------------------------------------------------------

  function route() {
    const report = location.hash === "#report";
    $("recommend-view").hidden = report;
    $("report-view").hidden = !report;
    $("tab-recommend").classList.toggle("active", !report);
    $("tab-report").classList.toggle("active", report);
    if (report) loadReport();
  }

  function wire() {
    const search = $("search");
    search.addEventListener("input", () => { clearTimeout(searchTimer); searchTimer = setTimeout(runSearch, 120); });
    search.addEventListener("keydown", (e) => {
      const n = suggestions.length;
      if (e.key === "ArrowDown" && n) { active = (active + 1) % n; highlight(); e.preventDefault(); }
      else if (e.key === "ArrowUp" && n) { active = (active - 1 + n) % n; highlight(); e.preventDefault(); }
      else if (e.key === "Enter" && active >= 0 && !$("suggestions").hidden) { pick(active); e.preventDefault(); }
      else if (e.key === "Escape") closeSuggestions();
    });
    search.addEventListener("blur", () => setTimeout(closeSuggestions, 100));
    search.addEventListener("focus", () => { if (suggestions.length) { $("suggestions").hidden = false; } });

    const addFree = () => {
      const t = $("free-title").value;
      if (!t.trim()) return;
      addToHistory({ title: t, free: true });
      $("free-title").value = "";
    };
    $("add-free").addEventListener("click", addFree);
    $("free-title").addEventListener("keydown", (e) => { if (e.key === "Enter") addFree(); });

    $("recommend").addEventListener("click", recommend);
    $("k").addEventListener("keydown", (e) => { if (e.key === "Enter") recommend(); });
    $("clear-history").addEventListener("click", () => { history.length = 0; renderHistory(); });
    $("cancel").addEventListener("click", () => inflight && inflight.abort());

    $("use-key").addEventListener("click", setKey);
    $("api-key").addEventListener("keydown", (e) => { if (e.key === "Enter") setKey(); });
    $("forget-key").addEventListener("click", () => { $("api-key").value = ""; setKey(); });
    $("add-item").addEventListener("click", addItem);
    $("remove-item").addEventListener("click", removeItem);
    $("remove-id").addEventListener("keydown", (e) => { if (e.key === "Enter") removeItem(); });

    window.addEventListener("hashchange", route);
  }

  wire();
  renderHistory();
  route();
  loadHealth();
})();
