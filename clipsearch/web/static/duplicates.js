// The duplicates view: groups of near-identical images, found by a background job.

import { errorBox } from "./api.js";
import { fmtScore, h, plural } from "./dom.js";
import { runJob } from "./jobs.js";
import { answerBox, emptyState } from "./answer.js";
import { tile } from "./search.js";
import { info, infoLoaded, navigate, state, ui } from "./state.js";

const dupsBox = answerBox(ui.dupsList, { busy: "Looking for near-duplicates.", failed: "Could not look for duplicates" });
export let dupItems = []; // the tiles shown, in order, for the detail view's arrows

export async function showDuplicates() {
  await infoLoaded; // the server says the default threshold
  if (state.view !== "duplicates") return;
  if (info.error) {
    ui.dupsList.replaceChildren(errorBox(info.error, "Cannot open the library"));
    return;
  }
  const threshold = state.threshold || info.duplicate_threshold;
  ui.dupsThreshold.value = threshold;
  ui.dupsValue.textContent = threshold.toFixed(3);
  ui.dupsCrops.checked = state.crops;
  dupsBox.show(`${threshold}:${state.crops}`,
    (signal, onProgress) => runJob("/api/duplicates", { threshold, crops: state.crops }, { signal, onProgress }),
    (groups) => drawDuplicates(groups, threshold));
}

function drawDuplicates(groups, threshold) {
  dupItems = [];
  if (!groups.length) {
    return emptyState("copies", "No near-duplicates",
      `No two images show the same picture among the pairs compared (cosine ≥ ${threshold}, or ${info.crop_candidate} with crops). `
      + "Lower the threshold to compare more pairs.");
  }
  const images = groups.reduce((n, g) => n + g.images.length, 0);
  return [
    h("p", { class: "dup-summary", text: `${plural(groups.length, "group")}, ${plural(images, "image")}; the best matches first.` }),
    ...groups.map((g, i) => h("section", { class: "dup-group", "aria-label": `Group ${i + 1}` },
      h("h2", {}, `Group ${i + 1}`, h("span", { class: "muted", text: `${g.images.length} images · similarity ${fmtScore(g.score)}` })),
      h("ul", { class: "grid" }, g.images.map((hit) => {
        dupItems.push(hit);
        return tile(hit, dupItems.length - 1, { showFolder: true });
      })))),
  ];
}

ui.dupsThreshold.addEventListener("input", () => { ui.dupsValue.textContent = Number(ui.dupsThreshold.value).toFixed(3); });
ui.dupsThreshold.addEventListener("change", () => navigate({ threshold: Number(ui.dupsThreshold.value) }, { push: false }));
ui.dupsCrops.addEventListener("change", () => navigate({ crops: ui.dupsCrops.checked }, { push: false }));
