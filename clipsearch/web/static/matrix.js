// The label matrix view: how alike each of the first results is to each label of a set.

import { postJSON } from "./api.js";
import { h, heat, heatGradient, plural, thumbUrl } from "./dom.js";
import { answerBox, emptyState, openLink, unreadableNote } from "./answer.js";
import { MATRIX_IMAGES } from "./search.js";
import { navigate, state, ui } from "./state.js";
import { toURL } from "./url.js";

const matrixBox = answerBox(ui.matrixResult, { busy: "Comparing the images with the labels…", failed: "Could not draw the matrix" });

export function showMatrix() {
  document.title = "Label matrix · clipsearch";
  if (ui.matrixLabels.value !== state.labels) ui.matrixLabels.value = state.labels;
  ui.matrixBack.href = toURL({ ...state, view: "search", ids: [], open: null });
  if (!state.ids.length || !state.labels) {
    matrixBox.forget();
    ui.matrixResult.replaceChildren(state.ids.length
      ? emptyState("matrix", "Choose a label set",
        `Type the name of the label set to compare the ${plural(state.ids.length, "image")} with, above: `,
        h("code", { text: "photos" }), ", ", h("code", { text: "coco" }), ", ", h("code", { text: "imagenet" }), "…")
      : emptyState("matrix", "No images to compare",
        "Search first, then choose ", h("strong", { text: "Label matrix" }), " above the results: it compares the first ",
        `${MATRIX_IMAGES} with the labels of a label set.`));
    return;
  }
  const body = { images: state.ids, labels: state.labels };
  matrixBox.show(JSON.stringify(body), (signal) => postJSON("/api/matrix", body, { signal }), drawMatrix);
}

// The CLIP tutorial's picture: images across, labels down, each cell shaded by its
// cosine on a scale from the matrix's least to its greatest.
function drawMatrix(m) {
  const values = m.cosine.flat();
  const lo = Math.min(...values);
  const hi = Math.max(...values);
  const scale = (v) => (hi > lo ? (v - lo) / (hi - lo) : 0.5);
  const best = m.cosine.map((row) => row.indexOf(Math.max(...row)));
  const table = h("table", { class: "heat matrix" },
    h("caption", { class: "sr-only", text: `Cosine similarity of ${plural(m.images.length, "image")} (columns) `
      + `to the ${plural(m.labels.length, "label")} of ${state.labels} (rows); each image's best label is marked` }),
    h("thead", {}, h("tr", {}, h("td", { class: "corner" }), m.images.map((img) => h("th", { scope: "col", "data-id": img.id },
      openLink(img.id, h("img", { src: thumbUrl(img.thumbnail, 128), alt: "", width: 64, height: 64 }),
        h("span", { class: "name", text: img.name, title: img.name })))))),
    h("tbody", {}, m.labels.map((label, j) => h("tr", {},
      h("th", { scope: "row", text: label }),
      m.images.map((img, i) => {
        const v = m.cosine[i][j];
        return h("td", {
          style: heat(scale(v)), class: best[i] === j ? "best" : null, "data-value": v,
          title: `${img.name} and “${label}”: ${v.toFixed(4)}${best[i] === j ? ", its best label" : ""}`,
        }, v.toFixed(2));
      })))));
  return [
    h("div", { class: "heat-legend" },
      h("span", { text: "less alike" }), h("span", { class: "ramp", style: `background: ${heatGradient()}`, "aria-hidden": "true" }),
      h("span", { text: "more alike" }), h("span", { class: "muted", text: `cosine ${lo.toFixed(2)} to ${hi.toFixed(2)}` })),
    h("div", { class: "table-scroll" }, table),
    unreadableNote(m.unreadable),
  ];
}

ui.matrixForm.addEventListener("submit", (e) => {
  e.preventDefault();
  navigate({ labels: ui.matrixLabels.value.trim() });
});
