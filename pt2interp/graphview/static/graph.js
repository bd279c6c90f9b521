// The interactive graph of one exported program (data: pt2interp.graphview.graph_data).
//
// Every name on the page comes from an untrusted file: text goes in with textContent and
// setAttribute only, never innerHTML. Nodes group into containers: the module tree, and for
// a higher-order op (cond, while_loop, map) a box holding its subgraphs; a container with
// too many members is split into chunks, so that no level holds more than a few dozen boxes
// and a 50,000-node graph draws as fast as a small one. Only what is visible is laid out.
(function () {
  "use strict";
  var SVGNS = "http://www.w3.org/2000/svg";
  var CHAR = 7.25;         // advance of the 12px monospace font
  var NODE_H = 38, HEAD_H = 26, PAD = 12, GAP_X = 18, GAP_Y = 30, COLLAPSED_H = 42;
  var MAX_LABEL = 34;      // characters of a label before it is cut (the title shows it all)
  var MAX_ITEMS = 48;      // members of one container before it is split into chunks
  var DEFAULT_VISIBLE = 60;  // boxes drawn at first: containers open breadth first up to it
  var MAX_RESULTS = 200;
  var t0 = performance.now();
  var timings = {};

  function $(id) { return document.getElementById(id); }
  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }
  function svg(tag, attrs, parent) {
    var e = document.createElementNS(SVGNS, tag);
    if (attrs) for (var k in attrs) e.setAttribute(k, attrs[k]);
    if (parent) parent.appendChild(e);
    return e;
  }
  function clip(text, n) {
    text = String(text);
    return text.length > n ? text.slice(0, n - 1) + "\u2026" : text;
  }
  function human(n) {
    if (n === null || n === undefined) return "?";
    var units = ["", "K", "M", "B", "T"], i = 0;
    while (Math.abs(n) >= 1000 && i < units.length - 1) { n /= 1000; i++; }
    return (i ? n.toFixed(n >= 100 ? 0 : 1) : String(n)) + units[i];
  }
  function bytes(n) {
    if (n === null || n === undefined) return "?";
    var units = ["B", "KiB", "MiB", "GiB", "TiB"], i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return (i ? n.toFixed(1) : String(n)) + " " + units[i];
  }
  var DTYPE = {
    float32: "f32", float16: "f16", bfloat16: "bf16", float64: "f64", int64: "i64",
    int32: "i32", int16: "i16", int8: "i8", uint8: "u8", bool: "bool", complex64: "c64",
  };
  function plural(n, word) { return n + " " + word + (n === 1 ? "" : "s"); }
  var SYMBOLIC = { sym_int: 1, sym_bool: 1, sym_float: 1, object: 1 };
  function valueText(v) {  // [name, dtype, shape] → "f32[2, 8]"; a symbolic int → "sym_int s0"
    if (SYMBOLIC[v[1]]) return v[1] + (v[2] ? " " + v[2] : "");
    return (DTYPE[v[1]] || v[1]) + (v[2] || "");
  }
  // a node that makes only sizes and flags: its many edges are drawn faint
  function makesSizes(n) {
    return n.out && n.out.length && n.out.every(function (v) { return SYMBOLIC[v[1]]; });
  }

  // ---- data -------------------------------------------------------------------------------
  var data = JSON.parse($("graph-data").textContent);
  var nodes = data.nodes, modules = data.modules, graphs = data.graphs;
  var consumers = nodes.map(function () { return []; });
  nodes.forEach(function (n, i) {
    n.i = i;
    n.in.forEach(function (p) { if (p >= 0 && p < nodes.length) consumers[p].push(i); });
  });
  // Where each node sits in execution order. Graph inputs (weights first of all) come before
  // any op in the file; ordered by their first user instead, a module's weights travel with it.
  var PLACEHOLDER = { input: 1, param: 1, buffer: 1, const: 1, token: 1 };
  var OPS = { op: 1, hop: 1 };
  var order = new Float64Array(nodes.length);
  nodes.forEach(function (n, i) {
    var users = consumers[i];
    var first = i;
    if (PLACEHOLDER[n.k] && users.length) {
      first = users[0];
      for (var u = 1; u < users.length; u++) if (users[u] < first) first = users[u];
      first = first - 0.5 + i * 1e-7;
    }
    order[i] = first;
  });
  timings.parse_ms = performance.now() - t0;

  // ---- containers -------------------------------------------------------------------------
  // {kind, label, cls, path, node, parent, items: [{c: index} | {n: index}], open, depth}
  var boxes = [];
  var nodeParent = new Int32Array(nodes.length);
  function box(kind, label, cls, parent, extra) {
    var b = { kind: kind, label: label, cls: cls || "", parent: parent, items: [], open: false,
              first: Infinity, count: 0, ops: 0, node: -1, path: null, depth: 0 };
    for (var k in extra) b[k] = extra[k];
    b.depth = parent >= 0 ? boxes[parent].depth + 1 : 0;
    boxes.push(b);
    if (parent >= 0) boxes[parent].items.push({ c: boxes.length - 1 });
    return boxes.length - 1;
  }
  var moduleBox = [];
  modules.forEach(function (m, i) {
    var parent = m.parent >= 0 && m.parent < i ? moduleBox[m.parent] : (i ? 0 : -1);
    var label = i === 0 ? (data.program.file || "model") : m.name;
    moduleBox.push(box("module", label, m.cls, parent, { path: m.path, module: i }));
  });
  if (!modules.length) moduleBox.push(box("module", "model", "", -1, { path: "", module: 0 }));
  var graphBox = {};
  nodes.forEach(function (n, i) {
    var home;
    if (n.g > 0 && graphBox[n.g] !== undefined) home = graphBox[n.g];
    else home = moduleBox[n.m >= 0 && n.m < moduleBox.length ? n.m : 0];
    if (n.k === "hop") {
      var hb = box("hop", n.op || n.n, n.n, home, { node: i });
      (n.sub || []).forEach(function (g) {
        var gr = graphs[g] || {};
        graphBox[g] = box("graph", gr.name || "graph " + g, "subgraph", hb, { graph: g });
      });
      nodeParent[i] = hb;
      boxes[hb].items.unshift({ n: i, self: true });
    } else {
      nodeParent[i] = home;
      boxes[home].items.push({ n: i });
    }
  });
  // Where each box sits in execution order (its first op: a weight shared with a module run
  // earlier must not pull its own module up), and its node count. Children come after their
  // parents in `boxes`, so a backward sweep sees every child first.
  for (var bi = boxes.length - 1; bi >= 0; bi--) {
    var b = boxes[bi], firstAny = Infinity;
    b.items.forEach(function (it) {
      if (it.n !== undefined) {
        b.count++;
        if (OPS[nodes[it.n].k]) b.ops++;
        firstAny = Math.min(firstAny, order[it.n]);
        if (!PLACEHOLDER[nodes[it.n].k]) b.first = Math.min(b.first, order[it.n]);
      } else {
        b.count += boxes[it.c].count;
        b.ops += boxes[it.c].ops;
        b.first = Math.min(b.first, boxes[it.c].first);
      }
    });
    if (b.first === Infinity) b.first = firstAny;
  }
  function itemFirst(it) { return it.n !== undefined ? order[it.n] : boxes[it.c].first; }
  boxes.forEach(function (b) {
    // the hop's own node is drawn as its header, not as an item
    b.items = b.items.filter(function (it) {
      return it.n !== undefined ? !it.self : boxes[it.c].count > 0;
    });
    b.items.sort(function (a, c) { return itemFirst(a) - itemFirst(c); });
  });
  // split crowded boxes into chunks of consecutive members (recursively, for huge levels)
  function chunk(bIndex) {
    var b = boxes[bIndex];
    while (b.items.length > MAX_ITEMS) {
      var size = MAX_ITEMS, old = b.items, groups = [];
      while (Math.ceil(old.length / size) > MAX_ITEMS) size *= MAX_ITEMS;
      for (var s = 0; s < old.length; s += size) groups.push(old.slice(s, s + size));
      b.items = [];
      groups.forEach(function (g, k) {
        var cb = box("chunk", "part " + (k + 1) + " of " + groups.length, "", bIndex, {});
        var c = boxes[cb];
        c.items = g;
        c.first = itemFirst(g[0]);
        g.forEach(function (it) {
          if (it.n !== undefined) { nodeParent[it.n] = cb; c.count++; }
          else { boxes[it.c].parent = cb; c.count += boxes[it.c].count; }
        });
        c.cls = plural(c.count, "node") + ": " + itemName(g[0]) + " \u2026 " + itemName(g[g.length - 1]);
      });
    }
  }
  function itemName(it) {
    return it.n !== undefined ? nodes[it.n].n : boxes[it.c].label;
  }
  for (var ci = 0; ci < boxes.length; ci++) chunk(ci);
  // depths again: chunking put boxes one level deeper
  (function setDepth(bIndex, depth) {
    boxes[bIndex].depth = depth;
    boxes[bIndex].items.forEach(function (it) { if (it.c !== undefined) setDepth(it.c, depth + 1); });
  })(0, 0);
  boxes[0].open = true;

  function ancestors(bIndex) {
    var out = [];
    for (var b = bIndex; b >= 0; b = boxes[b].parent) out.push(b);
    return out;
  }
  function openDefault() {
    var visible = boxes[0].items.length, queue = boxes[0].items.slice();
    while (queue.length) {
      var it = queue.shift();
      if (it.c === undefined) continue;
      var b = boxes[it.c];
      if (visible - 1 + b.items.length > DEFAULT_VISIBLE) continue;
      b.open = true;
      visible += b.items.length - 1;
      queue.push.apply(queue, b.items);
    }
  }

  // ---- what is visible --------------------------------------------------------------------
  // rep[i]: the visible thing node i is drawn as: ~box (a closed box) or i itself
  var rep = new Int32Array(nodes.length);
  function computeReps() {
    function visit(bIndex, closed) {
      var b = boxes[bIndex];
      var as = closed !== null ? closed : (b.open ? null : ~bIndex);
      if (b.node >= 0) rep[b.node] = as !== null ? as : ~bIndex;
      b.items.forEach(function (it) {
        if (it.n !== undefined) rep[it.n] = as !== null ? as : it.n;
        else visit(it.c, as);
      });
    }
    visit(0, null);
  }

  // ---- layout -----------------------------------------------------------------------------
  // pos: unit key ("n12" or "b3") → {x, y, w, h} relative to its parent box
  var pos = {};
  function nodeLines(n) {
    var top, sub = "";
    if (n.k === "op") top = n.op;
    else if (n.k === "param" || n.k === "buffer") top = n.n.split(".").pop();
    else if (n.k === "output") top = "\u2192 " + n.n;
    else if (n.k === "mutation") top = "\u21ba " + n.n;
    else top = n.n;
    if (n.out && n.out.length) sub = n.out.map(valueText).join(", ");
    else if (n.value !== undefined) sub = "= " + n.value;
    if (n.w && n.w.bytes !== null && n.w.bytes !== undefined) sub += " \u00b7 " + bytes(n.w.bytes);
    return [clip(top, MAX_LABEL), clip(sub, MAX_LABEL)];
  }
  function boxLines(b) {
    var top = b.label, sub = b.cls || "";
    if (b.kind === "module") sub = (b.cls ? b.cls + " \u00b7 " : "") + plural(b.ops, "op");
    else if (b.kind === "hop") sub = plural(b.items.length, "subgraph");
    else if (b.kind === "graph") sub = plural(b.ops, "op");
    return [clip(top, MAX_LABEL), clip(sub, MAX_LABEL + 8)];
  }
  function widthOf(lines) {
    return Math.max(80, Math.max(lines[0].length, lines[1].length) * CHAR + 20);
  }
  function keyOf(it) { return it.n !== undefined ? "n" + it.n : "b" + it.c; }

  function layoutBox(bIndex, edgesByBox) {
    var b = boxes[bIndex];
    if (!b.open) {
      var lines = boxLines(b);
      return (pos["b" + bIndex] = { x: 0, y: 0, w: widthOf(lines) + 16, h: COLLAPSED_H });
    }
    var items = b.items, count = items.length;
    var sizes = items.map(function (it) {
      if (it.n !== undefined) {
        return (pos["n" + it.n] = { x: 0, y: 0, w: widthOf(nodeLines(nodes[it.n])), h: NODE_H });
      }
      return layoutBox(it.c, edgesByBox);
    });
    var index = {};
    items.forEach(function (it, i) { index[keyOf(it)] = i; });
    var preds = items.map(function () { return []; }), succs = items.map(function () { return []; });
    (edgesByBox[bIndex] || []).forEach(function (e) {
      var a = index[e[0]], c = index[e[1]];
      if (a === undefined || c === undefined || a === c) return;
      if (a < c) { preds[c].push(a); succs[a].push(c); }  // later → earlier: a back edge, ignored
    });
    var rank = new Array(count).fill(0);
    for (var i = 0; i < count; i++) {
      preds[i].forEach(function (p) { rank[i] = Math.max(rank[i], rank[p] + 1); });
    }
    // sources (weights, constants) sit just above their first user, not at the very top
    for (var j = count - 1; j >= 0; j--) {
      if (preds[j].length || !succs[j].length) continue;
      var low = Infinity;
      succs[j].forEach(function (s) { low = Math.min(low, rank[s]); });
      rank[j] = Math.max(0, low - 1);
    }
    var rows = [];
    rank.forEach(function (r, i) { (rows[r] = rows[r] || []).push(i); });
    rows = rows.filter(Boolean);
    var cx = new Array(count).fill(0);
    var head = boxLines(b);
    var y = HEAD_H + 6, width = (head[0].length + head[1].length) * CHAR + 50;
    rows.forEach(function (row) {
      row.forEach(function (i) {
        var sum = 0;
        preds[i].forEach(function (p) { sum += cx[p]; });
        row.want = row.want || {};
        row.want[i] = preds[i].length ? sum / preds[i].length : i * 1e-6 - 1e9;
      });
      row.sort(function (a, c) { return row.want[a] - row.want[c] || a - c; });
      var x = 0, h = 0;
      row.forEach(function (i) {
        cx[i] = x + sizes[i].w / 2;
        x += sizes[i].w + GAP_X;
        h = Math.max(h, sizes[i].h);
      });
      row.y = y; row.h = h; row.w = x - GAP_X;
      width = Math.max(width, row.w + 2 * PAD);
      y += h + GAP_Y;
    });
    rows.forEach(function (row) {
      var shift = (width - row.w) / 2;
      row.forEach(function (i) {
        var p = sizes[i];
        p.x = shift + cx[i] - p.w / 2;
        p.y = row.y + (row.h - p.h) / 2;
        cx[i] = p.x + p.w / 2;
      });
    });
    var height = rows.length ? y - GAP_Y + PAD : HEAD_H + PAD;
    return (pos["b" + bIndex] = { x: 0, y: 0, w: width, h: height });
  }

  // the layout-relevant edges of each open box: between two of its own members
  function edgesForLayout() {
    var byBox = {}, seen = new Set();
    function memberOf(i, bIndex) {  // the item of box bIndex that holds node i
      if (nodeParent[i] === bIndex && (boxes[bIndex].node !== i)) return "n" + i;
      for (var b = nodeParent[i]; b >= 0; b = boxes[b].parent) {
        if (boxes[b].parent === bIndex) return "b" + b;
      }
      return null;
    }
    nodes.forEach(function (n, i) {
      n.in.forEach(function (p) {
        if (p < 0 || p >= nodes.length) return;
        var lca = lowestCommon(nodeParent[p], nodeParent[i]);
        if (lca < 0 || !boxes[lca].open || !isShown(lca)) return;
        var a = memberOf(p, lca), c = memberOf(i, lca);
        if (!a || !c || a === c) return;
        var key = lca + ":" + a + ">" + c;
        if (seen.has(key)) return;
        seen.add(key);
        (byBox[lca] = byBox[lca] || []).push([a, c]);
      });
    });
    return byBox;
  }
  function lowestCommon(a, c) {
    var da = boxes[a].depth, dc = boxes[c].depth;
    while (da > dc) { a = boxes[a].parent; da--; }
    while (dc > da) { c = boxes[c].parent; dc--; }
    while (a !== c && a >= 0 && c >= 0) { a = boxes[a].parent; c = boxes[c].parent; }
    return a;
  }
  function isShown(bIndex) {
    for (var b = boxes[bIndex].parent; b >= 0; b = boxes[b].parent) if (!boxes[b].open) return false;
    return true;
  }

  // ---- drawing ----------------------------------------------------------------------------
  var root = $("graph"), viewport = svg("g", { id: "viewport" }, root);
  var layerBoxes = svg("g", { class: "layer" }, viewport);
  var layerEdges = svg("g", { class: "edges" }, viewport);
  var abs = {};       // unit key → absolute {x, y, w, h}
  var unitEl = {};    // unit key → its <g>
  var selected = null, matches = new Set();
  var view = { x: 20, y: 20, k: 1 };

  // rx, ry: position in the parent box's <g>; ax, ay: on the whole canvas (for the edges)
  function drawNode(i, parentEl, rx, ry, ax, ay) {
    var n = nodes[i], p = pos["n" + i], lines = nodeLines(n);
    var g = svg("g", { class: "node kind-" + n.k, transform: "translate(" + rx + "," + ry + ")" }, parentEl);
    g.setAttribute("data-node", n.n);
    g.setAttribute("data-index", String(i));
    svg("rect", { width: p.w, height: p.h, rx: 5 }, g);
    var t1 = svg("text", { x: 10, y: 16 }, g); t1.textContent = lines[0];
    var t2 = svg("text", { x: 10, y: 31, class: "sub" }, g); t2.textContent = lines[1];
    var title = svg("title", null, g);
    title.textContent = n.n + (n.t ? "\n" + n.t : "") + (lines[1] ? "\n" + lines[1] : "");
    abs["n" + i] = { x: ax, y: ay, w: p.w, h: p.h };
    unitEl["n" + i] = g;
  }
  function drawBox(bIndex, parentEl, rx, ry, ax, ay) {
    var b = boxes[bIndex], p = pos["b" + bIndex], lines = boxLines(b);
    var g = svg("g", { class: "container kind-" + b.kind + (b.open ? " expanded" : " collapsed"),
                       transform: "translate(" + rx + "," + ry + ")" }, parentEl);
    if (b.path !== null) g.setAttribute("data-path", b.path);
    g.setAttribute("data-box", String(bIndex));
    if (b.node >= 0) g.setAttribute("data-node", nodes[b.node].n);
    svg("rect", { class: "frame", width: p.w, height: p.h, rx: 7 }, g);
    var head = svg("g", { class: "header" }, g);
    svg("rect", { width: p.w, height: b.open ? HEAD_H : p.h, rx: 7 }, head);
    var tog = svg("text", { x: 8, y: 17, class: "toggle" }, head);
    tog.textContent = b.open ? "\u2212" : "+";
    var t1 = svg("text", { x: 24, y: 17 }, head); t1.textContent = lines[0];
    var t2 = svg("text", b.open ? { x: 24 + lines[0].length * CHAR + 10, y: 17, class: "cls" }
                                : { x: 24, y: 33, class: "cls" }, head);
    t2.textContent = lines[1];
    var title = svg("title", null, head);
    var type = b.kind === "module" && modules[b.module] ? modules[b.module].type : null;
    title.textContent = (b.path || b.label) + (b.cls ? "\n" + b.cls : "") + (type ? "\n" + type : "");
    abs["b" + bIndex] = { x: ax, y: ay, w: p.w, h: p.h };
    unitEl["b" + bIndex] = g;
    if (!b.open) return;
    b.items.forEach(function (it) {
      var q = pos[keyOf(it)];
      if (it.n !== undefined) drawNode(it.n, g, q.x, q.y, ax + q.x, ay + q.y);
      else drawBox(it.c, g, q.x, q.y, ax + q.x, ay + q.y);
    });
  }

  function drawEdges() {
    while (layerEdges.firstChild) layerEdges.removeChild(layerEdges.firstChild);
    var seen = new Set();
    nodes.forEach(function (n, i) {
      var to = rep[i];
      n.in.forEach(function (p) {
        if (p < 0 || p >= nodes.length) return;
        var from = rep[p];
        if (from === to) return;
        var a = unitKey(from), c = unitKey(to);
        var key = a + ">" + c;
        if (seen.has(key)) return;
        seen.add(key);
        var s = abs[a], t = abs[c];
        if (!s || !t) return;
        if (contains(s, t) || contains(t, s)) return;
        var d;
        if (t.y >= s.y + s.h) {  // downwards, bottom to top
          var x1 = s.x + s.w / 2, y1 = s.y + s.h, x2 = t.x + t.w / 2, y2 = t.y;
          var bend = Math.min(Math.max(16, (y2 - y1) / 2), 120);
          d = ["M", x1, y1, "C", x1, y1 + bend, x2, y2 - bend, x2, y2];
        } else {  // to something above or beside (a weight shared with an earlier module)
          var ya = s.y + s.h / 2, yb = t.y + t.h / 2, xa = s.x + s.w, xb = t.x + t.w;
          var out = Math.max(xa, xb) + 30 + Math.min(Math.abs(yb - ya) / 20, 60);
          d = ["M", xa, ya, "C", out, ya, out, yb, xb, yb];
        }
        var path = svg("path", { d: d.join(" ") }, layerEdges);
        if (makesSizes(nodes[p])) path.setAttribute("class", "sym");
        path.setAttribute("data-from", a);
        path.setAttribute("data-to", c);
      });
    });
  }
  function unitKey(r) { return r >= 0 ? "n" + r : "b" + ~r; }
  function contains(o, i) { return i.x >= o.x && i.y >= o.y && i.x + i.w <= o.x + o.w && i.y + i.h <= o.y + o.h; }

  function render() {
    var t = performance.now();
    computeReps();
    pos = {}; abs = {}; unitEl = {};
    layoutBox(0, edgesForLayout());
    var tl = performance.now();
    while (layerBoxes.firstChild) layerBoxes.removeChild(layerBoxes.firstChild);
    drawBox(0, layerBoxes, 0, 0, 0, 0);
    drawEdges();
    applySelection();
    applyView();
    return { layout_ms: tl - t, render_ms: performance.now() - tl };
  }

  // ---- view: pan and zoom -----------------------------------------------------------------
  function applyView() {
    viewport.setAttribute("transform", "translate(" + view.x + "," + view.y + ") scale(" + view.k + ")");
  }
  // The canvas's size, read when it changes: reading it right after a redraw would force the
  // browser to lay out the whole new SVG there and then (a third of a second at 3,000 boxes).
  var canvasSize = null;
  function size() {
    if (!canvasSize) {
      var r = root.getBoundingClientRect();
      canvasSize = { width: r.width, height: r.height, left: r.left, top: r.top };
    }
    return canvasSize;
  }
  window.addEventListener("resize", function () { canvasSize = null; });
  function fit() {
    var r = size(), p = pos.b0;
    if (!p || !r.width) return;
    view.k = Math.min(1.2, Math.max(0.02, Math.min((r.width - 40) / p.w, (r.height - 40) / p.h)));
    view.x = (r.width - p.w * view.k) / 2; view.y = 20;
    applyView();
  }
  // the first view: the whole graph if it can be read that way, else its top, readable
  function firstView() {
    fit();
    var r = size(), p = pos.b0;
    if (!p || !r.width || view.k >= 0.6) return;
    view.k = Math.min(1, Math.max(0.6, (r.width - 40) / p.w));
    view.x = Math.max(20, (r.width - p.w * view.k) / 2); view.y = 20;
    applyView();
  }
  function centerOn(key) {
    var a = abs[key], r = size();
    if (!a || !r.width) return;
    view.k = Math.max(view.k, 0.6);
    view.x = r.width / 2 - (a.x + a.w / 2) * view.k;
    view.y = r.height / 2 - (a.y + a.h / 2) * view.k;
    applyView();
  }
  var canvas = $("canvas"), drag = null;
  canvas.addEventListener("wheel", function (e) {
    e.preventDefault();
    var r = size(), mx = e.clientX - r.left, my = e.clientY - r.top;
    var k = Math.min(4, Math.max(0.02, view.k * Math.exp(-e.deltaY * 0.0015)));
    view.x = mx - (mx - view.x) * (k / view.k);
    view.y = my - (my - view.y) * (k / view.k);
    view.k = k;
    applyView();
  }, { passive: false });
  canvas.addEventListener("mousedown", function (e) {
    drag = { x: e.clientX, y: e.clientY, vx: view.x, vy: view.y, moved: false };
  });
  window.addEventListener("mousemove", function (e) {
    if (!drag) return;
    var dx = e.clientX - drag.x, dy = e.clientY - drag.y;
    if (Math.abs(dx) + Math.abs(dy) > 3) { drag.moved = true; canvas.classList.add("dragging"); }
    view.x = drag.vx + dx; view.y = drag.vy + dy;
    applyView();
  });
  window.addEventListener("mouseup", function () {
    canvas.classList.remove("dragging");
    setTimeout(function () { drag = null; }, 0);
  });

  // ---- interaction ------------------------------------------------------------------------
  root.addEventListener("click", function (e) {
    clear(resultsList);
    if (drag && drag.moved) return;
    var target = e.target;
    var header = target.closest ? target.closest(".header") : null;
    if (header) {
      var bIndex = Number(header.parentNode.getAttribute("data-box"));
      toggle(bIndex);
      var b = boxes[bIndex];
      if (b.node >= 0) select(b.node); else selectBox(bIndex);
      return;
    }
    var g = target.closest ? target.closest(".node") : null;
    if (g) select(Number(g.getAttribute("data-index")));
  });
  function toggle(bIndex) {
    boxes[bIndex].open = !boxes[bIndex].open;
    render();
  }
  function boxOfPath(path) {
    for (var i = 0; i < boxes.length; i++) if (boxes[i].kind === "module" && boxes[i].path === path) return i;
    return -1;
  }
  function reveal(i) {
    // a higher-order op's node is its own box's header: that box may stay closed
    ancestors(nodeParent[i]).forEach(function (b) { if (boxes[b].node !== i) boxes[b].open = true; });
    render();
  }
  function select(i) {
    selected = { node: i };
    applySelection();
    showNode(i);
    remember("node=" + encodeURIComponent(nodes[i].n));
  }
  // The selection is in the address (#node=NAME, #module=PATH): a link to it, or a reload,
  // opens the page on it. Never more than a name looked up in the data.
  function remember(hash) {
    if (history.replaceState) history.replaceState(null, "", "#" + hash);
  }
  function restore() {
    var hash = location.hash.replace(/^#/, ""), eq = hash.indexOf("=");
    if (eq < 0) return false;
    var kind = hash.slice(0, eq), name;
    try { name = decodeURIComponent(hash.slice(eq + 1)); } catch (e) { return false; }
    if (kind === "node") {
      for (var i = 0; i < nodes.length; i++) if (nodes[i].n === name) { goTo(i); return true; }
    } else if (kind === "module") {
      var b = boxOfPath(name);
      if (b >= 0) { openTo(b); selectBox(b); centerOn("b" + b); return true; }
    }
    return false;
  }
  function openTo(b) {
    ancestors(b).forEach(function (x) { boxes[x].open = true; });
    render();
  }
  function selectBox(bIndex) {
    selected = { box: bIndex };
    applySelection();
    showBox(bIndex);
    if (boxes[bIndex].kind === "module") remember("module=" + encodeURIComponent(boxes[bIndex].path));
  }
  function applySelection() {
    Array.prototype.forEach.call(root.querySelectorAll(".selected"), function (e) { e.classList.remove("selected"); });
    Array.prototype.forEach.call(root.querySelectorAll(".edges .hot"), function (e) { e.classList.remove("hot"); });
    Array.prototype.forEach.call(root.querySelectorAll(".match"), function (e) { e.classList.remove("match"); });
    matches.forEach(function (i) { var e = unitEl[unitKey(rep[i])]; if (e) e.classList.add("match"); });
    if (!selected) return;
    var key = selected.node !== undefined ? unitKey(rep[selected.node]) : "b" + selected.box;
    var e = unitEl[key];
    if (e) e.classList.add("selected");
    Array.prototype.forEach.call(layerEdges.childNodes, function (p) {
      if (p.getAttribute("data-from") === key || p.getAttribute("data-to") === key) p.classList.add("hot");
    });
  }

  // ---- details ----------------------------------------------------------------------------
  var details = $("details");
  function clear(e) { while (e.firstChild) e.removeChild(e.firstChild); }
  function link(text, onClick) {
    var a = el("a", "mono", text);
    a.setAttribute("href", "#");
    a.addEventListener("click", function (e) { e.preventDefault(); onClick(); });
    return a;
  }
  function nodeLink(i) {
    return link(nodes[i].n, function () { reveal(i); select(i); centerOn(unitKey(rep[i])); });
  }
  function table(rows) {
    var t = el("table");
    rows.forEach(function (r) {
      var tr = el("tr"), a = el("td", null, r[0]), b = el("td", "mono");
      if (r[1] instanceof Node) b.appendChild(r[1]); else b.textContent = r[1] === null || r[1] === undefined ? "" : String(r[1]);
      tr.appendChild(a); tr.appendChild(b); t.appendChild(tr);
    });
    return t;
  }
  function section(title, content) {
    details.appendChild(el("h3", null, title));
    details.appendChild(content);
  }
  function moduleOf(n) {
    if (n.m >= 0 && modules[n.m]) return modules[n.m];
    return null;
  }
  function showNode(i) {
    var n = nodes[i];
    clear(details);
    details.appendChild(el("h2", "mono", n.n));
    var badges = el("div");
    badges.appendChild(el("span", "badge", n.k));
    if (n.spec) badges.appendChild(el("span", "badge", n.spec));
    if (n.g > 0 && graphs[n.g]) badges.appendChild(el("span", "badge", "in " + graphs[n.g].name));
    details.appendChild(badges);
    var facts = [];
    if (n.t) facts.push(["op", n.t]);
    var m = moduleOf(n);
    if (m && m.path) {
      var path = m.path;
      facts.push(["module", link(path + (m.cls ? " (" + m.cls + ")" : ""), function () {
        var b = boxOfPath(path);
        if (b >= 0) { openTo(b); selectBox(b); centerOn("b" + b); }
      })]);
    }
    if (n.v) facts.push(["graph value", n.v]);
    if (n.value !== undefined) facts.push(["value", n.value]);
    if (facts.length) details.appendChild(table(facts));
    if (n.w) {
      section("weight", table([
        ["shape", n.w.shape], ["dtype", n.w.dtype], ["size", bytes(n.w.bytes)],
        ["tied to", n.w.tied_to], ["persistent", n.w.persistent === null ? null : String(n.w.persistent)],
        ["class", n.w.class],
      ].filter(function (r) { return r[1] !== null && r[1] !== undefined; })));
    }
    if (n.out && n.out.length) {
      section("outputs", table(n.out.map(function (v) { return [v[0], v[1] + " " + (v[2] || "")]; })));
    }
    if (n.a && n.a.length) {
      var byName = {};
      n.in.forEach(function (p) { if (nodes[p]) { (nodes[p].out || []).forEach(function (v) { byName[v[0]] = p; }); byName[nodes[p].v || nodes[p].n] = p; } });
      section("arguments", table(n.a.map(function (a) {
        var cell = el("span");
        var refs = a[2] || [];
        if (refs.length === 1 && byName[refs[0]] !== undefined && a[1] === refs[0]) {
          cell.appendChild(nodeLink(byName[refs[0]]));
        } else {
          cell.appendChild(el("span", null, a[1]));
          refs.forEach(function (r) {
            if (byName[r] !== undefined) { cell.appendChild(el("span", null, " ")); cell.appendChild(nodeLink(byName[r])); }
          });
        }
        return [a[0], cell];
      })));
    }
    if (n.sub && n.sub.length) {
      var subs = el("div");
      n.sub.forEach(function (g) { subs.appendChild(el("div", "mono", (graphs[g] || {}).name)); });
      section("subgraphs", subs);
    }
    var users = consumers[i];
    if (users.length) {
      var u = el("div");
      users.slice(0, 100).forEach(function (c, j) { if (j) u.appendChild(el("span", null, ", ")); u.appendChild(nodeLink(c)); });
      if (users.length > 100) u.appendChild(el("span", "hint", " \u2026 and " + (users.length - 100) + " more"));
      section("used by", u);
    }
    if (n.st !== undefined && data.traces[n.st]) {
      var tr = data.traces[n.st], box = el("div");
      if (tr.frames.length) {
        tr.frames.forEach(function (f, j) {
          var fr = el("div", "frame mono" + (j === tr.src ? " src" : ""));
          fr.appendChild(el("span", null, f[0] + ":" + f[1] + " in " + f[2]));
          if (f[3]) fr.appendChild(el("span", "code", f[3]));
          box.appendChild(fr);
        });
      } else box.appendChild(el("pre", "mono", tr.text));
      section("source", box);
    }
  }
  function showBox(bIndex) {
    var b = boxes[bIndex];
    clear(details);
    details.appendChild(el("h2", "mono", b.path || b.label));
    var badges = el("div");
    badges.appendChild(el("span", "badge", b.kind));
    details.appendChild(badges);
    var rows = [["ops", b.ops], ["nodes", b.count]];
    if (b.kind === "module") {
      var m = modules[b.module] || {};
      rows.push(["class", m.type || m.cls], ["parameters", human(m.params) + " (" + m.params + ")"]);
    }
    details.appendChild(table(rows.filter(function (r) { return r[1] !== undefined && r[1] !== null; })));
    var hist = {};
    (function walk(x) {
      boxes[x].items.forEach(function (it) {
        if (it.n !== undefined) { var o = nodes[it.n].op; if (o) hist[o] = (hist[o] || 0) + 1; }
        else walk(it.c);
      });
    })(bIndex);
    var ops = Object.keys(hist).sort(function (a, c) { return hist[c] - hist[a]; }).slice(0, 30);
    if (ops.length) section("ops", table(ops.map(function (o) { return [hist[o], o]; })));
  }
  function showProgram() {
    var p = data.program;
    clear(details);
    details.appendChild(el("h2", "mono", p.file || "model"));
    details.appendChild(table([
      ["model", p.model], ["torch", p.torch_version], ["schema", p.schema_version],
      ["layout", p.layout], ["dialect", p.dialect], ["ops", p.op_count],
      ["parameters", human(p.parameter_count)], ["weights", bytes(p.total_bytes)],
    ]));
    section("inputs", table(p.inputs));
    section("outputs", table(p.outputs));
    var ranges = Object.keys(p.ranges);
    if (ranges.length) {
      section("dynamic dimensions", table(ranges.map(function (k) {
        var r = p.ranges[k];
        return [k, (r[0] === null ? "-\u221e" : r[0]) + " .. " + (r[1] === null ? "\u221e" : r[1])];
      })));
    }
    var legend = el("div", "legend");
    [["input", "user input"], ["param", "parameter"], ["buffer", "buffer"], ["const", "constant"],
     ["op", "op"], ["output", "output"], ["mutation", "buffer or input written back"],
     ["hop", "cond / while_loop / map: its subgraphs inside"]].forEach(function (k) {
      var item = el("div");
      item.appendChild(el("span", "swatch kind-" + k[0]));
      item.appendChild(el("span", null, k[1]));
      legend.appendChild(item);
    });
    section("legend", legend);
    details.appendChild(el("p", "hint", "Click a box to open or close it, a node to see its arguments and source. Drag to pan, wheel to zoom, / to search."));
  }

  // ---- search -----------------------------------------------------------------------------
  var searchInput = $("search"), resultsList = $("search-results"), searchCount = $("search-count");
  var lowered = null, results = [];
  function search(q) {
    q = q.trim().toLowerCase();
    results = [];
    if (!q) { matches = new Set(); applySelection(); clear(resultsList); searchCount.textContent = ""; return results; }
    if (!lowered) lowered = nodes.map(function (n) {
      var m = moduleOf(n);
      return (n.n + " " + (n.op || "") + " " + (n.t || "") + " " + (m ? m.path : "")).toLowerCase();
    });
    for (var i = 0; i < nodes.length; i++) if (lowered[i].indexOf(q) >= 0) results.push(i);
    matches = new Set(results.slice(0, 5000));
    applySelection();
    clear(resultsList);
    results.slice(0, MAX_RESULTS).forEach(function (i) {
      var n = nodes[i], li = el("li");
      li.setAttribute("data-node", n.n);
      li.appendChild(el("span", "mono", n.n));
      var m = moduleOf(n);
      li.appendChild(el("span", "sub", [n.op || n.k, m && m.path ? m.path : (n.g > 0 ? (graphs[n.g] || {}).name : "")].filter(Boolean).join(" \u00b7 ")));
      li.addEventListener("click", function () { goTo(i); });
      resultsList.appendChild(li);
    });
    searchCount.textContent = results.length + (results.length === 1 ? " match" : " matches");
    return results;
  }
  function goTo(i) {
    clear(resultsList);
    reveal(i);
    select(i);
    centerOn(unitKey(rep[i]));
  }
  var pending = null;
  searchInput.addEventListener("input", function () {
    clearTimeout(pending);
    pending = setTimeout(function () { search(searchInput.value); }, 60);
  });
  searchInput.addEventListener("keydown", function (e) {
    if (e.key === "Enter") { clearTimeout(pending); search(searchInput.value); if (results.length) goTo(results[0]); }
    if (e.key === "Escape") { searchInput.value = ""; search(""); }
  });
  document.addEventListener("keydown", function (e) {
    if (e.key === "/" && document.activeElement !== searchInput) { e.preventDefault(); searchInput.focus(); }
  });
  $("fit").addEventListener("click", fit);
  $("collapse").addEventListener("click", function () {
    boxes.forEach(function (b, i) { b.open = i === 0; }); render(); fit();
  });
  $("expand").addEventListener("click", function () {
    // one more level of every open box, never past a few thousand drawn boxes
    var budget = 3000, drawn = Object.keys(unitEl).length, toOpen = [];
    boxes.forEach(function (b, i) { if (!b.open && isShown(i)) toOpen.push(i); });
    toOpen.forEach(function (i) { if (drawn + boxes[i].items.length <= budget) { boxes[i].open = true; drawn += boxes[i].items.length; } });
    render(); firstView();
  });

  // ---- start ------------------------------------------------------------------------------
  function header() {
    var p = data.program;
    $("title").textContent = p.file || "model";
    $("title").setAttribute("title", (p.file || "model") + (p.model ? " \u00b7 model " + p.model : ""));
    var facts = $("facts");
    [["torch", p.torch_version || "?"], ["schema", p.schema_version], [p.dialect, ""],
     ["ops", p.op_count], ["params", human(p.parameter_count)], ["weights", bytes(p.total_bytes)]]
      .forEach(function (f) { facts.appendChild(el("span", null, f[0] + (f[1] !== "" ? " " + f[1] : ""))); });
    document.title = (p.file || "model") + " \u2014 pt2interp graph";
  }
  window.pt2graph = {
    timings: timings,
    expand: function (path) { var b = boxOfPath(path); if (b >= 0) openTo(b); return b >= 0; },
    collapse: function (path) { var b = boxOfPath(path); if (b >= 0) { boxes[b].open = false; render(); } return b >= 0; },
    search: function (q) { return search(q).map(function (i) { return nodes[i].n; }); },
    reveal: function (name) { for (var i = 0; i < nodes.length; i++) if (nodes[i].n === name) { goTo(i); return true; } return false; },
    visibleCount: function () { return Object.keys(unitEl).length; },
  };
  try {
    header();
    openDefault();
    var r = render();
    timings.layout_ms = r.layout_ms;
    timings.render_ms = r.render_ms;
    firstView();
    showProgram();
    restore();
    timings.total_ms = performance.now() - t0;
    document.documentElement.setAttribute("data-state", "ready");
  } catch (err) {
    $("error").textContent = "The graph could not be drawn: " + (err && err.message ? err.message : err);
    document.documentElement.setAttribute("data-state", "error");
    throw err;
  }
})();
