// The detail view: one image, large, with its facts and tags, over whatever view shows
// it; the arrow keys walk the list behind it.

import { errorBox } from "./api.js";
import { breakable, dirname, fmtBytes, fmtDate, fmtScore, h, isTyping, thumbUrl, toast } from "./dom.js";
import { dupItems } from "./duplicates.js";
import { filterByTag, list, loadPage } from "./search.js";
import { commit, events, facts, navigate, setState, state, ui } from "./state.js";

let detail = { id: null, gen: 0 };

const detailItems = () => (state.view === "duplicates" ? dupItems : list.items);

async function showDetail(id) {
  if (!ui.dialog.open) ui.dialog.showModal();
  if (detail.id === id) return;
  detail.id = id;
  const my = ++detail.gen;
  const hit = detailItems().find((x) => x.id === id);
  ui.detailTitle.textContent = hit?.name || "Loading…";
  ui.detailImg.alt = hit?.name || "";
  ui.detailFigure.style.backgroundImage = hit ? `url("${thumbUrl(hit.thumbnail, 256)}")` : "none";
  ui.detailImg.removeAttribute("src");
  ui.detailImg.classList.remove("loaded");
  ui.detailContent.replaceChildren(h("p", { class: "muted", text: "Loading…" }));
  for (const tileLink of document.querySelectorAll(".tile.current")) tileLink.classList.remove("current");
  detailNav();
  if (hit) ui.detailImg.src = thumbUrl(hit.thumbnail, 1024);
  let f;
  try {
    f = await facts(id);
  } catch (err) {
    if (my !== detail.gen) return;
    ui.detailTitle.textContent = `Image ${id}`;
    ui.detailContent.replaceChildren(errorBox(err, "Cannot show this image"));
    ui.detailOriginal.removeAttribute("href");
    return;
  }
  if (my !== detail.gen) return;
  if (!hit) {
    ui.detailImg.src = thumbUrl(f.thumbnail, 1024);
    ui.detailFigure.style.backgroundImage = `url("${thumbUrl(f.thumbnail, 256)}")`;
  }
  ui.detailTitle.textContent = f.name;
  ui.detailImg.alt = f.name;
  ui.detailOriginal.href = f.file;
  const folder = dirname(f.path);
  const copy = h("button", { type: "button", class: "link-button", onclick: async () => {
    try { await navigator.clipboard.writeText(f.path); toast("Path copied."); } catch { toast(f.path); }
  } }, "Copy path");
  const inFolder = h("button", { type: "button", class: "link-button",
    onclick: () => navigate({ view: "search", in: folder, open: null, id: null }) }, "Search in this folder");
  const tags = f.tags.length
    ? h("div", { class: "chips" }, f.tags.map((t) => h("button", {
      type: "button", class: "chip", title: `${t.source}, ${t.label_set}: ${(t.score * 100).toFixed(1)}%`,
      "aria-label": `Filter by tag ${t.label}`, onclick: () => filterByTag(t.label),
    }, t.label, h("span", { class: "n tag-score", text: `${Math.round(t.score * 100)}%` }))))
    : h("span", { class: "muted", text: "none" });
  const rows = [
    ["Path", h("div", {}, h("code", { class: "path" }, breakable(f.path)), h("div", { class: "inline-actions" }, copy, inFolder))],
    ["Taken", fmtDate(f.taken_at)],
    ["Size", [f.width && f.height ? `${f.width} × ${f.height} px` : null, fmtBytes(f.size)].filter(Boolean).join(" · ")],
    hit && typeof hit.score === "number" ? ["Score", fmtScore(hit.score)] : null,
    ["Tags", tags],
  ].filter(Boolean);
  ui.detailContent.replaceChildren(h("dl", { class: "facts" }, rows.map(([k, v]) => [h("dt", { text: k }), h("dd", {}, v)])));
}

function detailIndex() {
  return detailItems().findIndex((x) => x.id === detail.id);
}

function detailNav() {
  if (!ui.dialog.open) return;
  const items = detailItems();
  const i = detailIndex();
  const more = state.view !== "duplicates" && list.hasMore;
  ui.detailPrev.disabled = i <= 0;
  ui.detailNext.disabled = i < 0 || (i >= items.length - 1 && !more);
  ui.detailPosition.textContent = i >= 0 ? `${i + 1} of ${items.length}${more ? "+" : ""} · ← → to move, Esc to close` : "Esc to close";
}

async function stepDetail(delta) {
  const items = detailItems();
  const i = detailIndex();
  if (i < 0) return;
  if (i + delta >= items.length && state.view !== "duplicates" && list.hasMore) {
    await loadPage();
  }
  const next = detailItems()[i + delta];
  if (!next) return;
  setState({ open: next.id });
  commit(false);
  showDetail(next.id);
}

function closeDetail() {
  if (ui.dialog.open) ui.dialog.close();
  const id = detail.id;
  detail = { id: null, gen: detail.gen + 1 };
  const current = id != null && document.querySelector(`.tile[data-id="${id}"], a[data-open="${id}"]`);
  if (current) {
    current.focus({ preventScroll: true });
    current.scrollIntoView({ block: "nearest" });
  }
}

// The user closed the dialog: undo the step that opened it. This runs at once (from the
// button, or from Escape's "cancel" event), not from the "close" event, which comes a
// task later: a navigation in between would still carry `open`.
function dismissDetail() {
  if (state.open != null) {
    const opened = history.state?.opened;
    setState({ open: null });
    if (opened) history.back(); // its popstate renders the same state, read from the URL
    else commit(false);
  }
  closeDetail();
}

ui.dialog.addEventListener("cancel", () => dismissDetail());
ui.dialog.addEventListener("close", () => {
  if (!ui.dialog.open && state.open != null) dismissDetail(); // closed some other way
});

ui.detailClose.addEventListener("click", () => dismissDetail());
// The small thumbnail stands in while the large one loads; a small image is enlarged at
// most 3x, since more only shows blur.
ui.detailImg.addEventListener("load", () => {
  const img = ui.detailImg;
  img.style.maxWidth = `${img.naturalWidth * 3}px`;
  img.style.maxHeight = `${img.naturalHeight * 3}px`;
  img.classList.add("loaded");
  ui.detailFigure.style.backgroundImage = "none";
});
ui.detailPrev.addEventListener("click", () => stepDetail(-1));
ui.detailNext.addEventListener("click", () => stepDetail(1));
ui.detailSimilar.addEventListener("click", () => {
  if (detail.id != null) navigate({ view: "similar", id: detail.id, open: null });
});
ui.detailSearch.addEventListener("click", () => {
  if (detail.id != null) navigate({ view: "search", image: detail.id, upload: null, q: "", open: null, id: null });
});
document.addEventListener("keydown", (e) => {
  if (!ui.dialog.open || isTyping(e.target) || e.altKey || e.ctrlKey || e.metaKey) return;
  if (e.key === "ArrowLeft") { e.preventDefault(); stepDetail(-1); }
  if (e.key === "ArrowRight") { e.preventDefault(); stepDetail(1); }
});
// A click on the backdrop (outside the dialog's box) closes it.
ui.dialog.addEventListener("click", (e) => {
  if (e.target !== ui.dialog) return;
  const r = ui.dialog.getBoundingClientRect();
  if (e.clientX < r.left || e.clientX > r.right || e.clientY < r.top || e.clientY > r.bottom) dismissDetail();
});

events.addEventListener("page", () => detailNav());

// The detail view as `state.open` says: shown, or closed.
export function renderDetail() {
  if (state.open != null) showDetail(state.open);
  else if (ui.dialog.open || detail.id != null) closeDetail();
}
