// What the views that show one request's answer share: the box that shows it (with a
// background job's progress), and the pieces their answers are drawn with.

import { errorBox } from "./api.js";
import { describe } from "./jobs.js";
import { h, icon, plural } from "./dom.js";
import { state } from "./state.js";
import { toURL } from "./url.js";

// A box showing the answer to one request at a time, named by `key`: show() with the key
// shown already does nothing; a new key aborts the request before it and shows `busy`
// until the answer is drawn, or the error with its hint (asked again, it tries again).
// A box that shows one answer at a time. `request(signal, progress)` fetches it; a
// background job's request calls `progress(job)`, which shows how far the job is, with
// a button that cancels it.
export function answerBox(box, { busy, failed, onBusy = () => {} }) {
  let shown = { key: null, controller: null };
  const setBusy = (on) => {
    box.setAttribute("aria-busy", String(on));
    onBusy(on);
  };
  return {
    async show(key, request, draw) {
      if (shown.key === key) return;
      shown.controller?.abort();
      const mine = { key, controller: new AbortController() };
      shown = mine;
      setBusy(true);
      const status = h("span", { text: busy });
      const bar = h("progress", { class: "job-progress", hidden: true, "aria-label": "Progress" });
      const stop = h("button", { type: "button", class: "button", hidden: true, text: "Cancel", onclick: () => {
        mine.controller.abort();
        mine.key = null;
        setBusy(false);
        box.replaceChildren(h("p", { class: "end-note", role: "status", text: "Cancelled. Change a setting, or reload, to run it again." }));
      } });
      box.replaceChildren(h("div", { class: "loading-more job", role: "status" },
        h("span", { class: "spinner", "aria-hidden": "true" }), status, bar, stop));
      const progress = (job) => {
        if (shown !== mine) return;
        status.textContent = `${busy} ${describe(job)}`;
        const { done, total } = job.progress || {};
        bar.hidden = !total;
        if (total) Object.assign(bar, { max: total, value: done });
        stop.hidden = false;
      };
      try {
        const answer = await request(mine.controller.signal, progress);
        if (shown === mine) box.replaceChildren(...[draw(answer)].flat().filter(Boolean));
      } catch (err) {
        if (shown !== mine || err.name === "AbortError") return;
        mine.key = null;
        box.replaceChildren(errorBox(err, failed));
      } finally {
        if (shown === mine) setBusy(false);
      }
    },
    // Drops what is shown, or asked for: the next show() asks again.
    forget() {
      shown.controller?.abort();
      shown = { key: null, controller: null };
      setBusy(false);
    },
  };
}

// Sections of the matrix and eval views.
export function card(title, ...body) {
  return h("section", { class: "card" }, h("h2", { text: title }), body);
}

export function emptyState(iconName, title, ...text) {
  return h("div", { class: "empty" },
    h("div", { class: "big-icon" }, icon(iconName)),
    h("h2", { text: title }),
    h("p", {}, ...text));
}

// A table of numbers: column heads, then rows whose first cell heads the row.
export function dataTable(caption, heads, rows) {
  return h("table", { class: "data" },
    h("caption", { class: "sr-only", text: caption }),
    h("thead", {}, h("tr", {}, heads.map((head) => h("th", { scope: "col", text: head })))),
    h("tbody", {}, rows.map(([head, ...cells]) => h("tr", {},
      h("th", { scope: "row" }, head), cells.map((cell) => h("td", {}, cell))))));
}

export function unreadableNote(files) {
  return files.length > 0 && h("details", { class: "note" },
    h("summary", { text: `${plural(files.length, "file")} could not be read, and ${files.length === 1 ? "is" : "are"} left out` }),
    h("ul", {}, files.map((f) => h("li", {}, h("code", { text: f.path }), `: ${f.reason}`))));
}

// A link that opens an image's detail view, over whatever view shows it.
export function openLink(id, ...children) {
  return h("a", { href: toURL({ ...state, open: id }), "data-open": id }, ...children);
}