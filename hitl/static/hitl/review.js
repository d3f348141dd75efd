// The keyboard-first review page (templates/hitl/review.html). No page reloads: leases, labels,
// skips and undos go to hitl's small JSON views with the CSRF token; the next images are preloaded.
"use strict";

(() => {
  const root = document.getElementById("review");
  if (!root) return;

  const labels = JSON.parse(document.getElementById("review-labels").textContent);
  const KEYS = "123456789";
  const ZOOMS = [1, 2, 4, 8];
  const RESERVED = new Set(["s", "u", "z"]);  // keys that act even when many labels can be filtered
  const $ = (id) => document.getElementById(id);
  const el = {
    image: $("review-image"), empty: $("review-empty"), waiting: $("review-waiting"), frame: $("review-frame"),
    predicted: $("review-predicted"), confidence: $("review-confidence"), version: $("review-version"),
    why: $("review-why"), keys: $("review-keys"), filter: $("review-filter"), status: $("review-status"),
    size: $("review-size"), zoomLevel: $("review-zoom-level"), itemLink: $("review-item-link"),
  };
  const leaseUrl = root.dataset.leaseUrl;
  const leaseMs = Number(root.dataset.leaseSeconds) * 1000;

  let tasks = [];       // the leased tasks in front of the reviewer, in queue order
  let index = 0;        // which of them is shown
  const done = [];      // this session's labels and blind answers, newest last: what U undoes
  let shownAt = performance.now();
  let zoom = 0;
  // Keys act in the order pressed: each action waits for the one before (a fast reviewer's
  // second key applies to the next item, never to the one still being saved).
  let chain = Promise.resolve();
  const queue = (action) => { chain = chain.then(action); };

  function say(message, isError = false) {
    el.status.textContent = message;
    el.status.classList.toggle("error", isError);
  }

  async function post(url, body) {
    const response = await fetch(url, {
      method: "POST", credentials: "same-origin",
      headers: { "Content-Type": "application/json", "Accept": "application/json", "X-CSRFToken": root.dataset.csrf },
      body: JSON.stringify(body || {}),
    });
    let data;
    try {
      data = await response.json();
    } catch (_) {
      throw new Error(response.redirected ? "your session has ended: reload the page and log in"
        : `the server answered ${response.status}`);
    }
    if (!response.ok) {
      const error = new Error(data.detail || `the server answered ${response.status}`);
      error.status = response.status;
      throw error;
    }
    return data;
  }

  function current() { return tasks[index] || null; }

  function visibleLabels() {
    const text = el.filter ? el.filter.value.trim().toLowerCase() : "";
    return labels.filter((label) => label.toLowerCase().includes(text));
  }

  function renderKeys() {
    const task = current();
    const predicted = task && task.prediction ? task.prediction.label : null;
    const visible = visibleLabels();
    for (const item of el.keys.children) {
      const position = visible.indexOf(item.dataset.label);
      item.hidden = position < 0;
      item.querySelector("kbd").textContent = position >= 0 && position < KEYS.length ? KEYS[position] : "";
      item.classList.toggle("predicted", item.dataset.label === predicted);
    }
  }

  function fitScale(task) {
    const width = el.frame.clientWidth - 8;
    const height = el.frame.clientHeight - 8;
    return Math.max(0.01, Math.min(width / task.width, height / task.height));
  }

  function applyZoom() {
    const task = current();
    if (!task) return;
    const scale = fitScale(task) * ZOOMS[zoom];
    el.image.style.width = `${Math.round(task.width * scale)}px`;
    el.image.style.height = `${Math.round(task.height * scale)}px`;
    el.zoomLevel.textContent = zoom === 0 ? "fit" : `fit × ${ZOOMS[zoom]}`;
  }

  function why(task) {
    const parts = [task.reason_text];
    if (task.reason === "strategy") parts.push(`strategy ${task.strategy}`);
    if (task.score !== null) parts.push(`score ${task.score}`);
    if (task.golden) parts.push("golden set");
    if (task.blind) parts.push("two reviewers answer blind");
    parts.push(`batch ${task.batch_id}, rank ${task.rank}`);
    return parts.join(" · ");
  }

  function preload() {
    for (const task of tasks) {
      if (task !== current()) new Image().src = task.image_url;
    }
  }

  function show() {
    const task = current();
    el.image.hidden = !task;
    el.empty.hidden = Boolean(task);
    root.dataset.taskId = task ? String(task.id) : "";
    if (!task) {
      el.predicted.textContent = "–";
      el.confidence.textContent = el.version.textContent = el.why.textContent = el.size.textContent = "";
      el.itemLink.hidden = true;
      renderKeys();
      return;
    }
    el.image.classList.toggle("small", task.width < 256 || task.height < 256);
    el.image.src = task.image_url;
    el.image.alt = `item ${task.item_id}`;
    zoom = 0;
    applyZoom();
    el.size.textContent = `${task.width}×${task.height} · ${index + 1} of ${tasks.length} in front of you`;
    el.itemLink.hidden = false;
    el.itemLink.href = task.item_url;
    if (task.prediction) {
      el.predicted.textContent = task.prediction.label;
      el.confidence.textContent = `confidence ${task.prediction.confidence.toFixed(3)}`;
      el.version.textContent = `model ${task.prediction.model_version}`;
    } else {
      el.predicted.textContent = "no prediction";
      el.confidence.textContent = el.version.textContent = "";
    }
    el.why.textContent = why(task);
    renderKeys();
    shownAt = performance.now();
    preload();
  }

  async function lease() {
    const shown = current();
    try {
      const data = await post(leaseUrl);
      tasks = data.tasks;
      const again = shown ? tasks.findIndex((task) => task.id === shown.id) : -1;
      el.waiting.textContent = String(data.waiting);
      if (again >= 0) {
        index = again;  // the same item stays in front of the reviewer: no flicker, no reset
        renderKeys();
        preload();
      } else {
        index = Math.min(index, Math.max(0, tasks.length - 1));
        show();
      }
    } catch (error) {
      say(`Could not take items: ${error.message}`, true);
    }
    scheduleRenewal();
  }

  function dropCurrent() {
    tasks.splice(index, 1);
    if (index >= tasks.length) index = Math.max(0, tasks.length - 1);
  }

  async function answer(body) {
    const task = current();
    if (!task) return;
    try {
      const data = await post(task.answer_url, { ...body, lead_time_seconds: (performance.now() - shownAt) / 1000 });
      if (data.undo) done.push(data.undo);
      say(data.message);
      dropCurrent();
      show();
    } catch (error) {
      say(error.message, true);
      if (error.status !== 409) return;
      dropCurrent();  // someone else has it, or it was reviewed meanwhile
    }
    await lease();  // top up the window and renew the leases
  }

  function pick(label) {
    if (label === undefined) return;
    if (el.filter) el.filter.value = "";
    queue(() => answer({ value: label }));
  }

  function accept() {
    const task = current();
    if (!task) return;
    if (!task.prediction) {
      say("No model label to accept: pick one with its number key.", true);
      return;
    }
    pick(task.prediction.label);
  }

  async function undo() {
    const last = done.pop();
    if (!last) {
      say("Nothing to undo yet.", true);
      return;
    }
    try {
      const data = await post(last.url);
      if (data.task) {
        tasks = tasks.filter((task) => task.id !== data.task.id);
        tasks.splice(index, 0, data.task);
        show();
      }
      say(data.message);
    } catch (error) {
      say(`Could not undo: ${error.message}`, true);
    }
  }

  function move(step) {
    if (!tasks.length) return;
    index = (index + step + tasks.length) % tasks.length;
    show();
  }

  function changeZoom(step) {
    zoom = Math.min(ZOOMS.length - 1, Math.max(0, zoom + step));
    applyZoom();
  }

  function onFilterKey(event) {
    if (event.key === "Escape") {
      el.filter.value = "";
      el.filter.blur();
      renderKeys();
    } else if (event.key === "Enter") {
      const visible = visibleLabels();
      if (el.filter.value.trim() && visible.length) pick(visible[0]);
      el.filter.blur();
      renderKeys();
    } else if (KEYS.includes(event.key)) {
      pick(visibleLabels()[KEYS.indexOf(event.key)]);
      el.filter.blur();
      renderKeys();
    } else {
      return;
    }
    event.preventDefault();
  }

  function onKey(event) {
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    if (el.filter && event.target === el.filter) {
      onFilterKey(event);
      return;
    }
    if (event.target instanceof HTMLInputElement || event.target instanceof HTMLTextAreaElement) return;
    const key = event.key.length === 1 ? event.key.toLowerCase() : event.key;
    if (KEYS.includes(key)) pick(visibleLabels()[KEYS.indexOf(key)]);
    else if (key === "Enter") accept();
    else if (key === "s") queue(() => answer({ skip: true }));
    else if (key === "u") queue(undo);
    else if (key === "ArrowRight" || key === "ArrowDown") queue(() => move(1));
    else if (key === "ArrowLeft" || key === "ArrowUp") queue(() => move(-1));
    else if (key === "z") changeZoom(zoom === ZOOMS.length - 1 ? -ZOOMS.length : 1);
    else if (key === "+" || key === "=") changeZoom(1);
    else if (key === "-") changeZoom(-1);
    else if (el.filter && (key === "/" || (/^[a-z]$/.test(key) && !RESERVED.has(key)))) {
      el.filter.focus();
      if (key !== "/") el.filter.value += key;
      renderKeys();
    } else return;
    event.preventDefault();
  }

  document.addEventListener("keydown", onKey);
  if (el.filter) el.filter.addEventListener("input", renderKeys);
  el.keys.addEventListener("click", (event) => {
    const item = event.target.closest("li[data-label]");
    if (item) pick(item.dataset.label);
  });
  $("review-accept").addEventListener("click", accept);
  $("review-skip").addEventListener("click", () => queue(() => answer({ skip: true })));
  $("review-undo").addEventListener("click", () => queue(undo));
  $("review-prev").addEventListener("click", () => queue(() => move(-1)));
  $("review-next").addEventListener("click", () => queue(() => move(1)));
  $("review-zoom-in").addEventListener("click", () => changeZoom(1));
  $("review-zoom-out").addEventListener("click", () => changeZoom(-1));
  window.addEventListener("resize", applyZoom);
  el.image.addEventListener("load", () => { root.dataset.loadedItem = el.image.alt; });

  // Renew before the leases run out; with nothing in front of the reviewer, look again soon.
  let renewal = null;
  function scheduleRenewal() {
    clearTimeout(renewal);
    renewal = setTimeout(() => queue(lease), tasks.length ? Math.max(5000, leaseMs / 2) : 5000);
  }
  queue(lease);
})();
