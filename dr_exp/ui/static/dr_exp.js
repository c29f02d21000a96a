/* dr_exp: the sweep view (tables and plots), shared by the dashboard and the report.
 *
 * It draws what dr_exp/ui/analysis.py computes. Text always goes in through
 * textContent, never innerHTML, and labels given to plotly are escaped, so that
 * nothing in a job's overrides, metrics or errors can become markup.
 */
"use strict";

const drExp = (() => {
  const STATUS_ORDER = [
    "completed", "failed", "cancelled", "cancelling", "running", "pending",
    "missing", "incomplete", "unknown",
  ];
  const PALETTE = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
    "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
  ];
  const PLOT_CONFIG = {
    displaylogo: false, responsive: true, showLink: false, showSendToCloud: false,
    showEditInChartStudio: false, modeBarButtonsToRemove: ["select2d", "lasso2d"],
  };
  const pending = [];

  /* el("a", {href: "/x", class: "c", onclick: fn}, "text", node, ...) */
  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? "" : value);
    }
    for (const child of children.flat(Infinity)) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function fmt(value) {
    if (value === null || value === undefined) return "";
    if (typeof value === "number") {
      if (Number.isInteger(value)) return String(value);
      const size = Math.abs(value);
      if (size !== 0 && (size < 1e-3 || size >= 1e6)) return value.toExponential(3);
      return String(Number(value.toPrecision(4)));
    }
    if (typeof value === "object") return JSON.stringify(value);
    return String(value);
  }

  const pad = (n) => String(n).padStart(2, "0");
  /* An epoch time as local YYYY-MM-DD HH:MM:SS. */
  function when(ts) {
    if (!ts) return "";
    const d = new Date(ts * 1000);
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
      `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  }

  function duration(seconds) {
    if (seconds === null || seconds === undefined) return "";
    const s = Math.max(0, Math.floor(seconds));
    if (s < 60) return `${s}s`;
    if (s < 3600) return `${Math.floor(s / 60)}m${pad(s % 60)}s`;
    return `${Math.floor(s / 3600)}h${pad(Math.floor((s % 3600) / 60))}m`;
  }

  /* Text for plotly, which reads a little HTML in labels: escape it. */
  function plotText(value) {
    return String(value).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
  }

  function compare(a, b) {
    const aNone = a === null || a === undefined || a === "";
    const bNone = b === null || b === undefined || b === "";
    if (aNone || bNone) return aNone - bNone;
    if (typeof a === "number" && typeof b === "number") return a - b;
    return String(a).localeCompare(String(b), undefined, {numeric: true});
  }

  /* A table; columns: [{label, value(row), cell(row) -> node or text, cls}].
   * With opts.sortable, a click on a header sorts by that column. */
  function table(columns, rows, opts = {}) {
    const wrap = el("div", {class: "table-wrap"});
    const state = {col: opts.sortCol === undefined ? null : opts.sortCol, desc: !!opts.desc};
    const limit = opts.limit || Infinity;
    function draw() {
      let shown = rows;
      if (state.col !== null) {
        const column = columns[state.col];
        shown = [...rows].sort((a, b) => {
          const order = compare(column.value(a), column.value(b));
          return state.desc ? -order : order;
        });
      }
      const head = el("tr", {}, columns.map((column, i) => el("th", {
        class: [column.cls, opts.sortable ? "sortable" : null].filter(Boolean).join(" ") || null,
        onclick: opts.sortable ? () => {
          state.desc = state.col === i ? !state.desc : false;
          state.col = i;
          draw();
        } : null,
      }, column.label, state.col === i ? (state.desc ? " ▾" : " ▴") : "")));
      const body = shown.slice(0, limit).map((row) => el("tr",
        {class: opts.rowClass ? opts.rowClass(row) : null},
        columns.map((column) => el("td", {class: column.cls},
          column.cell ? column.cell(row) : fmt(column.value(row))))));
      const more = shown.length > limit ?
        el("p", {class: "hint"}, `showing ${limit} of ${shown.length} rows; sort to see others`) : null;
      wrap.replaceChildren(el("table", {class: "data"}, el("thead", {}, head),
        el("tbody", {}, body)), more || "");
    }
    draw();
    return wrap;
  }

  function badge(status) {
    return el("span", {class: `status s-${status || "unknown"}`}, status || "unknown");
  }

  function countsBar(counts, total) {
    const sum = total || Object.values(counts || {}).reduce((a, b) => a + b, 0);
    const names = STATUS_ORDER.concat(Object.keys(counts || {}).filter((s) => !STATUS_ORDER.includes(s)));
    const bar = el("div", {class: "bar"});
    const words = [];
    for (const name of names) {
      const n = (counts || {})[name];
      if (!n) continue;
      const segment = el("span", {class: `seg s-${name}`, title: `${n} ${name}`});
      segment.style.width = `${(100 * n) / Math.max(sum, 1)}%`;
      bar.append(segment);
      words.push(`${n} ${name}`);
    }
    return el("div", {class: "progress"}, bar, el("span", {class: "counts"}, words.join(" · ") || "no jobs"));
  }

  function pageData() {
    return JSON.parse(document.getElementById("page-data").textContent);
  }

  /* A plot placeholder: drawn by drawPlots() once it is in the page and has a width. */
  function plot(traces, layout, onClick) {
    const div = el("div", {class: "plot"});
    pending.push({div, traces, layout, onClick});
    return div;
  }

  function drawPlots() {
    while (pending.length) {
      const {div, traces, layout, onClick} = pending.shift();
      if (!div.isConnected) continue;
      if (typeof Plotly === "undefined") {
        div.textContent = "plotly.js is missing, so this plot cannot be drawn";
        continue;
      }
      const base = {
        height: 330, margin: {l: 60, r: 20, t: 40, b: 58}, font: {size: 11},
        hovermode: "closest", title: {font: {size: 13}, x: 0.01, xanchor: "left"},
        legend: {font: {size: 10}},
        xaxis: {automargin: true}, yaxis: {automargin: true},
        paper_bgcolor: "#fff", plot_bgcolor: "#fafafa",
      };
      const merged = Object.assign({}, base, layout);
      for (const key of ["title", "legend", "xaxis", "yaxis"]) {
        merged[key] = Object.assign({}, base[key], layout[key]);  // one level deeper
      }
      Plotly.newPlot(div, traces, merged, PLOT_CONFIG).then(() => {
        if (onClick) div.on("plotly_click", (event) => onClick(event.points[0]));
      });
    }
  }

  /* Redraw only the sections whose data changed: [{name, key, build() -> node}]. */
  function sections(root, specs) {
    if (!root.drExpSections) {
      root.replaceChildren();  // the "Loading..." text
      root.drExpSections = {};
    }
    const drawn = root.drExpSections;
    for (const spec of specs) {
      const key = JSON.stringify(spec.key);
      const old = drawn[spec.name];
      if (old && old.key === key) continue;
      const node = spec.build() || el("div");
      node.dataset.section = spec.name;
      if (old && old.node.isConnected) old.node.replaceWith(node);
      else root.append(node);
      drawn[spec.name] = {key, node};
      if (spec.after) spec.after(node);
    }
    drawPlots();
  }

  function section(title, hint, ...body) {
    return el("section", {class: "card"}, el("h2", {}, title), hint ? el("p", {class: "hint"}, hint) : null, body);
  }

  function select(options, value, onchange, label) {
    const node = el("select", {"aria-label": label, onchange: (e) => onchange(e.target.value)},
      options.map(([v, text]) => el("option", {value: v, selected: String(v) === String(value)}, text)));
    return el("label", {class: "control"}, label, " ", node);
  }

  function jobCell(opts, id, label) {
    if (id === null || id === undefined) return label || "";
    return opts.jobHref ? el("a", {href: opts.jobHref(id)}, `#${id}`) : `#${id}`;
  }

  function logAxis(values) {
    const numbers = values.filter((v) => typeof v === "number");
    if (numbers.length !== values.length || numbers.length < 3) return "-";
    const low = Math.min(...numbers), high = Math.max(...numbers);
    return low > 0 && high / low >= 100 ? "log" : "-";
  }

  function groupColors(data) {
    const colors = {};
    (data.groups || []).forEach((g, i) => { colors[g.label] = PALETTE[i % PALETTE.length]; });
    return colors;
  }

  /* Learning-curve plots: curves as analysis.py makes them, one line per job. */
  function curvePlots(curves, colors, opts) {
    return el("div", {class: "plots"}, curves.map((c) => {
      const seen = new Set();
      const traces = c.series.map((s) => {
        const first = !seen.has(s.group);
        seen.add(s.group);
        return {
          type: "scatter", mode: s.x.length > 30 ? "lines" : "lines+markers", x: s.x, y: s.y,
          name: plotText(s.group), legendgroup: s.group, showlegend: first && c.series.length > 1,
          line: {color: colors[s.group] || PALETTE[0], width: 1.5}, marker: {size: 4},
          customdata: s.x.map(() => s.job_id),
          hovertemplate: `job ${s.job_id} · ${plotText(s.label)}<br>${plotText(c.x_name)}=%{x}` +
            `<br>${plotText(c.field)}=%{y:.4g}<extra></extra>`,
        };
      });
      const layout = {
        title: {text: `${plotText(c.event)}: ${plotText(c.field)}`},
        xaxis: {title: {text: plotText(c.x_name)}}, yaxis: {title: {text: plotText(c.field)}},
      };
      return plot(traces, layout, opts.jobHref ? (p) => { location.href = opts.jobHref(p.customdata); } : null);
    }));
  }

  function byParamPlots(data) {
    return el("div", {class: "plots"}, data.by_param.map((p) => {
      const traces = p.traces.map((t, i) => ({
        type: "scatter", mode: "lines+markers", x: t.x, y: t.mean,
        name: plotText(t.name || p.metric), customdata: t.n,
        line: {color: PALETTE[i % PALETTE.length]},
        error_y: {type: "data", array: t.std.map((s) => s || 0), visible: true, thickness: 1.2, width: 4},
        hovertemplate: `${plotText(p.param)}=%{x}<br>${plotText(p.metric)}: %{y:.4g} ` +
          "± %{error_y.array:.3g} (n=%{customdata})<extra></extra>",
      }));
      const xs = p.traces.flatMap((t) => t.x);
      const layout = {
        title: {text: `${plotText(p.metric)} vs ${plotText(p.param)}`},
        showlegend: p.traces.length > 1,
        xaxis: {title: {text: plotText(p.param)}, type: logAxis(xs)},
        yaxis: {title: {text: plotText(p.metric)}},
      };
      return plot(traces, layout);
    }));
  }

  function scatterPlots(data, metric, opts) {
    const rows = data.rows.filter((r) => typeof r.metrics[metric] === "number");
    const params = data.swept.length ? data.swept : [];
    return el("div", {class: "plots"}, params.map((param) => {
      const trace = {
        type: "scatter", mode: "markers", x: rows.map((r) => r.params[param]),
        y: rows.map((r) => r.metrics[metric]), customdata: rows.map((r) => r.job_id),
        text: rows.map((r) => plotText(r.label)),
        marker: {size: 9, opacity: 0.85, color: rows.map((r) => r.metrics[metric]),
          colorscale: "Viridis", reversescale: data.directions[metric] === "min",
          line: {width: 0.5, color: "#333"}},
        hovertemplate: "job %{customdata} · %{text}<br>" + `${plotText(metric)}=%{y:.4g}<extra></extra>`,
      };
      const layout = {
        title: {text: `${plotText(metric)} vs ${plotText(param)}`},
        xaxis: {title: {text: plotText(param)}, type: logAxis(trace.x)},
        yaxis: {title: {text: plotText(metric)}},
      };
      return plot([trace], layout, opts.jobHref ? (p) => { location.href = opts.jobHref(p.customdata); } : null);
    }));
  }

  function resultsTable(data, opts) {
    const columns = [
      {label: "job", value: (r) => r.job_id, cell: (r) => jobCell(opts, r.job_id, r.label)},
      {label: "status", value: (r) => r.status, cell: (r) => badge(r.status)},
      ...data.swept.map((p) => ({label: p, value: (r) => r.params[p], cls: "num"})),
      ...data.columns.map((m) => ({label: m, value: (r) => r.metrics[m], cls: "num metric"})),
    ];
    return table(columns, data.rows, {sortable: true, limit: 1000});
  }

  function groupsTable(data) {
    const columns = [
      ...data.config.map((p) => ({label: p, value: (g) => g.params[p], cls: "num"})),
      {label: "jobs", value: (g) => g.jobs, cls: "num"},
      {label: "completed", value: (g) => g.completed, cls: "num"},
      ...data.metrics.map((m) => ({
        label: `${m} (mean ± std, n)`, value: (g) => g.metrics[m].mean, cls: "num metric",
        cell: (g) => {
          const s = g.metrics[m];
          if (s.mean === null) return "";
          return `${fmt(s.mean)}${s.std === null ? "" : " ± " + fmt(s.std)} (${s.n})`;
        },
      })),
    ];
    return table(columns, data.groups, {sortable: true});
  }

  function bestTable(data, state, opts) {
    const metric = state.metric;
    const sign = state.direction === "min" ? 1 : -1;
    const rows = data.rows.filter((r) => typeof r.metrics[metric] === "number")
      .sort((a, b) => sign * (a.metrics[metric] - b.metrics[metric])).slice(0, state.top);
    const columns = [
      {label: "rank", value: (r) => rows.indexOf(r) + 1, cls: "num"},
      {label: "job", value: (r) => r.job_id, cell: (r) => jobCell(opts, r.job_id, r.label)},
      {label: metric, value: (r) => r.metrics[metric], cls: "num metric best"},
      ...data.swept.map((p) => ({label: p, value: (r) => r.params[p], cls: "num"})),
      ...data.columns.filter((m) => m !== metric)
        .map((m) => ({label: m, value: (r) => r.metrics[m], cls: "num metric"})),
    ];
    return rows.length ? table(columns, rows) : el("p", {class: "hint"}, `no job has ${metric} yet`);
  }

  function summary(data, opts) {
    const fixed = Object.entries(data.fixed || {});
    return el("section", {class: "card summary"},
      opts.heading === false ? null : el("h1", {}, data.title),
      el("p", {class: "source"}, data.source, " · read ", data.generated),
      countsBar(data.counts),
      el("p", {}, el("b", {}, "swept: "), data.swept.length ? data.swept.join(", ") : "nothing",
        data.seeds.length ? ` (averaged over ${data.seeds.join(", ")})` : ""),
      fixed.length ? el("p", {class: "fixed"}, el("b", {}, "fixed: "),
        fixed.map(([k, v]) => `${k}=${fmt(v)}`).join("  ")) : null,
      data.warnings.length ? el("ul", {class: "warnings"}, data.warnings.map((w) => el("li", {}, w))) : null);
  }

  function failures(data, opts) {
    if (!data.failures.length) return el("p", {class: "hint"}, "No failed jobs.");
    return el("div", {class: "failures"}, data.failures.map((f, i) => el("details",
      {class: "failure", open: i < 3},
      el("summary", {}, jobCell(opts, f.job_id), " ", f.label, " ", el("span", {class: "path"}, f.output_dir || "")),
      el("pre", {class: "error"}, f.error))));
  }

  /* The whole sweep view: summary, results, plots, best jobs and failures.
   * Called again with fresh data, it redraws only what changed. */
  function renderSweep(root, data, opts = {}) {
    const state = root.drExpSweep || (root.drExpSweep = {top: 10});
    state.data = data;
    if (!data.metrics.includes(state.metric)) {
      state.metric = data.metrics[0] || null;
      state.direction = state.metric ? data.directions[state.metric] : "max";
    }
    const again = () => renderSweep(root, state.data, opts);
    const metricChoice = () => select(data.metrics.map((m) => [m, m]), state.metric, (v) => {
      state.metric = v;
      state.direction = data.directions[v];
      again();
    }, "metric");
    const noMetrics = () => el("p", {class: "hint"}, "No numeric metrics yet.");
    sections(root, [
      {name: "summary", key: [data.title, data.counts, data.swept, data.fixed, data.warnings],
        build: () => summary(data, opts)},
      {name: "results", key: [data.rows, data.columns, data.swept],
        build: () => section(`Results (${data.rows.length} jobs)`, "Click a column to sort.",
          data.rows.length ? resultsTable(data, opts) : el("p", {class: "hint"}, "No jobs."))},
      {name: "groups", key: [data.groups, data.metrics],
        build: () => (data.config.length && data.metrics.length ? section("Mean over seeds",
          data.seeds.length ? `One row per setting; spread over ${data.seeds.join(", ")}.` : null,
          groupsTable(data)) : null)},
      {name: "by-param", key: [data.by_param],
        build: () => section("Each metric against each parameter",
          data.seeds.length ? `Mean ± standard deviation over ${data.seeds.join(", ")}.` : null,
          data.by_param.length ? byParamPlots(data) : el("p", {class: "hint"},
            data.config.length ? "No numeric metrics yet." : "No parameter was swept besides seeds."))},
      {name: "curves", key: [data.curves, data.groups.map((g) => g.label)],
        build: () => section("Learning curves", "From the jobs' StructuredLogger events (events.jsonl).",
          data.curves.length ? curvePlots(data.curves, groupColors(data), opts) :
            el("p", {class: "hint"}, "No event was logged twice with a number in it yet."))},
      {name: "scatter", key: [data.rows, data.swept, state.metric],
        build: () => section("Parameters against a metric", null,
          data.metrics.length ? [el("div", {class: "controls"}, metricChoice()), scatterPlots(data, state.metric, opts)] :
            noMetrics())},
      {name: "best", key: [data.rows, state.metric, state.direction, state.top],
        build: () => section("Best jobs", null, data.metrics.length ? [
          el("div", {class: "controls"}, metricChoice(),
            select([["max", "highest first"], ["min", "lowest first"]], state.direction, (v) => {
              state.direction = v;
              again();
            }, "order"),
            select([5, 10, 20, 50].map((k) => [k, k]), state.top, (v) => {
              state.top = Number(v);
              again();
            }, "top")),
          bestTable(data, state, opts)] : noMetrics())},
      {name: "failures", key: [data.failures],
        build: () => section(`Failures (${data.failures.length})`, null, failures(data, opts))},
    ]);
  }

  const api = {
    el, fmt, when, duration, plotText, table, badge, countsBar, pageData, plot, drawPlots,
    sections, section, select, curvePlots, renderSweep, PALETTE,
  };
  if (document.body.dataset.page === "report") {
    renderSweep(document.getElementById("view"), pageData(), {});
  }
  return api;
})();
