// The revenue dashboard: asks for a reports.read API key once per tab, reads /dashboard/api/report, and draws
// tiles, the per-trigger table, the funnel, lift, lag and the daily trend (SVG). No library, no network but ours.
"use strict";

const KEY = "xsell.dashboard.apiKey";
const STEPS = [
  ["sent", "Sent"], ["delivered", "Delivered"], ["opened", "Opened"], ["clicked", "Clicked"],
  ["responded", "Responded"], ["applied", "Applied"], ["sanctioned", "Sanctioned"], ["disbursed", "Disbursed"],
  ["activated", "Activated"],
];
const SVG = "http://www.w3.org/2000/svg";

// Indian digit grouping: the last three digits, then pairs (17,40,000; 8,42,00,000).
function groupIndian(digits) {
  if (digits.length <= 3) return digits;
  const head = digits.slice(0, -3).replace(/\B(?=(\d{2})+(?!\d))/g, ",");
  return `${head},${digits.slice(-3)}`;
}

function count(n) {
  return (n < 0 ? "-" : "") + groupIndian(String(Math.abs(Math.trunc(n))));
}

// Paise to rupees: ₹17,40,000 or ₹98.25; whole rupees drop the paise.
function inr(paise) {
  const sign = paise < 0 ? "-" : "";
  const abs = Math.abs(Math.round(paise));
  const rupees = Math.floor(abs / 100);
  const rest = abs % 100;
  return `${sign}₹${groupIndian(String(rupees))}${rest ? "." + String(rest).padStart(2, "0") : ""}`;
}

// The way the seed's dashboard speaks: ₹8.42 Cr, ₹17.4 lakh.
function inrShort(paise) {
  const rupees = paise / 100;
  const trim = (x) => x.toFixed(2).replace(/\.?0+$/, "");
  if (Math.abs(rupees) >= 1e7) return `₹${trim(rupees / 1e7)} Cr`;
  if (Math.abs(rupees) >= 1e5) return `₹${trim(rupees / 1e5)} lakh`;
  return inr(paise);
}

function pct(rate) {
  return `${(rate * 100).toFixed(1)}%`;
}

function romi(x) {
  if (!x) return "–";
  return x >= 100 ? `${count(Math.round(x))}×` : `${x.toFixed(1)}×`;
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
  for (const child of children) node.append(child);
  return node;
}

function svg(tag, attrs = {}) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, String(value));
  return node;
}

function thisMonth() {
  // Days are the institution's (IST, +05:30), whatever the viewer's own zone.
  const now = new Date(Date.now() + 330 * 60000);
  const y = now.getUTCFullYear();
  const m = now.getUTCMonth();
  const last = new Date(Date.UTC(y, m + 1, 0)).getUTCDate();
  const mm = String(m + 1).padStart(2, "0");
  return [`${y}-${mm}-01`, `${y}-${mm}-${String(last).padStart(2, "0")}`];
}

function showKeyForm(message) {
  document.getElementById("dashboard").hidden = true;
  document.getElementById("key-form").hidden = false;
  document.getElementById("key-error").textContent = message || "";
  document.getElementById("api-key").focus();
}

async function load() {
  const key = sessionStorage.getItem(KEY);
  if (!key) return showKeyForm("");
  document.getElementById("key-form").hidden = true;
  document.getElementById("dashboard").hidden = false;
  const params = new URLSearchParams();
  const start = document.getElementById("start").value;
  const end = document.getElementById("end").value;
  const label = document.getElementById("label").value;
  if (start) params.set("start", start);
  if (end) params.set("end", end);
  if (label) params.append("label", label);
  const status = document.getElementById("status");
  status.textContent = "Loading…";
  document.getElementById("error").textContent = "";
  let response;
  try {
    response = await fetch(`/dashboard/api/report?${params}`, { headers: { "X-Api-Key": key }, cache: "no-store" });
  } catch (error) {
    status.textContent = "";
    document.getElementById("error").textContent = "The gateway cannot be reached; try again shortly.";
    return;
  }
  const body = await response.json().catch(() => ({ error: `HTTP ${response.status}` }));
  status.textContent = "";
  if (response.status === 401 || response.status === 403) {
    sessionStorage.removeItem(KEY);
    return showKeyForm(body.error);
  }
  if (!response.ok) {
    document.getElementById("error").textContent = body.error || `HTTP ${response.status}`;
    return;
  }
  render(body, { start, end, label });
  status.textContent = `Updated ${new Date().toLocaleTimeString("en-IN")}`;
  document.body.dataset.loaded = "true";
}

function render(data, filter) {
  const t = data.total;
  const period = filter.start || filter.end ? `${filter.start || "…"} – ${filter.end || "…"}` : "All time";
  document.getElementById("subtitle").textContent =
    `${period} · ${filter.label || "All labels"} · ${count(t.sent)} campaigns sent · ${count(t.conversions)} conversions ` +
    `(${pct(t.conversion_rate)}) · ${inrShort(t.disbursed_paise)} disbursed · ${inrShort(t.lifetime_paise)} NIM contribution`;
  document.getElementById("tile-sent").textContent = count(t.sent);
  document.getElementById("tile-conversions").textContent = `${count(t.conversions)} (${pct(t.conversion_rate)})`;
  document.getElementById("tile-disbursed").textContent = inr(t.disbursed_paise);
  document.getElementById("tile-disbursed-short").textContent = inrShort(t.disbursed_paise);
  document.getElementById("tile-revenue").textContent = inr(t.lifetime_paise);
  document.getElementById("tile-year1").textContent = `year 1: ${inr(t.year1_paise)}`;
  document.getElementById("tile-cost").textContent = inr(t.cost_paise);
  document.getElementById("tile-cpa").textContent = t.conversions
    ? `${inr(t.cost_per_conversion_paise)} per funded account`
    : "no funded account yet";
  document.getElementById("tile-romi").textContent = romi(t.romi);

  const labelSelect = document.getElementById("label");
  const chosen = labelSelect.value;
  labelSelect.replaceChildren(el("option", { value: "" }, "All labels"));
  for (const name of new Set([...data.labels, ...(chosen ? [chosen] : [])])) {
    labelSelect.append(el("option", { value: name }, name));
  }
  labelSelect.value = chosen;

  const rows = data.triggers.map((r) =>
    el("tr", { "data-trigger": r.key },
      el("td", {}, r.key || "(none)"), el("td", {}, count(r.sent)), el("td", {}, count(r.conversions)),
      el("td", {}, pct(r.conversion_rate)), el("td", {}, inr(r.disbursed_paise)), el("td", {}, inr(r.lifetime_paise)),
      el("td", {}, inr(r.year1_paise)), el("td", {}, inr(r.cost_paise)), el("td", {}, romi(r.romi))));
  const table = document.getElementById("triggers");
  table.tBodies[0].replaceChildren(...rows);
  if (!rows.length) {
    table.tBodies[0].append(el("tr", {}, el("td", { colspan: "9" }, "Nothing in this period.")));
  }

  const top = Math.max(1, t.funnel.sent);
  document.getElementById("funnel").replaceChildren(...STEPS.map(([step, name]) => {
    const bar = el("div", { class: "bar" });
    bar.style.width = `${(100 * t.funnel[step]) / top}%`;
    return el("li", { "data-step": step }, el("span", {}, name), el("div", {}, bar),
      el("span", { class: "num" }, count(t.funnel[step])),
      el("span", { class: "num muted" }, t.funnel.sent ? pct(t.funnel[step] / t.funnel.sent) : "–"));
  }));

  document.getElementById("lift").textContent = data.lift.statement;

  const lagTop = Math.max(1, ...data.lag.map((b) => b.conversions));
  document.getElementById("lag").replaceChildren(...data.lag.map((b) => {
    const bar = el("div", { class: "bar" });
    bar.style.width = `${(100 * b.conversions) / lagTop}%`;
    const name = b.max_days ? `${b.min_days}–${b.max_days} days` : `over ${b.min_days} days`;
    return el("li", {}, el("span", {}, name), el("div", {}, bar), el("span", { class: "num" }, count(b.conversions)),
      el("span", {}, ""));
  }));

  drawTrend(data.trend, filter);
  document.getElementById("footnote").textContent =
    `Days at UTC${data.utc_offset}. Each figure counts on the day it happened: a send on its send day, ` +
    "money on its disbursement day. NIM contribution: the product's revenue model (docs/attribution.md).";
}

function days(first, last) {
  const out = [];
  for (let d = new Date(`${first}T00:00:00Z`); d <= new Date(`${last}T00:00:00Z`); d.setUTCDate(d.getUTCDate() + 1)) {
    out.push(d.toISOString().slice(0, 10));
    if (out.length > 400) break;
  }
  return out;
}

function drawTrend(points, filter) {
  const box = document.getElementById("trend");
  const byDay = new Map(points.map((p) => [p.date, p]));
  const known = points.map((p) => p.date);
  const first = filter.start || known[0];
  const last = filter.end || known[known.length - 1];
  if (!first || !last) {
    box.replaceChildren(el("p", { class: "muted" }, "No activity in this period."));
    return;
  }
  const series = days(first, last).map((day) => byDay.get(day) || { date: day, disbursed_paise: 0, sent: 0 });
  const width = 900, height = 220, left = 70, right = 40, top = 12, bottom = 28;
  const plotW = width - left - right, plotH = height - top - bottom;
  const maxMoney = Math.max(1, ...series.map((p) => p.disbursed_paise));
  const maxSent = Math.max(1, ...series.map((p) => p.sent));
  const step = plotW / series.length;
  const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": "Daily disbursed amount and campaigns sent" });
  chart.append(svg("line", { class: "axis", x1: left, y1: top + plotH, x2: width - right, y2: top + plotH }));
  const axisTop = svg("text", { x: left - 6, y: top + 8, "text-anchor": "end" });
  axisTop.textContent = inrShort(maxMoney);
  chart.append(axisTop);
  const sentTop = svg("text", { x: width - right + 4, y: top + 8 });
  sentTop.textContent = count(maxSent);
  chart.append(sentTop);
  const line = [];
  series.forEach((p, i) => {
    const h = (plotH * p.disbursed_paise) / maxMoney;
    const x = left + i * step;
    const rect = svg("rect", { class: "bar-rect", x: x + step * 0.15, y: top + plotH - h, width: step * 0.7, height: h, "data-date": p.date });
    const title = svg("title");
    title.textContent = `${p.date}: ${inr(p.disbursed_paise)} disbursed, ${count(p.sent)} sent`;
    rect.append(title);
    chart.append(rect);
    line.push(`${x + step / 2},${top + plotH - (plotH * p.sent) / maxSent}`);
    const every = Math.ceil(series.length / 15);
    if (i % every === 0) {
      const tick = svg("text", { x: x + step / 2, y: height - 10, "text-anchor": "middle" });
      tick.textContent = p.date.slice(5);
      chart.append(tick);
    }
  });
  chart.append(svg("polyline", { class: "sent-line", points: line.join(" ") }));
  box.replaceChildren(chart);
}

document.addEventListener("DOMContentLoaded", () => {
  const [start, end] = thisMonth();
  const query = new URLSearchParams(location.search);
  document.getElementById("start").value = query.get("start") ?? start;
  document.getElementById("end").value = query.get("end") ?? end;
  if (query.get("label")) {
    const select = document.getElementById("label");
    select.append(el("option", { value: query.get("label") }, query.get("label")));
    select.value = query.get("label");
  }
  document.getElementById("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(KEY, document.getElementById("api-key").value.trim());
    document.getElementById("api-key").value = "";
    load();
  });
  document.getElementById("filters").addEventListener("submit", (event) => {
    event.preventDefault();
    load();
  });
  document.getElementById("forget-key").addEventListener("click", () => {
    sessionStorage.removeItem(KEY);
    showKeyForm("");
  });
  load();
});
