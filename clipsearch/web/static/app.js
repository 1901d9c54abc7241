// clipsearch: the search page. Plain ES modules, no build step; the page talks only to
// /api/. This one renders the page and handles what is common to every view; each view
// has its own module (search.js, tags.js, duplicates.js, matrix.js, eval.js, detail.js),
// and state.js holds what they share.
//
// Everything the page shows follows from `state`, and `state` lives in the URL: every
// change goes through navigate(), which writes the URL (pushState for a step the back
// button should undo, replaceState for typing and paging through the detail view) and
// then render() makes the page match. Reloading, sharing the URL or going back and
// forward (popstate) all just call render() on the state read from the URL.

import { showAlbums } from "./albums.js";
import { renderDetail } from "./detail.js";
import { showDuplicates } from "./duplicates.js";
import { showEval } from "./eval.js";
import { showMatrix } from "./matrix.js";
import {
  renderContext, renderFilters, renderQueryChip, showLanding, showList, toggleFilters,
} from "./search.js";
import { showTagsView } from "./tags.js";
import {
  activeFilters, listKey, loadInfo, loadTags, navigate, reloadState, setRenderer, state, ui,
} from "./state.js";
import { isTyping } from "./dom.js";
import { uploadFile } from "./uploads.js";
import { toURL } from "./url.js";

// -- render: make the page match `state` -----------------------------------------------

function render({ restore = false, scrollTop = true } = {}) {
  const s = state;
  for (const link of document.querySelectorAll(".views a")) {
    const shown = { similar: "search", matrix: "search", album: "albums" }[s.view] || s.view;
    const current = link.dataset.nav === shown;
    if (current) link.setAttribute("aria-current", "page"); else link.removeAttribute("aria-current");
    link.href = toURL({ ...s, view: link.dataset.nav, id: null, open: null });
  }
  if (ui.q.value !== s.q) ui.q.value = s.q;
  ui.q.placeholder = "Describe what you are looking for…";
  renderFilters();
  renderQueryChip();

  const listView = s.view === "search" || s.view === "similar" || s.view === "album";
  ui.searchView.hidden = !listView;
  ui.tagsView.hidden = s.view !== "tags";
  ui.albumsView.hidden = s.view !== "albums";
  ui.dupsView.hidden = s.view !== "duplicates";
  ui.matrixView.hidden = s.view !== "matrix";
  ui.evalView.hidden = s.view !== "eval";
  if (!listView) {
    ui.context.hidden = true;
    ui.message.replaceChildren();
    showList({ ...s, view: "none" });
  }
  if (s.view === "tags") showTagsView();
  if (s.view === "albums") showAlbums();
  if (s.view === "duplicates") {
    document.title = "Duplicates · clipsearch";
    showDuplicates();
  }
  if (s.view === "matrix") showMatrix();
  if (s.view === "eval") showEval();
  if (listView) {
    document.title = s.view === "similar" ? "Similar images · clipsearch"
      : s.view === "album" ? `${s.album} · albums · clipsearch`
      : s.q ? `${s.q} · clipsearch` : "clipsearch";
    if (listKey(s)) {
      showList(s, { restore, scrollTop });
      renderContext();
    } else {
      showList(s);
      showLanding();
    }
  }

  renderDetail();
}

// -- events common to every view -------------------------------------------------------

// Links inside the page (tiles, nav, chips) navigate without a reload; a modified click
// still opens a new tab, where the URL alone restores the same view.
document.addEventListener("click", (e) => {
  const link = e.target.closest("a[href]");
  if (!link || e.defaultPrevented || e.button !== 0 || e.metaKey || e.ctrlKey || e.shiftKey || e.altKey) return;
  if (link.target === "_blank" || link.origin !== location.origin || link.pathname !== location.pathname) return;
  e.preventDefault();
  if (link.classList.contains("tile") || link.dataset.open) {
    navigate({ open: Number(link.dataset.id ?? link.dataset.open) });
  } else if (link.dataset.q) {
    navigate({ view: "search", q: link.dataset.q, open: null, id: null });
  } else {
    const before = listKey(state);
    history.pushState({}, "", link.href);
    reloadState();
    render({ scrollTop: listKey(state) !== before });
  }
});

window.addEventListener("popstate", () => {
  const before = listKey(state);
  reloadState();
  render({ restore: true, scrollTop: listKey(state) !== before });
});

// Keyboard: "/" finds the search box; arrow keys walk the grid (rows by column count).
document.addEventListener("keydown", (e) => {
  if (e.key === "/" && !isTyping(e.target) && !ui.dialog.open && !e.ctrlKey && !e.metaKey && !e.altKey) {
    e.preventDefault();
    ui.q.focus();
    ui.q.select();
    return;
  }
  const current = e.target.closest?.(".tile");
  if (!current || ui.dialog.open || e.altKey || e.ctrlKey || e.metaKey) return;
  const grid = current.closest(".grid");
  const tiles = [...grid.querySelectorAll(".tile")];
  const i = tiles.indexOf(current);
  const columns = getComputedStyle(grid).gridTemplateColumns.split(" ").length || 1;
  const step = { ArrowLeft: -1, ArrowRight: 1, ArrowUp: -columns, ArrowDown: columns }[e.key];
  let target = null;
  if (step !== undefined) target = tiles[i + step];
  else if (e.key === "Home") target = tiles[0];
  else if (e.key === "End") target = tiles[tiles.length - 1];
  else return;
  e.preventDefault();
  if (!target && e.key === "ArrowUp" && grid === ui.grid) { ui.q.focus(); return; }
  if (!target && e.key === "ArrowDown" && grid === ui.grid) target = tiles[tiles.length - 1];
  if (target) {
    target.focus({ preventScroll: true });
    target.scrollIntoView({ block: "nearest" });
  }
});

// -- start -----------------------------------------------------------------------------

history.scrollRestoration = "manual";
if (state.upload) {
  // Keep the token's entry honest if its bytes are gone; the search says so.
  uploadFile(state.upload).catch(() => null);
}
setRenderer(render);
if (activeFilters(state) > 0) toggleFilters(true);
loadInfo();
render();
loadTags().catch(() => {});
