// meddet upload page: send the file to the API once, then draw and filter detections on the client.
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  const result = $("result");
  const classes = JSON.parse(result.dataset.classes);
  const slider = $("threshold");
  const canvas = $("canvas");
  const ctx = canvas.getContext("2d");
  let data = null;
  let image = null;
  let selected = null;  // the finding whose heat map alone is shown (null: every visible finding's)
  const heatmaps = new Map();  // detection -> loaded heat-map Image
  const enabled = classes.map(() => true);

  slider.value = result.dataset.threshold;
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

  function visible() {
    const t = Number(slider.value);
    return data.detections.filter((d) => d.score >= t && enabled[d.class]);
  }

  function drawHeatmaps(dets) {
    if (!data.explanation || !$("show-heatmap").checked) return 0;
    const shown = (selected && dets.includes(selected) ? [selected] : dets).filter((d) => heatmaps.has(d));
    // Each map is a transparent-where-cold RGBA PNG, stretched over the image (it may be smaller).
    for (const d of shown) ctx.drawImage(heatmaps.get(d), 0, 0, canvas.width, canvas.height);
    return shown.length;
  }

  function render() {
    if (!data || !image) return;
    $("threshold-value").textContent = Number(slider.value).toFixed(2);
    ctx.drawImage(image, 0, 0);
    const dets = visible();
    if (selected && !dets.includes(selected)) selected = null;
    canvas.dataset.heatmaps = String(drawHeatmaps(dets));
    const lw = Math.max(2, Math.round(Math.max(canvas.width, canvas.height) / 400));
    ctx.font = Math.max(12, Math.round(canvas.height / 45)) + "px sans-serif";
    ctx.textBaseline = "bottom";
    for (const d of dets) {
      const [x1, y1, x2, y2] = d.box;
      ctx.strokeStyle = d.color; ctx.lineWidth = lw;
      ctx.strokeRect(x1, y1, x2 - x1, y2 - y1);
      const text = d.label + " " + d.score.toFixed(2);
      const tw = ctx.measureText(text).width;
      const th = parseInt(ctx.font, 10) + 4;
      const ty = y1 - th >= 0 ? y1 : y2 + th;
      ctx.fillStyle = d.color; ctx.fillRect(x1, ty - th, tw + 6, th);
      ctx.fillStyle = "#000"; ctx.fillText(text, x1 + 3, ty - 2);
    }
    canvas.dataset.visible = String(dets.length);
    const list = $("findings");
    list.replaceChildren();
    for (const d of dets) {
      const li = document.createElement("li");
      li.className = "finding";
      const sw = document.createElement("span");
      sw.className = "swatch sw-" + (d.class % 8);
      li.append(sw, document.createTextNode(
        d.label + " — " + d.score.toFixed(3) + " at (" + d.box.map((v) => Math.round(v)).join(", ") + ")"));
      if (heatmaps.has(d)) {
        li.classList.add("explained");
        li.title = "Show only this finding's heat map (click again for all)";
        if (d === selected) li.classList.add("selected");
        li.addEventListener("click", () => { selected = selected === d ? null : d; render(); });
      }
      list.append(li);
    }
    $("count").textContent = "(" + dets.length + " of " + data.detections.length + ")";
  }

  function showFacts() {
    const dl = $("facts");
    dl.replaceChildren();
    const facts = Object.assign({ format: data.image.format, size: data.image.width + " × " + data.image.height },
      data.dicom || {});
    for (const [k, v] of Object.entries(facts)) {
      if (v === null || v === "" || v === undefined) continue;
      const dt = document.createElement("dt"); dt.textContent = k.replace(/_/g, " ");
      const dd = document.createElement("dd"); dd.textContent = Array.isArray(v) ? v.join(" × ") : String(v);
      dl.append(dt, dd);
    }
  }

  function loadImage(src) {
    return new Promise((resolve, reject) => {
      const img = new Image();
      img.onload = () => resolve(img);
      img.onerror = () => reject(new Error("image cannot be shown"));
      img.src = src;
    });
  }

  function showExplanation() {
    const e = data.explanation;
    $("heatmap-controls").hidden = !e;
    if (!e) return;
    let note = e.explained + " of " + e.candidates + " findings explained (" + e.method + ", " + e.explain_ms + " ms)";
    if (e.limited_by === "time") note += "; the time limit stopped the rest";
    if (e.limited_by === "max_detections") note += "; the highest-scoring ones only";
    if (e.empty_maps) note += "; " + e.empty_maps + " with an empty map (nothing at that layer raised the score)";
    $("explain-note").textContent = note + ". Click a finding to see its map alone.";
  }

  async function upload(file) {
    if (!file) return;
    const explain = $("explain").checked;
    status(explain ? "Analysing and explaining…" : "Analysing…", false);
    result.hidden = true;
    delete document.body.dataset.ready;
    const form = new FormData();
    form.append("file", file);
    if (explain) {
      // The highest-scoring findings whatever the slider says (the server caps how many), so moving the
      // slider later still finds the top ones explained.
      form.append("explain", "1"); form.append("explain_method", $("explain-method").value);
      form.append("explain_threshold", "0");
    }
    let resp;
    try {
      resp = await fetch("/api/v1/predict?include_image=1", { method: "POST", body: form });
    } catch (e) {
      status("The server cannot be reached.", true);
      return;
    }
    const body = await resp.json().catch(() => null);
    if (!resp.ok || !body) {
      status((body && body.error && body.error.message) || ("Request failed (" + resp.status + ")"), true);
      return;
    }
    data = body;
    selected = null;
    heatmaps.clear();
    try {
      image = await loadImage("data:image/png;base64," + data.image.png_base64);
      for (const d of data.detections) if (d.heatmap) heatmaps.set(d, await loadImage(d.heatmap));
    } catch (e) {
      status("The result cannot be shown: " + e.message, true);
      return;
    }
    canvas.width = image.naturalWidth; canvas.height = image.naturalHeight;
    result.hidden = false;
    showFacts();
    showExplanation();
    render();
    status(data.detections.length + " detections in " + data.inference_ms + " ms", false);
    document.body.dataset.ready = "1";
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

  slider.addEventListener("input", render);
  $("show-heatmap").addEventListener("change", render);
  $("file").addEventListener("change", (e) => upload(e.target.files[0]));
  const zone = $("dropzone");
  zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault(); zone.classList.remove("over");
    upload(e.dataTransfer.files[0]);
  });
  $("download-png").addEventListener("click", () => canvas.toBlob((b) => save(b, "detections.png"), "image/png"));
  $("download-json").addEventListener("click", () => {
    const out = Object.assign({}, data, { detections: visible(), threshold: Number(slider.value) });
    out.image = Object.assign({}, data.image); delete out.image.png_base64;
    out.detections = out.detections.map((d) => { const c = Object.assign({}, d); delete c.heatmap; return c; });
    if (out.explanation) { out.explanation = Object.assign({}, out.explanation); delete out.explanation.overlay; }
    save(new Blob([JSON.stringify(out, null, 2)], { type: "application/json" }), "detections.json");
  });
})();
