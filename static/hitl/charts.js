// The pages' charts. Each <canvas data-chart="ID" data-kind="KIND"> draws the JSON of the
// <script type="application/json" id="ID"> beside it (Django's json_script) with the builder
// named by KIND. No inline script: the Content-Security-Policy allows only 'self'.
(function () {
  "use strict";
  const BLUE = "#2563eb", ORANGE = "#ea580c", GREEN = "#047857", RED = "#b91c1c", GRAY = "#9ca3af";
  const pct = (v) => (v === null || v === undefined ? "—" : (100 * v).toFixed(1) + "%");
  // a date for spans of days, the time of day (to the second) for a short span
  function when(ms) {
    const iso = new Date(ms).toISOString();
    return this.max - this.min > 2 * 86400000 ? iso.slice(0, 10) : iso.slice(5, 19).replace("T", " ");
  }

  // Writes each cell's count on the heatmap (the matrix chart draws only the colours).
  const cellCounts = {
    id: "hitlCellCounts",
    afterDatasetsDraw(chart) {
      const { ctx } = chart;
      ctx.save();
      ctx.textAlign = "center";
      ctx.textBaseline = "middle";
      ctx.font = "11px system-ui, sans-serif";
      chart.getDatasetMeta(0).data.forEach((cell, i) => {
        const raw = chart.data.datasets[0].data[i];
        if (!raw.v) return;
        const { x, y, width, height } = cell.getProps(["x", "y", "width", "height"], true);
        ctx.fillStyle = raw.share > 0.5 ? "#fff" : "#1d2430";
        ctx.fillText(String(raw.v), x + width / 2, y + height / 2);
      });
      ctx.restore();
    },
  };
  const unitAxis = (title) => ({ min: 0, max: 1, title: { display: true, text: title }, ticks: { callback: pct } });

  function heatmap(d) {
    const n = d.labels.length;
    return {
      type: "matrix", plugins: [cellCounts],
      data: { datasets: [{
        label: "items", data: d.cells,
        backgroundColor: (c) => `rgba(37, 99, 235, ${0.06 + 0.94 * (c.raw ? c.raw.share : 0)})`,
        borderColor: "#fff", borderWidth: 1,
        width: ({ chart }) => (chart.chartArea || {}).width / n - 1,
        height: ({ chart }) => (chart.chartArea || {}).height / n - 1,
      }] },
      options: {
        maintainAspectRatio: false, animation: false,
        plugins: { legend: { display: false }, tooltip: { callbacks: {
          title: () => "",
          label: (c) => `human ${c.raw.y}, model ${c.raw.x}: ${c.raw.v} (${pct(c.raw.share)} of the row)`,
        } } },
        scales: {
          x: { type: "category", labels: d.labels, offset: true, grid: { display: false },
               title: { display: true, text: "model's label" }, ticks: { autoSkip: false, maxRotation: 60 } },
          y: { type: "category", labels: [...d.labels].reverse(), offset: true, grid: { display: false },
               title: { display: true, text: "human label" }, ticks: { autoSkip: false } },
        },
      },
    };
  }

  function recall(d) {
    return {
      type: "bar",
      data: { labels: d.labels, datasets: [
        { type: "line", label: "recall", data: d.recall, showLine: false, pointRadius: 5, backgroundColor: BLUE,
          borderColor: BLUE },
        { type: "bar", label: `${pct(d.confidence)} interval`, data: d.intervals, backgroundColor: "rgba(37,99,235,.25)",
          barPercentage: 0.35 },
      ] },
      options: { maintainAspectRatio: false, animation: false, scales: { y: unitAxis("recall") },
        plugins: { tooltip: { callbacks: { afterLabel: (c) => `support ${d.support[c.dataIndex]}` } } } },
    };
  }

  function reliability(d) {
    const sets = [{ label: "perfect calibration", clip: false, data: [{ x: 0, y: 0 }, { x: 1, y: 1 }], borderColor: GRAY,
                    borderDash: [4, 4], pointRadius: 0, showLine: true }];
    const add = (key, label, color) => d[key] && sets.push({ label, data: d[key], borderColor: color, clip: 8,
      backgroundColor: color, showLine: true, pointRadius: (c) => 3 + Math.min(6, Math.sqrt((c.raw || {}).count || 0) / 2) });
    add("before", "before temperature (calibration labels)", ORANGE);
    add("after", `after T = ${d.temperature ? d.temperature.toFixed(2) : "1"} (calibration labels)`, BLUE);
    add("golden", "golden set (calibrated)", GREEN);
    return { type: "scatter", data: { datasets: sets }, options: {
      maintainAspectRatio: false, animation: false,
      scales: { x: unitAxis("mean confidence in bin"), y: unitAxis("accuracy in bin") },
      plugins: { tooltip: { callbacks: { label: (c) => `${c.dataset.label}: confidence ${pct(c.raw.x)}, ` +
        `accuracy ${pct(c.raw.y)}${c.raw.count ? ", " + c.raw.count + " items" : ""}` } } },
    } };
  }

  function deltas(d) {
    return { type: "bar", data: { labels: d.labels, datasets: [{
      label: `${d.candidate} − ${d.production}`, data: d.delta,
      backgroundColor: d.delta.map((v) => (v >= 0 ? GREEN : RED)),
    }] }, options: { indexAxis: "y", maintainAspectRatio: false, animation: false,
      scales: { x: { title: { display: true, text: "candidate minus production (golden set)" },
                     ticks: { callback: (v) => (100 * v).toFixed(0) + " pts" } } },
      plugins: { legend: { display: false } } } };
  }

  function overTime(d) {
    const band = (points, color, label) => [
      { label, data: points, borderColor: color, backgroundColor: color, showLine: true, pointRadius: 4, clip: 8 },
      { label: label + " (interval)", data: points.map((p) => ({ x: p.x, y: p.high })), borderColor: "transparent",
        pointRadius: 0, showLine: true, fill: false },
      { label: label + " (interval low)", data: points.map((p) => ({ x: p.x, y: p.low })), borderColor: "transparent",
        backgroundColor: color + "33", pointRadius: 0, showLine: true, fill: "-1" },
    ];
    return { type: "scatter", data: { datasets: [
      ...band(d.golden, "#047857", "golden-set accuracy of production"),
      ...band(d.audit, "#2563eb", "live accuracy (audit slices)"),
    ] }, options: { maintainAspectRatio: false, animation: false,
      scales: { x: { type: "linear", ticks: { callback: when, maxTicksLimit: 6 } }, y: unitAxis("accuracy") },
      plugins: {
        legend: { labels: { filter: (item) => !item.text.includes("(interval") } },
        tooltip: { filter: (c) => !c.dataset.label.includes("(interval"), callbacks: {
          label: (c) => `${c.raw.version}: ${pct(c.raw.y)} [${pct(c.raw.low)}, ${pct(c.raw.high)}], ` +
                        `${c.raw.n} items, ${c.raw.source}` } },
      } } };
  }

  function loss(d) {
    return { type: "line", data: { labels: d.history.map((r) => r.epoch), datasets: [
      { label: "training loss", data: d.history.map((r) => r.train_loss), borderColor: ORANGE, yAxisID: "y" },
      { label: "training accuracy", data: d.history.map((r) => r.train_accuracy), borderColor: BLUE, yAxisID: "y1" },
    ] }, options: { maintainAspectRatio: false, animation: false, scales: {
      x: { title: { display: true, text: "epoch" } }, y: { position: "left", beginAtZero: true },
      y1: { ...unitAxis("accuracy"), position: "right", grid: { drawOnChartArea: false } } } } };
  }

  function sparkline(d) {
    const colors = [BLUE, ORANGE, GREEN, RED, "#7c3aed", "#0891b2"];
    const sets = d.deployments.flatMap((dep, i) => [
      { label: `${dep.name}: class mix`, data: dep.points.map((p) => ({ x: p.x, y: p.class_psi, n: p.n })),
        borderColor: colors[i % colors.length], backgroundColor: colors[i % colors.length], showLine: true,
        pointRadius: 2 },
      { label: `${dep.name}: confidence`, data: dep.points.map((p) => ({ x: p.x, y: p.confidence_psi, n: p.n })),
        borderColor: colors[i % colors.length], borderDash: [4, 3], showLine: true, pointRadius: 2 },
    ]);
    return { type: "scatter", data: { datasets: sets }, options: { maintainAspectRatio: false, animation: false,
      scales: { x: { type: "linear", ticks: { callback: when, maxTicksLimit: 6 } },
                y: { beginAtZero: true, title: { display: true, text: "PSI" } } },
      plugins: { tooltip: { callbacks: { label: (c) => `${c.dataset.label}: PSI ${c.raw.y.toFixed(3)} ` +
        `(${c.raw.n} predictions)` } } } } };
  }

  const BUILDERS = { heatmap, recall, reliability, deltas, overTime, loss, sparkline };

  function draw(canvas) {
    const source = document.getElementById(canvas.dataset.chart);
    const data = JSON.parse(source.textContent);
    if (canvas.hitlChart) canvas.hitlChart.destroy();
    canvas.hitlChart = new Chart(canvas, BUILDERS[canvas.dataset.kind](data));
    return canvas.hitlChart;
  }

  window.hitlCharts = { draw, BUILDERS };
  document.addEventListener("DOMContentLoaded", () => {
    document.querySelectorAll("canvas[data-chart]").forEach(draw);
  });
})();
