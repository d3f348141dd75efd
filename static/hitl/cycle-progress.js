// A cycle's live progress: polls the page's progress URL while the cycle trains or evaluates,
// updates the epoch, loss and ETA and the loss chart, and reloads the page once it is decided
// (the snapshot pictures are drawn from the reloaded page).
(function () {
  "use strict";
  const POLL_MS = 2000;

  function eta(seconds) {
    if (seconds === null || seconds === undefined) return "—";
    if (seconds < 90) return `${Math.round(seconds)} s`;
    return `${Math.round(seconds / 60)} min`;
  }

  function show(box, p) {
    const set = (name, value) => { const el = box.querySelector(`[data-field="${name}"]`); if (el) el.textContent = value; };
    set("status", p.status);
    set("stage", p.stage || "—");
    set("epoch", p.epoch ? `${p.epoch} / ${p.epochs}` : "—");
    set("loss", p.train_loss === null || p.train_loss === undefined ? "—" : p.train_loss.toFixed(4));
    set("eta", eta(p.eta_seconds));
    const bar = box.querySelector("progress");
    if (bar && p.epochs) { bar.max = p.epochs; bar.value = p.epoch || 0; }
    const source = document.getElementById("progress-data");
    const canvas = box.querySelector("canvas[data-kind=loss]");
    if (source && canvas && p.history.length) {
      source.textContent = JSON.stringify(p);
      window.hitlCharts.draw(canvas);
    }
  }

  document.addEventListener("DOMContentLoaded", () => {
    const box = document.getElementById("cycle-progress");
    if (!box || box.dataset.active !== "true") return;
    const tick = () => fetch(box.dataset.url, { headers: { Accept: "application/json" }, credentials: "same-origin" })
      .then((r) => (r.ok ? r.json() : Promise.reject(r.status)))
      .then((p) => {
        show(box, p);
        if (p.active) setTimeout(tick, POLL_MS); else window.location.reload();
      })
      .catch(() => setTimeout(tick, POLL_MS * 5));
    setTimeout(tick, POLL_MS);
  });
})();
