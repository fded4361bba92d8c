// meddet viewer: send images once, draw a screen-sized picture with the boxes (original pixels) on a
// canvas that fits the screen; zoom and pan fetch full-resolution detail of the visible region only;
// several files (or a .zip / a folder) are read as an exam and hung R-CC | L-CC above R-MLO | L-MLO.
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  const ws = $("workspace");
  const panel = $("result");
  const classes = JSON.parse(ws.dataset.classes);
  const slider = $("threshold");
  const enabled = classes.map(() => true);
  const dpr = () => window.devicePixelRatio || 1;
  let single = null;   // the View in the zoomable viewer
  let singleData = null;  // its prediction (from /predict, or one view of the exam)
  let exam = null;     // {data, views: [View]} when an exam is shown
  let selected = null; // the finding whose heat map alone is shown
  let lastFiles = null;
  let xhr = null;

  slider.value = ws.dataset.threshold;
  $("threshold-value").textContent = Number(slider.value).toFixed(2);

  classes.forEach((c, i) => {
    const label = document.createElement("label");
    const box = document.createElement("input");
    box.type = "checkbox"; box.checked = true; box.dataset.index = i; box.className = "class-toggle";
    box.addEventListener("change", () => { enabled[i] = box.checked; render(); });
    const sw = document.createElement("span");
    sw.className = "swatch sw-" + (i % 8);
    label.append(box, sw, document.createTextNode(c.name));
    $("class-toggles").append(label, document.createElement("br"));
  });

  function status(text, isError) {
    $("status").textContent = text;
    $("status").className = isError ? "error" : "";
  }

  const threshold = () => Number(slider.value);
  const shown = (dets) => dets.filter((d) => d.score >= threshold() && enabled[d.class]);
  function countText(n, total, where) {
    const t = threshold().toFixed(2);
    const head = n === 0 ? "No findings above " + t : n + (n === 1 ? " finding" : " findings") + " above " + t;
    return head + " (" + total + " in all" + (where ? " " + where : "") + ")";
  }

  function loadImage(src) {
    return new Promise((resolve, reject) => {
      const img = new Image();
      img.onload = () => resolve(img);
      img.onerror = () => reject(new Error("image cannot be shown"));
      img.src = src;
    });
  }

  // ---------------------------------------------------------------- one image on one canvas
  class View {
    constructor(canvas, pred, picture, opts) {
      this.canvas = canvas; this.ctx = canvas.getContext("2d");
      this.pred = pred; this.img = picture;
      this.W = pred.image.width; this.H = pred.image.height;
      this.mirror = !!(opts && opts.mirror);
      this.zoomable = !!(opts && opts.zoomable);
      this.align = (opts && opts.align) || "center";  // hanging: right views against the right edge, left views the left
      this.heat = (opts && opts.heat) || new Map();
      this.detail = null; this.fitted = true; this.s = 1; this.tx = 0; this.ty = 0;
      this.crops = 0; this.timer = null; this.abort = null;
    }
    size() {
      const r = this.canvas.getBoundingClientRect();
      const w = Math.max(1, Math.round(r.width * dpr())), h = Math.max(1, Math.round(r.height * dpr()));
      if (this.canvas.width !== w || this.canvas.height !== h) {
        this.canvas.width = w; this.canvas.height = h;
        if (this.fitted) this.fit(); else this.clamp();
      }
    }
    fitScale() { return Math.min(this.canvas.width / this.W, this.canvas.height / this.H); }
    fit() {
      this.s = this.fitScale();
      const room = this.canvas.width - this.W * this.s;
      this.tx = this.align === "right" ? room : this.align === "left" ? 0 : room / 2;
      this.ty = (this.canvas.height - this.H * this.s) / 2;
      this.fitted = true;
    }
    clamp() {  // keep the image on screen: centred when smaller than the canvas, no empty margin when larger
      const cw = this.canvas.width, ch = this.canvas.height, w = this.W * this.s, h = this.H * this.s;
      this.tx = w <= cw ? (cw - w) / 2 : Math.min(0, Math.max(cw - w, this.tx));
      this.ty = h <= ch ? (ch - h) / 2 : Math.min(0, Math.max(ch - h, this.ty));
    }
    cx(x) { return this.tx + (this.mirror ? this.W - x : x) * this.s; }
    cy(y) { return this.ty + y * this.s; }
    zoom(factor, px, py) {
      if (px === undefined) { px = this.canvas.width / 2; py = this.canvas.height / 2; }
      const fs = this.fitScale();
      const ns = Math.min(Math.max(this.s * factor, fs), 8 * dpr());
      this.tx = px - (px - this.tx) * ns / this.s; this.ty = py - (py - this.ty) * ns / this.s; this.s = ns;
      if (ns <= fs * 1.0001) this.fit(); else { this.fitted = false; this.clamp(); }
      this.draw(); this.wantDetail();
    }
    zoomTo(box) {  // centre a finding with room around it (three times its size), at full resolution
      const [x1, y1, x2, y2] = box, side = 3 * Math.max(x2 - x1, y2 - y1, 1);
      const fs = this.fitScale();
      const ns = Math.min(Math.max(Math.min(this.canvas.width, this.canvas.height) / side, fs), 8 * dpr());
      const cxo = (x1 + x2) / 2, cyo = (y1 + y2) / 2;
      this.s = ns;
      this.tx = this.canvas.width / 2 - (this.mirror ? this.W - cxo : cxo) * ns; this.ty = this.canvas.height / 2 - cyo * ns;
      if (ns <= fs * 1.0001) this.fit(); else { this.fitted = false; this.clamp(); }
      this.draw(); this.wantDetail();
    }
    pan(dx, dy) { if (this.fitted) return; this.tx += dx; this.ty += dy; this.clamp(); this.draw(); this.wantDetail(); }
    reset() { this.fit(); this.detail = null; this.draw(); }
    region() {  // the visible part of the image, in original pixels
      const a = (0 - this.tx) / this.s, b = (this.canvas.width - this.tx) / this.s;
      let x0 = this.mirror ? this.W - b : a, x1 = this.mirror ? this.W - a : b;
      let y0 = (0 - this.ty) / this.s, y1 = (this.canvas.height - this.ty) / this.s;
      x0 = Math.max(0, x0); y0 = Math.max(0, y0); x1 = Math.min(this.W, x1); y1 = Math.min(this.H, y1);
      return [x0, y0, x1 - x0, y1 - y0];
    }
    wantDetail() {
      const disp = this.pred.image.display;
      if (!this.zoomable || !disp || !disp.id) return;
      clearTimeout(this.timer);
      if (this.s <= disp.scale * 1.2) return;  // the display picture is sharp enough here
      this.timer = setTimeout(() => this.fetchDetail(), 150);
    }
    async fetchDetail() {
      const [x, y, w, h] = this.region();
      if (w < 1 || h < 1) return;
      const side = Math.min(2048, Math.ceil(Math.max(w, h) * this.s));
      if (this.abort) this.abort.abort();
      this.abort = new AbortController();
      const q = "x=" + Math.floor(x) + "&y=" + Math.floor(y) + "&w=" + Math.ceil(w + 1) + "&h=" + Math.ceil(h + 1) +
        "&max_side=" + side;
      try {
        const r = await fetch("/api/v1/images/" + this.pred.image.display.id + "/crop?" + q, { signal: this.abort.signal });
        if (!r.ok) { if (r.status === 404) status("Full-resolution detail expired: open the file again to zoom in.", true); return; }
        const [rx, ry, rw, rh] = r.headers.get("X-Crop-Region").split(",").map(Number);
        const img = await createImageBitmap(await r.blob());
        this.detail = { img, x: rx, y: ry, w: rw, h: rh };
        this.crops += 1;
        this.draw();
      } catch (e) { if (e.name !== "AbortError") status("Detail cannot be loaded: " + e.message, true); }
    }
    draw() {
      const ctx = this.ctx, cw = this.canvas.width, ch = this.canvas.height, s = this.s;
      ctx.setTransform(1, 0, 0, 1, 0, 0);
      ctx.fillStyle = "#000"; ctx.fillRect(0, 0, cw, ch);
      ctx.save();
      if (this.mirror) { ctx.translate(this.tx + this.W * s, this.ty); ctx.scale(-s, s); } else { ctx.translate(this.tx, this.ty); ctx.scale(s, s); }
      ctx.imageSmoothingEnabled = true;
      ctx.drawImage(this.img, 0, 0, this.W, this.H);
      if (this.detail && !this.fitted) { const d = this.detail; ctx.drawImage(d.img, d.x, d.y, d.w, d.h); }
      const dets = shown(this.pred.detections);
      let maps = 0;
      if (this.pred.explanation && $("show-heatmap").checked && this.heat.size) {
        const list = (selected && dets.includes(selected) ? [selected] : dets).filter((d) => this.heat.has(d));
        for (const d of list) ctx.drawImage(this.heat.get(d), 0, 0, this.W, this.H);
        maps = list.length;
      }
      ctx.restore();
      const lw = Math.max(2, Math.round(2 * dpr()));
      const fs = Math.max(11, Math.round(12 * dpr()));
      ctx.font = fs + "px sans-serif"; ctx.textBaseline = "bottom";
      // boxes in canvas pixels (mirrored views: x flipped), labels placed by labels.js (the twin of
      // meddet.visualize.layout_labels): never overlapping, the highest score drawn last
      const boxes = dets.map((d) => {
        const xa = this.cx(d.box[0]), xb = this.cx(d.box[2]);
        return [Math.min(xa, xb), this.cy(d.box[1]), Math.max(xa, xb), this.cy(d.box[3])];
      });
      const texts = dets.map((d) => d.label + " " + d.score.toFixed(2));
      const sizes = texts.map((t) => [Math.ceil(ctx.measureText(t).width) + 6, fs + 4]);
      const placed = window.meddetLabels ? window.meddetLabels.layoutLabels(boxes, dets.map((d) => d.score), sizes, cw, ch)
        : dets.map((d, i) => [i, [boxes[i][0], boxes[i][1] - sizes[i][1], sizes[i][0], sizes[i][1]]]);
      for (const [i, [lx, ly, lw2, lh]] of placed) {
        const d = dets[i], [x1, y1, x2, y2] = boxes[i];
        ctx.strokeStyle = "#000"; ctx.lineWidth = lw + 2 * Math.round(dpr()); ctx.strokeRect(x1, y1, x2 - x1, y2 - y1);
        ctx.strokeStyle = d.color; ctx.lineWidth = lw; ctx.strokeRect(x1, y1, x2 - x1, y2 - y1);
        ctx.fillStyle = d.color; ctx.fillRect(lx, ly, lw2, lh);
        ctx.fillStyle = "#000"; ctx.fillText(texts[i], lx + 3, ly + lh - 2);
      }
      this.canvas.dataset.visible = String(dets.length);
      this.canvas.dataset.heatmaps = String(maps);
      this.canvas.dataset.crops = String(this.crops);
      this.canvas.dataset.view = JSON.stringify({ s: this.s, tx: this.tx, ty: this.ty, mirror: this.mirror, width: this.W, height: this.H,
        canvas: [cw, ch] });
    }
  }

  // ---------------------------------------------------------------- layout
  function layout() {
    const stage = $("stage");
    const top = stage.getBoundingClientRect().top + window.scrollY;
    const h = Math.max(180, Math.floor(window.innerHeight - top - 8));
    document.documentElement.style.setProperty("--stage-h", h + "px");
    if (single && !$("viewer").hidden) { single.size(); single.draw(); }
    if (exam && !$("exam").hidden) for (const v of exam.views) { v.size(); v.draw(); }
  }
  new ResizeObserver(() => layout()).observe(document.body);
  window.addEventListener("resize", layout);

  // ---------------------------------------------------------------- panel
  function findingItem(d, v, open) {
    const li = document.createElement("li");
    li.className = "finding";
    const sw = document.createElement("span");
    sw.className = "swatch sw-" + (d.class % 8);
    li.append(sw, document.createTextNode(
      d.label + " — " + d.score.toFixed(3) + " at (" + d.box.map((x) => Math.round(x)).join(", ") + ")"));
    if (v && v.heat.has(d)) {
      li.classList.add("explained");
      li.tabIndex = 0;
      li.title = "Show only this finding's heat map (again for all)";
      if (d === selected) li.classList.add("selected");
      const pick = () => { selected = selected === d ? null : d; render(); };
      li.addEventListener("click", pick);
      li.addEventListener("keydown", (e) => { if (e.target === li && (e.key === "Enter" || e.key === " ")) { e.preventDefault(); pick(); } });
    }
    const zoom = document.createElement("button");
    zoom.type = "button"; zoom.className = "zoom-to"; zoom.textContent = "Zoom";
    zoom.setAttribute("aria-label", "Zoom to " + d.label + " " + d.score.toFixed(2));
    zoom.addEventListener("click", (e) => { e.stopPropagation(); if (open) open(); if (single) single.zoomTo(d.box); });
    li.append(" ", zoom);
    return li;
  }

  function breastScores(study) {
    const out = { right: null, left: null };
    const all = Object.values(study.views).filter(Boolean).concat(study.extra);
    for (const v of all) {
      const key = v.laterality === "R" ? "right" : v.laterality === "L" ? "left" : null;
      if (!key) continue;
      const best = shown(v.detections).reduce((m, d) => Math.max(m, d.score), 0);
      out[key] = Math.max(out[key] === null ? 0 : out[key], best);
    }
    const known = [out.right, out.left].filter((x) => x !== null);
    out.exam = known.length ? Math.max(...known) : null;
    return out;
  }
  const fmt = (x) => (x === null ? "not read" : x.toFixed(2));

  function render() {
    $("threshold-value").textContent = threshold().toFixed(2);
    const list = $("findings");
    list.replaceChildren();
    const byView = $("exam-findings");
    byView.replaceChildren();
    const inExam = exam && !$("exam").hidden;
    if (single && !inExam) {
      if (selected && !shown(singleData.detections).includes(selected)) selected = null;
      single.draw();
      const dets = shown(singleData.detections);
      for (const d of dets) list.append(findingItem(d, single));
      $("count").textContent = countText(dets.length, singleData.detections.length);
    }
    if (exam) {
      for (const v of exam.views) v.draw();
      let n = 0, total = 0, images = 0;
      for (const [si, study] of exam.data.studies.entries()) {
        const sc = breastScores(study);
        const line = "Suspicion (highest finding score): right " + fmt(sc.right) + " · left " + fmt(sc.left) + " · exam " + fmt(sc.exam);
        const el = document.querySelector(".study[data-study='" + si + "'] .scores");
        if (el) el.textContent = line;
        const entries = Object.entries(study.views).filter(([, v]) => v).concat(study.extra.map((v, j) => ["extra " + (j + 1), v]));
        for (const [name, v] of entries) {
          const dets = shown(v.detections);
          n += dets.length; total += v.detections.length; images += 1;
          if (!inExam) continue;
          const h = document.createElement("h3");
          h.textContent = study.label + " · " + name + ": " + countText(dets.length, v.detections.length);
          const ol = document.createElement("ol");
          const open = () => openSingle(v, exam.pics.get(v), new Map(), v.mirror, true);
          for (const d of dets) ol.append(findingItem(d, null, open));
          byView.append(h, ol);
        }
      }
      if (inExam) $("count").textContent = countText(n, total, "in " + images + (images === 1 ? " image" : " images"));
    }
  }

  function showFacts(pred) {
    const dl = $("facts");
    dl.replaceChildren();
    if (!pred) return;
    const facts = Object.assign({ format: pred.image.format, size: pred.image.width + " × " + pred.image.height },
      pred.dicom || {});
    for (const [k, v] of Object.entries(facts)) {
      if (v === null || v === "" || v === undefined) continue;
      const dt = document.createElement("dt"); dt.textContent = k.replace(/_/g, " ");
      const dd = document.createElement("dd"); dd.textContent = Array.isArray(v) ? v.join(" × ") : String(v);
      dl.append(dt, dd);
    }
  }

  function showExplanation(pred) {
    const e = pred && pred.explanation;
    $("heatmap-controls").hidden = !e;
    if (!e) return;
    let note = e.explained + " of " + e.candidates + " findings explained (" + e.method + ", " + e.explain_ms + " ms)";
    if (e.limited_by === "time") note += "; the time limit stopped the rest";
    if (e.limited_by === "max_detections") note += "; the highest-scoring ones only";
    if (e.empty_maps) note += "; " + e.empty_maps + " with an empty map (nothing at that layer raised the score)";
    $("explain-note").textContent = note + ". Click a finding to see its map alone.";
  }

  function openSingle(pred, picture, heat, mirror, fromExam) {
    singleData = pred; selected = null;
    $("dropzone").hidden = true; $("exam").hidden = true; $("viewer").hidden = false;
    $("back-to-exam").hidden = !fromExam;
    single = new View($("canvas"), pred, picture, { mirror, zoomable: true, heat });
    panel.hidden = false;
    $("scores").hidden = true;
    $("download-png").hidden = false;
    showFacts(pred); showExplanation(pred);
    layout(); single.size(); single.fit(); render();
  }

  async function showPrediction(pred) {
    const picture = await loadImage(pred.image.display.url);
    const heat = new Map();
    for (const d of pred.detections) if (d.heatmap) heat.set(d, await loadImage(d.heatmap));
    exam = null;
    openSingle(pred, picture, heat, false, false);
  }

  function figure(study, name, v, pics) {
    const fig = document.createElement("figure");
    fig.className = "view";
    fig.dataset.view = name;
    const cap = document.createElement("figcaption");
    if (!v) {
      fig.classList.add("missing");
      cap.textContent = name + ": missing";
      fig.append(cap);
      return fig;
    }
    const c = document.createElement("canvas");
    c.tabIndex = 0;
    c.setAttribute("role", "button");
    c.setAttribute("aria-label", (name || "image") + ": open to zoom");
    cap.textContent = name + (v.mirror ? " (mirrored)" : "") + (v.reason ? " — " + v.reason : "");
    cap.title = cap.textContent;
    fig.append(c, cap);
    // in the hanging protocol the chest walls meet in the middle: right views against their cell's right edge
    const align = v.view && !v.reason ? (v.laterality === "R" ? "right" : "left") : "center";
    const view = new View(c, v, pics.get(v), { mirror: v.mirror, align });
    exam.views.push(view);
    const open = () => openSingle(v, pics.get(v), new Map(), v.mirror, true);
    c.addEventListener("click", open);
    c.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); open(); } });
    return fig;
  }

  async function showExam(data) {
    const pics = new Map();
    for (const study of data.studies)
      for (const v of Object.values(study.views).filter(Boolean).concat(study.extra)) pics.set(v, await loadImage(v.image.display.url));
    exam = { data, views: [], pics };
    single = null; singleData = null; selected = null;
    const root = $("exam");
    root.replaceChildren();
    data.studies.forEach((study, si) => {
      const div = document.createElement("div");
      div.className = "study"; div.dataset.study = String(si);
      const h = document.createElement("h3");
      h.textContent = study.label + (study.patient ? " · " + study.patient : "") +
        (study.missing.length ? " · missing: " + study.missing.join(", ") : "") +
        (study.extra.length ? " · " + study.extra.length + " extra" : "");
      const p = document.createElement("p"); p.className = "scores";
      const grid = document.createElement("div"); grid.className = "hanging";
      for (const row of data.protocol) for (const name of row) grid.append(figure(study, name, study.views[name], pics));
      div.append(h, p, grid);
      if (study.extra.length) {
        const ex = document.createElement("div"); ex.className = "extras";
        study.extra.forEach((v, j) => ex.append(figure(study, v.view || "extra " + (j + 1), v, pics)));
        div.append(ex);
      }
      root.append(div);
    });
    if (data.errors.length) {
      const p = document.createElement("p");
      p.className = "errors";
      p.textContent = data.errors.map((e) => (lastFiles && lastFiles[e.source.file] ? lastFiles[e.source.file].name : "file " + (e.source.file + 1)) +
        (e.source.member !== undefined ? " (item " + (e.source.member + 1) + ")" : "") + ": " + e.message).join("; ");
      root.append(p);
    }
    $("dropzone").hidden = true; $("viewer").hidden = true; root.hidden = false;
    panel.hidden = false;
    $("heatmap-controls").hidden = true;
    $("download-png").hidden = true;
    showFacts(null);
    layout();
    for (const v of exam.views) { v.size(); v.fit(); }
    render();
  }

  // ---------------------------------------------------------------- sending
  const mb = (n) => (n / 1048576).toFixed(1);

  function send(files) {
    files = Array.from(files || []).filter((f) => !f.name.startsWith("."));
    if (!files.length) return;
    lastFiles = files;
    $("rerun").disabled = false;
    const isExam = files.length > 1 || files.some((f) => /\.zip$/i.test(f.name) || f.type === "application/zip");
    const explain = $("explain").checked && !isExam;
    const long = Math.max(window.screen.width || 0, window.screen.height || 0, window.innerWidth, window.innerHeight) * dpr();
    const side = Math.max(256, Math.min(2048, Math.ceil(isExam ? long / 2 : long)));
    const form = new FormData();
    if (isExam) for (const f of files) form.append("files", f); else form.append("file", files[0]);
    form.append("display", "1");
    form.append("display_max_side", String(side));
    if (explain) {
      // The highest-scoring findings whatever the slider says (the server caps how many), so moving the
      // slider later still finds the top ones explained.
      form.append("explain", "1"); form.append("explain_method", $("explain-method").value);
      form.append("explain_threshold", "0");
    }
    if (xhr) xhr.abort();
    const req = new XMLHttpRequest();
    xhr = req;
    const started = performance.now();
    delete document.body.dataset.ready;
    $("stage").setAttribute("aria-busy", "true");
    const progress = $("progress");
    progress.hidden = false; progress.value = 0;
    const what = isExam ? files.length + " files" : "the image";
    status("Uploading " + what + "…", false);
    req.upload.onprogress = (e) => {
      if (!e.lengthComputable) return;
      progress.value = e.loaded / e.total;
      status("Uploading " + what + ": " + Math.round(100 * e.loaded / e.total) + " % (" + mb(e.loaded) + " of " + mb(e.total) + " MB)", false);
    };
    req.upload.onload = () => {
      progress.removeAttribute("value");  // indeterminate while the server works
      status((explain ? "Analysing and explaining " : "Analysing ") + what + " on the server…", false);
    };
    const done = () => { $("stage").removeAttribute("aria-busy"); progress.hidden = true; if (xhr === req) xhr = null; };
    req.onerror = () => { done(); status("The server cannot be reached.", true); };
    req.onload = async () => {
      if (xhr !== req) return;
      let body = null;
      try { body = JSON.parse(req.responseText); } catch (e) { body = null; }
      if (req.status !== 200 || !body) {
        done();
        status((body && body.error && body.error.message) || ("Request failed (" + req.status + ")"), true);
        return;
      }
      status("Drawing…", false);
      try {
        if (isExam) await showExam(body); else await showPrediction(body);
      } catch (e) {
        done(); status("The result cannot be shown: " + e.message, true); return;
      }
      done();
      const secs = ((performance.now() - started) / 1000).toFixed(1);
      status("Ready in " + secs + " s" + (isExam && $("explain").checked ? " (explanations are for single images)" : ""), false);
      document.body.dataset.ready = "1";
    };
    req.open("POST", isExam ? "/api/v1/exam" : "/api/v1/predict");
    req.send(form);
  }

  function save(blob, name) {
    const a = document.createElement("a");
    a.href = URL.createObjectURL(blob);
    a.download = name;
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(a.href), 1000);
  }

  async function filesFromDrop(dt) {
    const entries = Array.from(dt.items || []).map((i) => i.webkitGetAsEntry && i.webkitGetAsEntry()).filter(Boolean);
    if (!entries.length || entries.every((e) => e.isFile)) return Array.from(dt.files);
    const out = [];
    async function walk(entry) {
      if (entry.isFile) out.push(await new Promise((res, rej) => entry.file(res, rej)));
      else if (entry.isDirectory) {
        const reader = entry.createReader();
        for (;;) {
          const batch = await new Promise((res, rej) => reader.readEntries(res, rej));
          if (!batch.length) break;
          for (const e of batch) await walk(e);
        }
      }
    }
    for (const e of entries) await walk(e);
    return out;
  }

  // ---------------------------------------------------------------- events
  slider.addEventListener("input", render);
  $("show-heatmap").addEventListener("change", render);
  for (const id of ["file", "folder"]) {
    $(id).addEventListener("change", (e) => {
      const files = Array.from(e.target.files);
      e.target.value = "";  // choosing the same file again sends it again
      send(files);
    });
  }
  $("rerun").addEventListener("click", () => send(lastFiles));
  const zone = $("dropzone");
  zone.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); $("file").click(); } });
  document.addEventListener("dragover", (e) => { e.preventDefault(); document.body.classList.add("dragging"); });
  document.addEventListener("dragleave", (e) => { if (!e.relatedTarget) document.body.classList.remove("dragging"); });
  document.addEventListener("drop", async (e) => {
    e.preventDefault(); document.body.classList.remove("dragging");
    send(await filesFromDrop(e.dataTransfer));
  });

  // zoom and pan: wheel, drag, pinch, buttons, keys
  const canvas = $("canvas");
  const at = (e) => { const r = canvas.getBoundingClientRect(); return [(e.clientX - r.left) * dpr(), (e.clientY - r.top) * dpr()]; };
  canvas.addEventListener("wheel", (e) => {
    if (!single) return;
    e.preventDefault();
    const [x, y] = at(e);
    single.zoom(Math.exp(-e.deltaY * 0.0015), x, y);
  }, { passive: false });
  const pointers = new Map();
  let pinch = 0;
  canvas.addEventListener("pointerdown", (e) => { canvas.setPointerCapture(e.pointerId); pointers.set(e.pointerId, at(e)); });
  canvas.addEventListener("pointermove", (e) => {
    if (!single || !pointers.has(e.pointerId)) return;
    const prev = pointers.get(e.pointerId), now = at(e);
    pointers.set(e.pointerId, now);
    if (pointers.size === 1) single.pan(now[0] - prev[0], now[1] - prev[1]);
    else if (pointers.size === 2) {
      const [a, b] = Array.from(pointers.values());
      const dist = Math.hypot(a[0] - b[0], a[1] - b[1]);
      if (pinch) single.zoom(dist / pinch, (a[0] + b[0]) / 2, (a[1] + b[1]) / 2);
      pinch = dist;
    }
  });
  const up = (e) => { pointers.delete(e.pointerId); if (pointers.size < 2) pinch = 0; };
  canvas.addEventListener("pointerup", up);
  canvas.addEventListener("pointercancel", up);
  $("zoom-in").addEventListener("click", () => single && single.zoom(1.5));
  $("zoom-out").addEventListener("click", () => single && single.zoom(1 / 1.5));
  $("zoom-fit").addEventListener("click", () => single && single.reset());
  $("back-to-exam").addEventListener("click", () => {
    $("viewer").hidden = true; $("exam").hidden = false; single = null; singleData = null;
    $("download-png").hidden = true; $("heatmap-controls").hidden = true; showFacts(null);
    layout(); render();
  });
  $("viewer").addEventListener("keydown", (e) => {
    if (!single) return;
    const step = 60 * dpr();
    const keys = {
      "+": () => single.zoom(1.5), "=": () => single.zoom(1.5), "-": () => single.zoom(1 / 1.5), "0": () => single.reset(),
      ArrowLeft: () => single.pan(step, 0), ArrowRight: () => single.pan(-step, 0),
      ArrowUp: () => single.pan(0, step), ArrowDown: () => single.pan(0, -step),
    };
    if (keys[e.key]) { e.preventDefault(); keys[e.key](); }
  });

  $("download-png").addEventListener("click", () => {
    if (!single) return;
    // the display picture with the shown boxes, at its own resolution
    const off = document.createElement("canvas");
    off.width = single.img.naturalWidth; off.height = single.img.naturalHeight;
    const v = new View(off, singleData, single.img, { mirror: false, heat: single.heat });
    v.fit(); v.draw();
    off.toBlob((b) => save(b, "detections.png"), "image/png");
  });
  $("download-json").addEventListener("click", () => {
    const strip = (pred) => {
      const out = Object.assign({}, pred, { detections: shown(pred.detections) });
      out.image = Object.assign({}, pred.image);
      delete out.image.png_base64;
      if (out.image.display) { out.image.display = Object.assign({}, out.image.display); delete out.image.display.url; delete out.image.display.id; }
      out.detections = out.detections.map((d) => { const c = Object.assign({}, d); delete c.heatmap; return c; });
      if (out.explanation) { out.explanation = Object.assign({}, out.explanation); delete out.explanation.overlay; }
      return out;
    };
    let out;
    if (exam && !single) {
      out = Object.assign({}, exam.data, { threshold: threshold() });
      out.studies = exam.data.studies.map((s) => Object.assign({}, s, {
        views: Object.fromEntries(Object.entries(s.views).map(([k, v]) => [k, v ? strip(v) : null])),
        extra: s.extra.map(strip), scores: breastScores(s),
      }));
    } else {
      out = Object.assign(strip(singleData), { threshold: threshold() });
    }
    save(new Blob([JSON.stringify(out, null, 2)], { type: "application/json" }), "detections.json");
  });
  layout();
})();
