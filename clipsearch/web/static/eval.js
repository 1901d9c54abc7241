// The eval view: how well a label set or a trained classifier names a labelled folder.

import { basename, fmtPercent, h, heat, icon, plural, thumbUrl } from "./dom.js";
import { runJob } from "./jobs.js";
import { answerBox, card, dataTable, openLink, unreadableNote } from "./answer.js";
import { events, info, navigate, state, ui } from "./state.js";

const evalBox = answerBox(ui.evalResult, {
  busy: "Evaluating: a big folder, or few-shot probes, can take tens of seconds.",
  failed: "The evaluation failed",
  onBusy: (on) => {
    ui.evalRun.disabled = on;
    ui.evalRun.textContent = on ? "Running…" : "Run";
  },
});

export function showEval() {
  document.title = "Evaluate · clipsearch";
  if (ui.evalFolder.value !== state.folder) ui.evalFolder.value = state.folder;
  if (ui.evalLabels.value !== state.labels) ui.evalLabels.value = state.labels;
  ui.evalShots.value = state.shots ?? "";
  ui.evalCompare.checked = state.compare;
  if (!state.folder) {
    evalBox.forget();
    ui.evalResult.replaceChildren();
    return;
  }
  const body = { folder: state.folder, compare_templates: state.compare };
  if (state.labels) body.labels = state.labels;
  if (state.shots) body.few_shot = state.shots;
  evalBox.show(JSON.stringify(body), (signal, onProgress) => runJob("/api/eval", body, { signal, onProgress }),
    drawEvaluation);
}

function drawEvaluation(r) {
  ui.live.textContent = `Evaluated: top-1 ${fmtPercent(r.top1)} on ${plural(r.images, "image")}.`;
  const stat = (label, value, extra = {}) => h("div", { class: "stat" }, h("dt", { text: label }), h("dd", extra, value));
  const beat = r.shots_to_beat_zero_shot;
  return [
    h("dl", { class: "stats" },
      stat("Top-1", fmtPercent(r.top1), { id: "eval-top1", "data-value": r.top1 }),
      stat("Top-5", fmtPercent(r.top5), { id: "eval-top5", "data-value": r.top5 }),
      stat("Images", r.images.toLocaleString()),
      stat("Labels", r.labels.length.toLocaleString()),
      stat("Classifier", [r.classifier, h("span", { class: "source", text: r.source })])),
    unreadableNote(r.unreadable),
    h("div", { class: "cards" },
      card("Confusion matrix",
        h("p", { class: "note muted", text: "Rows are the true labels, columns the predicted ones; a cell's shade is its share of the row." }),
        h("div", { class: "table-scroll" }, confusionTable(r))),
      card("Per label", dataTable("Precision, recall and support per label", ["Label", "Precision", "Recall", "Images"],
        r.classes.map((c) => [c.label, fmtPercent(c.precision), fmtPercent(c.recall), c.support.toLocaleString()]))),
      card("Most confused", r.most_confused.length
        ? h("ol", { class: "pairs" }, r.most_confused.map((c) => h("li", {},
          h("strong", { text: c.true }), " taken for ", h("strong", { text: c.predicted }),
          h("span", { class: "muted", text: plural(c.count, "image") }))))
        : h("p", { class: "muted", text: "No label was taken for another." })),
      card(`Misses (${r.misses.length.toLocaleString()})`, r.misses.length
        ? h("ul", { class: "misses" }, r.misses.map(missItem))
        : h("p", { class: "muted", text: "Every image was named right." })),
      r.templates.length > 0 && card("Templates",
        h("p", { class: "note muted", text: "Zero-shot with each template alone, and all of them together." }),
        dataTable("Accuracy per template", ["Template", "Top-1", "Top-5"],
          r.templates.map((t) => [h("code", { text: t.template }), fmtPercent(t.top1), fmtPercent(t.top5)]))),
      r.few_shot.length > 0 && card("Few-shot probes",
        h("p", { class: "note muted", text: "Probes trained on K images per label, against zero-shot on the same held-out images (mean of the draws)." }),
        dataTable("Few-shot probes against zero-shot", ["Shots per label", "Zero-shot", "Few-shot", "Draws", "Held-out images"],
          r.few_shot.map((f) => [String(f.shots), fmtPercent(f.zero_shot), fmtPercent(f.few_shot), f.draws, f.tested])),
        h("p", { class: "verdict", id: "eval-verdict", text: beat
          ? `The probe beats zero-shot from ${plural(beat, "shot")} per label.`
          : "No probe beat zero-shot: the labels' words already carry what the examples teach." }))),
  ];
}

// Rows are true labels, columns predicted ones; each cell is shaded by its share of its row.
function confusionTable(r) {
  return h("table", { class: `heat confusion${r.labels.length > 8 ? " many" : ""}` },
    h("caption", { class: "sr-only", text: "Confusion matrix: true labels down, predicted labels across, image counts in the cells" }),
    h("thead", {}, h("tr", {},
      h("td", { class: "corner" }, h("span", { text: "true ↓ predicted →" })),
      r.labels.map((label) => h("th", { scope: "col" }, h("span", { text: label }))))),
    h("tbody", {}, r.confusion.map((row, i) => {
      const total = row.reduce((a, b) => a + b, 0);
      return h("tr", {}, h("th", { scope: "row", text: r.labels[i] }), row.map((n, j) => h("td", {
        style: heat(total ? n / total : 0), class: [i === j && "diagonal", n === 0 && "zero"].filter(Boolean).join(" ") || null,
        title: `${r.labels[i]} predicted as ${r.labels[j]}: ${n} of ${total}`,
      }, n)));
    })));
}

function missItem(m) {
  const name = basename(m.path);
  const picture = m.thumbnail
    ? openLink(m.id, h("img", { src: thumbUrl(m.thumbnail, 128), alt: name, loading: "lazy" }))
    : h("span", { class: "no-thumb", "aria-hidden": "true" }, icon("image"));
  return h("li", { title: m.path }, picture,
    h("span", { class: "miss-text" },
      h("span", { class: "name", text: name }),
      h("span", {}, h("strong", { text: m.true }), " → ", h("strong", { text: m.predicted })),
      h("span", { class: "muted", text: `${fmtPercent(m.probability)} sure` })));
}

// Run always runs, even with the fields as they were: the folder may have changed since.
ui.evalForm.addEventListener("submit", (e) => {
  e.preventDefault();
  const changes = {
    view: "eval", folder: ui.evalFolder.value.trim(), labels: ui.evalLabels.value.trim(),
    compare: ui.evalCompare.checked, shots: Number.parseInt(ui.evalShots.value, 10) || null,
  };
  evalBox.forget();
  navigate(changes, { push: Object.entries(changes).some(([key, value]) => state[key] !== value) });
});

// The indexed folders, offered as the folders to evaluate.
events.addEventListener("info", () => {
  const roots = info.roots || [];
  ui.evalFolders.replaceChildren(...roots.map((root) => h("option", { value: root })));
  if (roots.length) ui.evalFolder.placeholder = roots[0];
});
