/* dr_exp ui: the dashboard's pages. Each page draws the JSON embedded in it, then
 * fetches the same JSON from /api/... again (every 2 s while jobs run, 5 s for the
 * overview, whose counts scan the jobs table; every 10 s otherwise) and redraws only
 * what changed: the page never reloads.
 *
 * Actions (cancel, retry, priority) exist only when the server was started with
 * --allow-actions. They send the token of that start, which arrives once in the
 * URL that dr_exp ui printed, is kept for this origin and is taken off the address bar.
 */
"use strict";

(() => {
  const {el, fmt, when, duration, table, badge, countsBar, pageData, plot, sections, section,
    curvePlots, renderSweep, PALETTE} = drExp;
  const page = document.body.dataset.page;
  const actionsOn = document.body.dataset.actions === "on";
  const TOKEN_KEY = "dr_exp_token";
  const FAST_MS = 2000, SLOW_MS = 10000;

  const here = new URLSearchParams(location.search);
  if (here.has("token")) {
    localStorage.setItem(TOKEN_KEY, here.get("token"));
    here.delete("token");
    const rest = here.toString();
    history.replaceState(null, "", location.pathname + (rest ? `?${rest}` : "") + location.hash);
  }
  const nav = {job: "jobs", sweep: "overview"}[page] || page;
  const current = document.querySelector(`[data-nav="${nav}"]`);
  if (current) current.classList.add("active");

  const jobHref = (id) => `/jobs/${encodeURIComponent(id)}`;
  const sweepHref = (id) => `/sweeps/${encodeURIComponent(id)}`;
  const query = (params) => {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(params)) if (v !== "" && v !== null && v !== undefined) q.set(k, v);
    const text = q.toString();
    return text ? `?${text}` : "";
  };

  function flash(text, kind) {
    const box = document.getElementById("flash");
    box.hidden = false;
    box.className = `flash ${kind}`;
    box.textContent = text;
  }

  function showLive(live, problem) {
    const node = document.getElementById("live");
    node.className = `live ${problem ? "problem" : live ? "on" : "idle"}`;
    node.textContent = problem ? `cannot refresh: ${problem}` :
      live ? "live: updating while jobs run" : "up to date; checking every 10 s";
  }

  async function getJSON(url) {
    const response = await fetch(url, {headers: {accept: "application/json"}});
    const body = await response.json().catch(() => ({error: `HTTP ${response.status}`}));
    if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
    return body;
  }

  /* POST an action with the token; says how it went in the flash line. */
  async function act(action, body) {
    const response = await fetch(`/api/actions/${action}`, {
      method: "POST",
      headers: {"content-type": "application/json", "x-dr-exp-token": localStorage.getItem(TOKEN_KEY) || ""},
      body: JSON.stringify(body),
    });
    const out = await response.json().catch(() => ({error: `HTTP ${response.status}`}));
    flash(response.ok ? out.message : out.error, response.ok ? "ok" : "error");
    return response.ok;
  }

  /* Draw data now, then keep it fresh from url() until the page goes away. */
  function keepFresh(url, draw, data, fastMs = FAST_MS) {
    let timer = null;
    draw(data);
    showLive(data.live, null);
    const tick = async () => {
      clearTimeout(timer);
      try {
        data = await getJSON(url());
        draw(data);
        showLive(data.live, null);
      } catch (problem) {
        showLive(false, problem.message);
      }
      timer = setTimeout(tick, data.live ? fastMs : SLOW_MS);
    };
    timer = setTimeout(tick, data.live ? fastMs : SLOW_MS);
    return tick;  // call it to refresh now
  }

  function actionBar(ids, refresh, statuses) {
    if (!actionsOn) return null;
    const chosen = () => ids();
    const run = async (action, body) => {
      if (!chosen().length) return flash("select jobs first", "error");
      if (await act(action, Object.assign({ids: chosen()}, body))) refresh();
    };
    const priority = el("input", {type: "number", min: 0, max: 1000, value: 500, class: "priority-input",
      "aria-label": "priority"});
    const can = (what) => !statuses || statuses().some((s) => what.includes(s));
    return el("div", {class: "actions"},
      can(["pending", "running", "cancelling"]) ?
        el("button", {type: "button", "data-action": "cancel", onclick: () => run("cancel", {})}, "Cancel") : null,
      can(["failed", "cancelled"]) ?
        el("button", {type: "button", "data-action": "retry", onclick: () => run("retry", {})}, "Retry") : null,
      el("span", {class: "control"}, "priority ", priority,
        el("button", {type: "button", "data-action": "priority",
          onclick: () => run("priority", {set: Number(priority.value)})}, "Set")));
  }

  // -- the overview: experiments and sweeps ---------------------------------------------
  function overview(view, first) {
    keepFresh(() => "/api/overview", (data) => sections(view, [
      {name: "experiments", key: data.experiments, build: () => section("Experiments", null,
        data.experiments.length ? table([
          {label: "experiment", value: (e) => e.name,
            cell: (e) => el("a", {href: `/jobs${query({experiment: e.name})}`}, e.name)},
          {label: "progress", value: (e) => (e.counts.completed || 0) / e.total,
            cell: (e) => countsBar(e.counts, e.total)},
          {label: "jobs", value: (e) => e.total, cls: "num"},
        ], data.experiments) : el("p", {class: "hint"},
          "No jobs yet: run a sweep with hydra/launcher=dr_exp."))},
      {name: "sweeps", key: data.sweeps, build: () => section("Sweeps", "Newest first.",
        data.sweeps.length ? table([
          {label: "sweep", value: (s) => s.id, cell: (s) => el("a", {href: sweepHref(s.id)}, `sweep ${s.id}`)},
          {label: "experiment", value: (s) => s.experiment},
          {label: "app", value: (s) => s.app},
          {label: "folder", value: (s) => s.folder, cls: "path"},
          {label: "created", value: (s) => s.created, cell: (s) => when(s.created)},
          {label: "progress", value: (s) => (s.counts.completed || 0) / Math.max(s.total, 1),
            cell: (s) => countsBar(s.counts, s.total)},
          {label: "", value: () => "", cell: (s) => [
            el("a", {href: `/jobs${query({sweep: s.id})}`}, "jobs"), " · ",
            el("a", {href: `/timeline${query({sweep: s.id})}`}, "timeline")]},
        ], data.sweeps) : el("p", {class: "hint"}, "No sweeps yet."))},
      {name: "db", key: data.db, build: () => el("p", {class: "hint"}, `database: ${data.db}`)},
    ]), first, 5000);
  }

  // -- the jobs table: filters, sorting and paging happen on the server --------------------
  function jobsPage(view, data) {
    const filters = Object.fromEntries(new URLSearchParams(location.search));
    const selected = new Set();
    let refresh = () => {};
    const input = (name, placeholder, size) => el("input", {name, placeholder, size: size || 12,
      value: filters[name] || ""});
    const form = el("form", {class: "filters", onsubmit: (e) => {
      e.preventDefault();
      const values = Object.fromEntries(new FormData(form));
      values.page = 1;
      Object.keys(filters).forEach((k) => delete filters[k]);
      Object.assign(filters, values);
      history.replaceState(null, "", `/jobs${query(filters)}`);
      refresh();
    }},
    el("label", {class: "control"}, "status ", el("select", {name: "status"},
      el("option", {value: ""}, "all"),
      data.statuses.map((s) => el("option", {value: s, selected: filters.status === s}, s)))),
    el("label", {class: "control"}, "experiment ", input("experiment", "any")),
    el("label", {class: "control"}, "tag ", input("tag", "any", 10)),
    el("label", {class: "control"}, "sweep ", input("sweep", "id or folder", 10)),
    el("label", {class: "control"}, "failure ", el("select", {name: "failure"},
      el("option", {value: ""}, "any"),
      data.failures.map((f) => el("option", {value: f, selected: filters.failure === f}, f)))),
    el("label", {class: "control"}, "error contains ", input("error", "text", 16)),
    el("label", {class: "control"}, "sort ", el("select", {name: "sort"},
      data.sorts.map((s) => el("option", {value: s, selected: (filters.sort || "id") === s}, s)))),
    el("label", {class: "control"}, el("select", {name: "order", "aria-label": "order"},
      el("option", {value: "asc", selected: filters.order !== "desc"}, "ascending"),
      el("option", {value: "desc", selected: filters.order === "desc"}, "descending"))),
    el("label", {class: "control"}, "per page ", el("select", {name: "per"},
      data.sizes.map((n) => el("option", {value: n, selected: String(data.per) === String(n)}, n)))),
    el("button", {type: "submit"}, "Apply"));
    const head = el("div");
    const body = el("div");
    view.replaceChildren(section("Jobs", null, form, actionBar(() => [...selected], () => refresh()), head, body));
    const goto = (n) => { filters.page = n; history.replaceState(null, "", `/jobs${query(filters)}`); refresh(); };
    const draw = (d) => {
      head.replaceChildren(el("div", {class: "pager"},
        el("span", {class: "total"}, `${d.total} job(s) match`),
        el("button", {type: "button", disabled: d.page <= 1, onclick: () => goto(d.page - 1)}, "‹ previous"),
        ` page ${d.page} of ${d.pages} `,
        el("button", {type: "button", disabled: d.page >= d.pages, onclick: () => goto(d.page + 1)}, "next ›")));
      const columns = [
        {label: "id", value: (j) => j.id, cell: (j) => el("a", {href: jobHref(j.id)}, j.id), cls: "num"},
        {label: "experiment", value: (j) => j.experiment},
        {label: "sweep", value: (j) => j.sweep_id, cell: (j) => el("a", {href: sweepHref(j.sweep_id)}, j.sweep_id)},
        {label: "status", value: (j) => j.status, cell: (j) => badge(j.status)},
        {label: "priority", value: (j) => j.priority, cls: "num"},
        {label: "attempts", value: (j) => j.attempts, cls: "num"},
        {label: "overrides", value: (j) => j.overrides.join(" "), cls: "overrides"},
        {label: "tags", value: (j) => j.tags.join(", ")},
        {label: "worker", value: (j) => j.worker},
        {label: "started", value: (j) => j.started, cell: (j) => when(j.started)},
        {label: "ended", value: (j) => j.ended, cell: (j) => when(j.ended)},
        {label: "result / error", value: (j) => j.result, cls: "result",
          cell: (j) => (j.failure ? [el("span", {class: "failure"}, j.failure), " ", j.result || ""] : j.result || "")},
      ];
      if (actionsOn) {
        columns.unshift({label: "", value: () => "", cell: (j) => el("input", {type: "checkbox",
          "aria-label": `select job ${j.id}`, checked: selected.has(j.id),
          onchange: (e) => (e.target.checked ? selected.add(j.id) : selected.delete(j.id))})});
      }
      body.replaceChildren(d.jobs.length ? table(columns, d.jobs, {rowClass: (j) => `row-${j.status}`}) :
        el("p", {class: "hint"}, "No job matches."));
    };
    refresh = keepFresh(() => `/api/jobs${query(filters)}`, draw, data);
  }

  // -- one job ---------------------------------------------------------------------------
  function pre(text, cls) {
    return el("pre", {class: cls}, text);
  }

  function jobPage(view, data) {
    let refresh = () => {};
    const draw = (d) => {
      const j = d.job;
      const elapsed = j.started ? ((j.ended || Date.now() / 1000) - j.started) : null;
      const folderNote = {
        none: "(none yet: the job has not started)",
        missing: "(this folder no longer exists: moved or deleted)",
        ok: "",
      }[d.folder_state];
      const result = j.status === "failed" ? j.error : j.return_value;
      sections(view, [
        {name: "head", key: [j, d.folder, d.folder_state], build: () => el("section", {class: "card"},
          el("h1", {}, `Job ${j.id} `, badge(j.status)),
          facts([
            ["experiment", j.experiment], ["sweep", el("a", {href: sweepHref(j.sweep_id)}, `sweep ${j.sweep_id}`)],
            ["app", `${j.kind || ""} ${j.app || ""}`], ["job number", j.job_num],
            ["priority", j.priority], ["tags", j.tags.join(", ") || "-"],
            ["attempts", `${j.attempts} of ${j.max_attempts}`], ["worker", j.worker ? `${j.worker} on ${j.host}` : "-"],
            ["created", when(j.created)], ["started", when(j.started) || "-"],
            ["ended", when(j.ended) || "-"], ["elapsed", duration(elapsed) || "-"],
            ["output folder", [el("span", {class: "path"}, d.folder || ""), " ", folderNote]],
            ["result", result === null || result === undefined ? "-" : pre(fmt(result), "result")],
            ...(j.failure ? [["failure class", el("span", {class: "failure"}, j.failure)]] : []),
          ]),
          actionBar(() => [j.id], () => refresh(), () => [j.status]))},
        {name: "overrides", key: j.overrides, build: () => section("Overrides", null,
          j.overrides.length ? pre(j.overrides.join("\n"), "overrides") : el("p", {class: "hint"}, "none"))},
        {name: "attempts", key: d.attempts, build: () => section("Attempts", null, d.attempts.length ? table([
          {label: "#", value: (a) => a.attempt, cls: "num"},
          {label: "worker", value: (a) => a.worker}, {label: "host", value: (a) => a.host},
          {label: "started", value: (a) => a.started, cell: (a) => when(a.started)},
          {label: "ended", value: (a) => a.ended, cell: (a) => when(a.ended)},
          {label: "took", value: (a) => (a.ended || Date.now() / 1000) - a.started,
            cell: (a) => duration((a.ended || Date.now() / 1000) - a.started)},
          {label: "outcome", value: (a) => a.outcome || "running", cell: (a) => badge(a.outcome || "running")},
          {label: "detail", value: (a) => a.detail},
        ], d.attempts) : el("p", {class: "hint"}, "Not run yet."))},
        {name: "error", key: d.error_txt, build: () => (d.error_txt ? section("error.txt", null,
          pre(d.error_txt, "error")) : null)},
        {name: "logs", key: d.logs, build: () => section("Log", Object.keys(d.logs).length ?
          `The last lines${d.live ? ", following the job while it runs" : ""}.` : null,
          Object.keys(d.logs).length ? Object.entries(d.logs).map(([name, text]) =>
            [el("h3", {}, name), pre(text || "(empty)", "log")]) : el("p", {class: "hint"}, "No log file yet.")),
        after: (node) => node.querySelectorAll("pre.log").forEach((p) => { p.scrollTop = p.scrollHeight; })},
        {name: "curves", key: d.curves, build: () => (d.curves && d.curves.length ?
          section("Curves", "From this job's events.", curvePlots(d.curves, {}, {})) : null)},
        {name: "events", key: [d.events, d.warning], build: () => section(
          `Events (${d.events_total})`, d.events_total > d.events.length ? `the last ${d.events.length}` : null,
          d.warning ? el("p", {class: "warning"}, d.warning) : null,
          d.events.length ? table([
            {label: "time", value: (e) => e.ts, cell: (e) => e.time || when(e.ts)},
            {label: "event", value: (e) => e.event},
            {label: "data", value: (e) => fmt(e.data), cls: "overrides"},
          ], d.events) : el("p", {class: "hint"}, "No StructuredLogger events."))},
        {name: "config", key: d.config, build: () => section("Resolved config (.hydra/config.yaml)", null,
          d.config ? pre(d.config, "config") : el("p", {class: "hint"}, "Composed when the job runs."))},
      ]);
    };
    refresh = keepFresh(() => `/api/jobs/${encodeURIComponent(data.job.id)}`, draw, data);
  }

  function facts(pairs) {
    return el("dl", {class: "facts"}, pairs.map(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
  }

  // -- a sweep's results -------------------------------------------------------------------
  function sweepPage(view, data) {
    const headNode = el("div");
    const body = el("div");
    view.replaceChildren(headNode, body);
    const draw = (d) => {
      const s = d.sweep;
      sections(headNode, [{name: "head", key: s, build: () => el("section", {class: "card"},
        el("h1", {}, `Sweep ${s.id} · ${s.experiment}`),
        facts([["app", `${s.kind} ${s.app || ""}`], ["folder", el("span", {class: "path"}, s.folder || "-")],
          ["created", when(s.created)],
          ["see also", [el("a", {href: `/jobs${query({sweep: s.id})}`}, "its jobs"), " · ",
            el("a", {href: `/timeline${query({sweep: s.id})}`}, "its timeline")]],
          ["a report to mail", s.folder ? el("code", {}, `dr_exp report --sweep ${s.folder} -o report.html`) : "-"]]))}]);
      renderSweep(body, d.analysis, {jobHref, heading: false});
    };
    keepFresh(() => `/api/sweeps/${encodeURIComponent(data.sweep.id)}`, draw, data);
  }

  // -- who ran what, when ------------------------------------------------------------------
  const OUTCOME_COLORS = {
    completed: "#2e7d32", failed: "#c62828", running: "#1565c0", requeued: "#ef6c00",
    lost: "#6d4c41", cancelled: "#757575",
  };

  function localTime(ts) {
    const d = new Date(ts * 1000);
    return `${when(ts)}.${String(d.getMilliseconds()).padStart(3, "0")}`;
  }

  function workerLabel(id, w) {
    if (!w) return id;
    const gpu = w.gpu ? ` · gpu ${w.gpu}` : "";
    const util = w.gpu_util === null || w.gpu_util === undefined ? "" : ` ${Math.round(w.gpu_util)}%`;
    return `${id}${gpu}${util}`;
  }

  function timelinePage(view, data) {
    const filters = Object.fromEntries(new URLSearchParams(location.search));
    const draw = (d) => {
      const labels = {};
      for (const a of d.attempts) labels[a.worker] = workerLabel(a.worker, d.workers[a.worker]);
      const byOutcome = {};
      for (const a of d.attempts) {
        const outcome = a.outcome || (a.ended ? "ended" : "running");
        const end = a.ended || d.now;
        const trace = byOutcome[outcome] || (byOutcome[outcome] = {
          type: "bar", orientation: "h", name: outcome, y: [], x: [], base: [], customdata: [], hovertext: [],
          textposition: "none",
          marker: {color: OUTCOME_COLORS[outcome] || PALETTE[Object.keys(byOutcome).length % PALETTE.length]},
          hovertemplate: "job %{customdata} · %{hovertext}<extra>%{fullData.name}</extra>",
        });
        trace.y.push(labels[a.worker]);
        trace.base.push(localTime(a.started));
        trace.x.push(Math.max((end - a.started) * 1000, 1));
        trace.customdata.push(a.job_id);
        trace.hovertext.push(drExp.plotText(`${a.overrides.join(" ")} (${duration(end - a.started)} on ${a.host})`));
      }
      const workerIds = Object.keys(labels);
      const timelineNode = d.attempts.length ? plot(Object.values(byOutcome), {
        barmode: "overlay", height: 140 + 34 * workerIds.length, title: {text: "Attempts per worker"},
        xaxis: {type: "date", title: {text: "time"}}, yaxis: {automargin: true, type: "category"},
        margin: {l: 20, r: 20, t: 40, b: 50},
      }, (p) => { location.href = jobHref(p.customdata); }) : el("p", {class: "hint"}, "No job has run yet.");
      sections(view, [
        {name: "filters", key: filters, build: () => section("Timeline",
          "Which worker ran which job when; a bar per attempt. GPU utilization is each worker's last heartbeat's.",
          el("form", {class: "filters", method: "get", action: "/timeline"},
            el("label", {class: "control"}, "experiment ", el("input", {name: "experiment", value: filters.experiment || ""})),
            el("label", {class: "control"}, "sweep ", el("input", {name: "sweep", value: filters.sweep || "", size: 10})),
            el("button", {type: "submit"}, "Show")))},
        {name: "plot", key: [d.attempts, d.workers], build: () => el("section", {class: "card wide"},
          timelineNode, d.attempts.length >= d.limit ? el("p", {class: "hint"}, `the latest ${d.limit} attempts`) : null)},
        {name: "workers", key: d.workers, build: () => section("Workers", null, workerIds.length ? table([
          {label: "worker", value: (id) => id},
          {label: "host", value: (id) => (d.workers[id] || {}).host},
          {label: "state", value: (id) => (d.workers[id] || {}).state},
          {label: "gpu", value: (id) => (d.workers[id] || {}).gpu},
          {label: "gpu util", value: (id) => (d.workers[id] || {}).gpu_util,
            cell: (id) => ((d.workers[id] || {}).gpu_util === null || !d.workers[id] ? "-" : `${Math.round(d.workers[id].gpu_util)}%`)},
          {label: "gpu memory", value: (id) => (d.workers[id] || {}).gpu_mem_used_mb,
            cell: (id) => { const w = d.workers[id] || {}; return w.gpu_mem_used_mb === null || w.gpu_mem_used_mb === undefined ? "-" :
              `${(w.gpu_mem_used_mb / 1024).toFixed(1)}/${(w.gpu_mem_total_mb / 1024).toFixed(0)} GiB`; }},
          {label: "last heartbeat", value: (id) => (d.workers[id] || {}).heartbeat, cell: (id) => when((d.workers[id] || {}).heartbeat)},
          {label: "attempts shown", value: (id) => d.attempts.filter((a) => a.worker === id).length, cls: "num"},
        ], workerIds) : el("p", {class: "hint"}, "No workers."))},
      ]);
    };
    keepFresh(() => `/api/timeline${query({experiment: filters.experiment, sweep: filters.sweep})}`, draw, data);
  }

  const view = document.getElementById("view");
  const pages = {overview, jobs: jobsPage, job: jobPage, sweep: sweepPage, timeline: timelinePage};
  if (view && pages[page]) pages[page](view, pageData());
})();
