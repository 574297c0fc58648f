// Draws a trace as an SVG sequence diagram: one lane per participant (the web front end,
// each actor), one arrow per message in enqueue order, coloured by its outcome, labelled
// with the message type and its time in the handler; the <title> of each arrow has the
// details. The data is the admin API's `?format=sequence` answer (supervision/render.py).
// Everything is built with DOM calls and textContent: nothing from the server is parsed.

const NS = "http://www.w3.org/2000/svg";
const LANE_W = 180;
const ROW_H = 34;
const LEFT = 86;   // room for the time offsets
const TOP = 58;    // below the lane headers

/** CSS class of an outcome (console.css colours them). */
export function outcomeClass(outcome) {
  switch (outcome) {
    case "ok": return "ok";
    case "domain_error": return "domain";
    case "crash": return "error";
    case "timeout": return "timeout";
    case "rejected_full": case "parked": case "stopped": return "refused";
    default: return "flight";
  }
}

export function fmtMs(ms) {
  if (ms === null || ms === undefined) return "–";
  return ms >= 100 ? `${ms.toFixed(0)} ms` : ms >= 1 ? `${ms.toFixed(1)} ms` : `${ms.toFixed(2)} ms`;
}

function el(name, attrs = {}, text) {
  const node = document.createElementNS(NS, name);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = text;
  return node;
}

function short(s, n) {
  return s.length > n ? `${s.slice(0, n - 1)}…` : s;
}

function details(m) {
  const lines = [
    `${m.type} (${m.kind})  ${m.sender ?? m.from} → ${m.to}`,
    `trace ${m.trace_id}  #${m.seq}`,
    `at +${fmtMs(m.at_ms)}  wait ${fmtMs(m.wait_ms)}  run ${fmtMs(m.run_ms)}`,
    `outcome ${m.outcome ?? "in flight"}`,
  ];
  if (m.error) lines.push(m.error);
  return lines.join("\n");
}

/**
 * Build the diagram. `seq` = {participants, messages, span_ms}; `onPick(message)` is called
 * when a message is clicked (or activated with Enter).
 */
export function drawSequence(seq, { onPick } = {}) {
  const lanes = seq.participants;
  const laneOf = new Map(lanes.map((p, i) => [p, i]));
  const x = (who) => LEFT + LANE_W * laneOf.get(who) + LANE_W / 2;
  const width = LEFT + LANE_W * Math.max(lanes.length, 1) + 10;
  const height = TOP + ROW_H * seq.messages.length + 16;
  const svg = el("svg", {
    id: "sequence", xmlns: NS, width, height, viewBox: `0 0 ${width} ${height}`,
    role: "img", "aria-label": `sequence diagram: ${seq.messages.length} messages between ${lanes.length} participants`,
  });

  const defs = el("defs");
  for (const cls of ["ok", "domain", "error", "timeout", "refused", "flight"]) {
    const marker = el("marker", {
      id: `arrow-${cls}`, viewBox: "0 0 10 10", refX: 9, refY: 5,
      markerUnits: "userSpaceOnUse", markerWidth: 9, markerHeight: 9, orient: "auto-start-reverse",
    });
    marker.append(el("path", { d: "M0,0 L10,5 L0,10 z", class: `head ${cls}` }));
    defs.append(marker);
  }
  svg.append(defs);

  lanes.forEach((who, i) => {
    const cx = LEFT + LANE_W * i + LANE_W / 2;
    const g = el("g", { class: "lane", "data-lane": who });
    g.append(el("title", {}, who));
    g.append(el("line", { x1: cx, y1: 40, x2: cx, y2: height - 6, class: "lifeline" }));
    g.append(el("rect", { x: cx - LANE_W / 2 + 8, y: 8, width: LANE_W - 16, height: 28, rx: 5, class: "lane-head" }));
    g.append(el("text", { x: cx, y: 27, "text-anchor": "middle", class: "lane-name" }, short(who, 24)));
    svg.append(g);
  });

  seq.messages.forEach((m, i) => {
    const y = TOP + ROW_H * i + ROW_H / 2;
    const cls = outcomeClass(m.outcome);
    const g = el("g", {
      class: `msg ${cls}`, "data-outcome": m.outcome ?? "in_flight", "data-seq": m.seq,
      "data-trace": m.trace_id, "data-type": m.type, tabindex: 0,
    });
    g.append(el("title", {}, details(m)));
    g.append(el("text", { x: 6, y: y + 4, class: "offset" }, `+${fmtMs(m.at_ms)}`));
    const x1 = x(m.from);
    const x2 = x(m.to);
    const label = `${m.type} · ${m.kind} · ${fmtMs(m.run_ms)}${cls === "ok" ? "" : ` · ${m.outcome ?? "in flight"}`}`;
    if (x1 === x2) {  // a message to itself: a loop on its lane
      g.append(el("path", {
        d: `M${x1},${y - 7} h28 v14 h-24`, class: `arrow ${cls}`, "marker-end": `url(#arrow-${cls})`,
      }));
      g.append(el("text", { x: x1 + 34, y: y + 4, class: "label" }, short(label, 40)));
    } else {
      const dir = x2 > x1 ? 1 : -1;
      g.append(el("line", {
        x1, y1: y, x2: x2 - dir * 4, y2: y, class: `arrow ${cls}`, "marker-end": `url(#arrow-${cls})`,
      }));
      if (m.kind === "ask" && m.run_ms !== null) {  // the handler's run on the recipient's lane
        g.append(el("rect", { x: x2 - 3, y: y - 6, width: 6, height: 12, class: `run ${cls}` }));
      }
      const span = Math.abs(x2 - x1);
      g.append(el("text", {
        x: (x1 + x2) / 2, y: y - 6, "text-anchor": "middle", class: "label",
      }, short(label, Math.max(18, Math.floor(span / 6.2)))));
    }
    // a wide invisible band makes the whole row easy to hover and click
    g.append(el("rect", { x: 0, y: y - ROW_H / 2, width, height: ROW_H, class: "hit" }));
    if (onPick) {
      g.addEventListener("click", () => onPick(m));
      g.addEventListener("keydown", (ev) => { if (ev.key === "Enter") onPick(m); });
    }
    svg.append(g);
  });
  return svg;
}
