"use strict";
// Renders /v1/mesh/nodes as a table: the data the router embedded in the page at once, then a
// fresh copy every 2 s. Every value goes in through textContent, never as markup: model names and
// reasons come from Consul, which anyone allowed to register a service can write.
(() => {
  const REFRESH_MS = 2000;
  // Errors stay listed this long after they clear, so a flapping node is noticed.
  const KEEP_CLEARED_MS = 10 * 60 * 1000;
  const STATES = ["active", "degraded", "draining", "out"];
  const body = document.body;
  const rows = document.getElementById("nodes");
  const summary = document.getElementById("summary");
  const status = document.getElementById("status");
  // Instance id -> the last error seen on it and when: { text, seen, cleared }.
  const errors = new Map();

  const el = (tag, text, cls) => {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (cls) node.className = cls;
    return node;
  };
  const cell = (...children) => {
    const td = el("td");
    for (const child of children) if (child) td.append(child);
    return td;
  };
  const ago = (ms) => {
    const s = Math.max(0, Math.round(ms / 1000));
    if (s < 90) return s + " s ago";
    if (s < 5400) return Math.round(s / 60) + " min ago";
    if (s < 129600) return Math.round(s / 3600) + " h ago";
    return Math.round(s / 86400) + " d ago";
  };
  const list = (report) => {
    if (!report || report.total === 0) return "none";
    const more = report.total - report.names.length;
    return report.names.join(", ") + (more > 0 ? " (+" + more + " more)" : "");
  };

  // The error to show for node `n` now, remembering it for after it clears.
  const errorOf = (n, now) => {
    const current = n.meta_error ? "Meta: " + n.meta_error : n.state === "out" ? n.reason : null;
    if (current) {
      errors.set(n.id, { text: current, seen: now, cleared: null });
      return el("span", current, "error");
    }
    const last = errors.get(n.id);
    if (!last) return null;
    if (last.cleared === null) last.cleared = now;
    if (now - last.cleared > KEEP_CLEARED_MS) {
      errors.delete(n.id);
      return null;
    }
    return el("span", last.text + " (cleared " + ago(now - last.cleared) + ")", "sub");
  };

  const row = (n, now) => {
    const tr = el("tr");
    tr.dataset.id = n.id;
    tr.append(
      cell(el("strong", n.node), el("span", n.id, "sub"), el("span", n.address, "sub")),
      // An out node's reason is its error, shown with the errors.
      cell(el("span", n.state, "badge " + n.state), n.reason && n.state !== "out" ? el("span", n.reason, "sub") : null),
      cell(el("span", n.weight)),
    );
    tr.append(cell(el("span", n.reached), n.skipped_because ? el("span", n.skipped_because, "sub") : null));
    const bar = el("div", null, "bar" + (n.in_flight >= n.capacity ? " full" : ""));
    const fill = el("span");
    fill.style.width = (n.capacity > 0 ? Math.min(100, (100 * n.in_flight) / n.capacity) : 100) + "%";
    bar.append(fill);
    const queued = Math.max(0, n.in_flight - n.capacity);
    tr.append(cell(
      el("span", n.in_flight + " / " + n.capacity),
      queued > 0 ? el("span", queued + " over capacity", "sub error") : null,
      bar,
    ));
    const gpu = n.gpu;
    tr.append(gpu && gpu.count > 0
      ? cell(el("span", (gpu.count > 1 ? gpu.count + " × " : "") + (gpu.name || "GPU")),
             gpu.vram_mib ? el("span", (gpu.vram_mib / 1024).toFixed(1) + " GiB VRAM", "sub") : null)
      : cell(el("span", gpu ? "none" : "unknown", "sub")));
    tr.append(n.models
      ? cell(el("span", list(n.models.loaded), "loaded"), el("span", "on disk: " + list(n.models.on_disk), "sub"))
      : cell(el("span", "unknown", "sub")));
    tr.append(n.versions
      ? cell(el("span", "ollama " + (n.versions.ollama || "?")), el("span", "sidecar " + n.versions.sidecar, "sub"))
      : cell());
    tr.append(cell(errorOf(n, now)));
    const changed = Date.parse(n.last_change);
    const when = el("span", Number.isNaN(changed) ? n.last_change : ago(now - changed));
    when.title = n.last_change;
    tr.append(cell(when));
    return tr;
  };

  const render = (nodes) => {
    const now = Date.now();
    rows.replaceChildren(...nodes.map((n) => row(n, now)));
    const counts = STATES.map((s) => [s, nodes.filter((n) => n.state === s).length]).filter(([, c]) => c > 0);
    const inFlight = nodes.reduce((sum, n) => sum + n.in_flight, 0);
    const capacity = nodes.reduce((sum, n) => sum + n.capacity, 0);
    summary.textContent = nodes.length + " instances" +
      (counts.length ? " (" + counts.map(([s, c]) => c + " " + s).join(", ") + ")" : "") +
      " · " + inFlight + " in flight of " + capacity;
  };

  const refresh = async () => {
    try {
      const answer = await fetch("v1/mesh/nodes", { cache: "no-store", headers: { accept: "application/json" } });
      if (!answer.ok) throw new Error("HTTP " + answer.status);
      render(await answer.json());
      body.dataset.refreshes = String(Number(body.dataset.refreshes) + 1);
      status.className = "status";
      status.textContent = "live · updated " + new Date().toLocaleTimeString();
    } catch (error) {
      status.className = "status stale";
      status.textContent = "not updating (" + error.message + "): showing the last answer";
    } finally {
      setTimeout(refresh, REFRESH_MS);
    }
  };

  render(JSON.parse(document.getElementById("initial").textContent));
  setTimeout(refresh, REFRESH_MS);
})();
