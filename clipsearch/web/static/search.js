// The search view: result lists (a search, or the images similar to one), what it says
// around its grid, the search bar's image chip, the filters, and searching by a dropped,
// pasted or chosen image file.

import { albumContext, albumFetcher, memberActions, saveButton } from "./albums.js";
import { ApiError, api, errorBox } from "./api.js";
import { dirname, fmtScore, h, icon, plural, thumbUrl, toast } from "./dom.js";
import {
  activeFilters, allTags, events, facts, info, listKey, loadTags, navigate, state, ui,
} from "./state.js";
import { rememberUpload, uploadFile, uploadPreview } from "./uploads.js";
import { blankState, toURL } from "./url.js";

const PAGE = 30; // results per request
const DEBOUNCE_MS = 250; // typing pause before a search
export const MATRIX_IMAGES = 12; // the first results a label matrix compares

export function searchWithFile(file) {
  if (!file) return;
  const token = Date.now().toString(36) + Math.random().toString(36).slice(2, 6);
  rememberUpload(token, file);
  navigate({ view: "search", upload: token, image: null, q: "", open: null });
}

// -- result lists: search, similar -----------------------------------------------------


function fetcherFor(s) {
  if (s.view === "similar") {
    return (offset, n, signal) => api(`/api/similar/${s.id}?n=${n}&offset=${offset}`, { signal });
  }
  if (s.view === "album") return albumFetcher(s.album);
  if (s.upload) {
    return async (offset, n, signal) => {
      const file = await uploadFile(s.upload);
      if (!file) {
        throw new ApiError(0, "The image you searched with is no longer here",
          "Uploaded images are kept only in the browser tab they were dropped in: drop or paste it again.");
      }
      const form = new FormData();
      form.append("image", file, file.name || "image");
      if (s.q.trim()) form.append("q", s.q.trim());
      for (const tag of s.tags) form.append("tag", tag);
      form.append("n", n);
      form.append("offset", offset);
      return api("/api/search", { method: "POST", body: form, signal });
    };
  }
  const p = new URLSearchParams();
  if (s.q.trim()) p.set("q", s.q.trim());
  if (s.image != null) p.set("image", s.image);
  if (s.in) p.set("in", s.in);
  if (s.after) p.set("after", s.after);
  if (s.before) p.set("before", s.before);
  for (const tag of s.tags) p.append("tag", tag);
  if (s.sort !== "score") p.set("sort", s.sort);
  return (offset, n, signal) => api(`/api/search?${p}&n=${n}&offset=${offset}`, { signal });
}

// `gen` numbers the list being shown: a response for an older one is dropped even if it
// arrives after the newer one's (abort() covers most of these; this covers the rest).
let gen = 0;
// `about` is what the last page said besides its results (an album's name and search).
export let list = { key: null, items: [], offset: 0, hasMore: false, loading: false, controller: null, fetcher: null, about: null };
const listCache = new Map(); // key -> snapshot, for back and forward
const seenFolders = new Set();

export function showList(s, { restore = false, scrollTop = true } = {}) {
  const key = listKey(s);
  if (key === list.key) return;
  if (list.key && list.items.length) {
    listCache.delete(list.key);
    listCache.set(list.key, { items: list.items, offset: list.offset, hasMore: list.hasMore, scrollY });
    while (listCache.size > 8) listCache.delete(listCache.keys().next().value);
  }
  list.controller?.abort();
  gen++;
  list = { key, items: [], offset: 0, hasMore: false, loading: false, controller: null, fetcher: key && fetcherFor(s) };
  ui.loadingMore.hidden = true;
  ui.endNote.hidden = true;
  if (!key) {
    ui.grid.replaceChildren();
    ui.main.classList.remove("busy");
    ui.grid.setAttribute("aria-busy", "false");
    return;
  }
  const cached = restore && listCache.get(key);
  if (cached) {
    Object.assign(list, { items: cached.items, offset: cached.offset, hasMore: cached.hasMore });
    ui.message.replaceChildren();
    ui.grid.replaceChildren(...list.items.map((hit, i) => tile(hit, i)));
    finishPage();
    requestAnimationFrame(() => scrollTo(0, cached.scrollY));
    return;
  }
  if (scrollTop) scrollTo(0, 0);
  loadPage(true);
}

export async function loadPage(first = false) {
  if (!list.key || (!first && (list.loading || !list.hasMore))) return;
  const my = gen;
  const controller = new AbortController();
  list.controller = controller;
  list.loading = true;
  if (first) {
    ui.main.classList.add("busy");
    ui.grid.setAttribute("aria-busy", "true");
    if (!ui.grid.children.length) {
      ui.message.replaceChildren();
      ui.grid.replaceChildren(...Array.from({ length: 12 }, () => h("li", { "aria-hidden": "true" }, h("div", { class: "skeleton" }))));
    }
  } else {
    ui.loadingMore.hidden = false;
  }
  try {
    const page = await list.fetcher(list.offset, PAGE, controller.signal);
    if (my !== gen) return;
    const start = list.items.length;
    list.items = list.items.concat(page.results);
    list.offset += page.results.length;
    list.hasMore = page.has_more && page.results.length > 0;
    list.about = { ...page, results: undefined };
    for (const hit of page.results) seenFolders.add(dirname(hit.path));
    const tiles = page.results.map((hit, i) => tile(hit, start + i));
    if (first) {
      ui.message.replaceChildren();
      ui.grid.replaceChildren(...tiles);
      if (!tiles.length) showNoResults();
    } else {
      ui.grid.append(...tiles);
    }
    ui.live.textContent = first ? `${plural(list.items.length, "result")}${list.hasMore ? " or more" : ""}` : "";
    updateFolderList();
    finishPage();
    events.dispatchEvent(new Event("page"));
  } catch (err) {
    if (my !== gen || err.name === "AbortError") return;
    if (first) {
      ui.grid.replaceChildren();
      ui.message.replaceChildren(errorBox(err, state.upload ? "Could not search with that image" : "The search failed"));
    } else {
      list.hasMore = false;
      toast(`Could not load more: ${err.message}`);
    }
  } finally {
    if (my === gen) {
      list.loading = false;
      ui.loadingMore.hidden = true;
      ui.main.classList.remove("busy");
      ui.grid.setAttribute("aria-busy", "false");
    }
  }
  if (my === gen) {
    renderContext();
    // A tall window may show the sentinel still: the observer will not fire again for it.
    requestAnimationFrame(() => {
      if (my === gen && list.hasMore && ui.sentinel.getBoundingClientRect().top < innerHeight + 800) loadPage();
    });
  }
}

function finishPage() {
  const done = !list.hasMore && list.items.length > 0;
  ui.endNote.hidden = !done || list.items.length < 12;
  ui.endNote.textContent = done ? `That's all: ${plural(list.items.length, "image")}.` : "";
}

const observer = new IntersectionObserver((entries) => {
  if (entries.some((e) => e.isIntersecting)) loadPage();
}, { rootMargin: "800px 0px" });
observer.observe(ui.sentinel);

function updateFolderList() {
  const folders = [...seenFolders].sort().slice(0, 200);
  if (ui.folderList.children.length === folders.length) return;
  ui.folderList.replaceChildren(...folders.map((f) => h("option", { value: f })));
}

export function tile(hit, index, { showFolder = false } = {}) {
  const img = h("img", { alt: hit.name, loading: "lazy", decoding: "async", draggable: "true" });
  img.addEventListener("load", () => img.classList.add("loaded"), { once: true });
  img.addEventListener("error", () => img.classList.add("loaded", "broken"), { once: true });
  img.srcset = `${thumbUrl(hit.thumbnail, 256)} 1x, ${thumbUrl(hit.thumbnail, 512)} 2x`;
  img.src = thumbUrl(hit.thumbnail, 256);
  const dims = hit.width && hit.height ? `${hit.width}×${hit.height}` : "";
  const link = h("a", {
    class: "tile", href: toURL({ ...state, open: hit.id }), "data-id": hit.id, "data-index": index,
    "data-score": hit.score, "aria-label": `${hit.name}, score ${fmtScore(hit.score)}`,
    title: [hit.path, dims].filter(Boolean).join("\n"),
  },
  h("span", { class: "frame" }, img),
  h("span", { class: "score", "aria-hidden": "true", text: fmtScore(hit.score) }),
  h("span", { class: "caption", "aria-hidden": "true" },
    h("span", { class: "name", text: hit.name }),
    showFolder && dims && h("span", { class: "dims", text: dims })),
  // For telling copies apart. A folder's end matters most, so it is cut on the left (rtl),
  // kept in order by the marks.
  showFolder && h("span", { class: "folder", "aria-hidden": "true", text: `\u200e${dirname(hit.path)}\u200e` }));
  return h("li", { class: hit.pinned ? "pinned" : null }, link, state.view === "album" && memberActions(hit));
}

// -- what the search view says around its grid -----------------------------------------

export function showLanding() {
  ui.grid.replaceChildren();
  ui.context.hidden = true;
  ui.live.textContent = "";
  if (info?.error) {
    ui.message.replaceChildren(errorBox(info.error, "Cannot open the library"));
    return;
  }
  if (info && info.images === 0) {
    ui.message.replaceChildren(h("div", { class: "empty" },
      h("div", { class: "big-icon" }, icon("image")),
      h("h1", { text: "This library is empty" }),
      h("p", {}, "Index a folder first: ", h("code", { text: "clipsearch index ~/Pictures" }), ", then reload.")));
    return;
  }
  const count = info ? plural(info.images, "image") : "your images";
  const suggestions = (allTags || []).slice(0, 8).map((t) =>
    h("a", { class: "chip", href: toURL({ ...blankState(), q: t.label }), "data-q": t.label }, t.label));
  ui.message.replaceChildren(h("div", { class: "empty" },
    h("div", { class: "big-icon" }, icon("search")),
    h("h1", { text: `Search ${count} by meaning` }),
    state.tags.length || state.in || state.after || state.before
      ? h("p", { text: "Type what you are looking for; the filters you chose apply to it." })
      : h("p", { text: "Type what you are looking for, in your own words." }),
    h("p", {}, "Or drop an image anywhere on the page, or paste one, to find pictures like it. Press ",
      h("kbd", { text: "/" }), " to jump to the search box."),
    suggestions.length ? h("div", { class: "chips", "aria-label": "Try" }, suggestions) : null));
}

function showNoResults() {
  const filtered = activeFilters(state) > 0;
  ui.message.replaceChildren(h("div", { class: "empty" },
    h("div", { class: "big-icon" }, icon("image")),
    h("h2", { text: "No images match" }),
    h("p", { text: filtered ? "Nothing passes the filters. Loosen them, or clear them all." : "Try other words." }),
    filtered && h("p", {}, h("button", {
      type: "button", class: "button", onclick: () => navigate({ in: "", after: "", before: "", tags: [], sort: "score" }),
    }, "Clear filters"))));
}

export function renderContext() {
  const s = state;
  const parts = [];
  const count = list.items.length;
  const found = list.key && !list.loading && count
    ? h("span", {}, h("strong", { text: `${count.toLocaleString()}${list.hasMore ? "+" : ""}` }), " ", count === 1 ? "image" : "images")
    : null;
  if (s.view === "similar") {
    const source = h("span", { class: "source" });
    parts.push(h("span", {}, "Images similar to "), source, found && h("span", { text: "·" }), found,
      h("a", { class: "chip", href: toURL({ ...s, view: "search", id: null }), "data-nav": "search" }, "Back to search"));
    facts(s.id).then((f) => {
      source.replaceChildren(h("img", { src: thumbUrl(f.thumbnail, 128), alt: "" }), " ", h("strong", { text: f.name }));
    }, () => { source.textContent = `image ${s.id}`; });
  } else if (s.view === "album") {
    parts.push(...albumContext(s, found, list.about));
  } else if (s.view === "search" && list.key) {
    if (found) parts.push(found);
    const filters = [];
    const drop = (label, changes) => filters.push(h("button", {
      type: "button", class: "chip", "aria-label": `Remove filter ${label}`, onclick: () => navigate(changes),
    }, label, icon("x")));
    if (s.in && !s.upload) drop(`in ${s.in}`, { in: "" });
    if (s.after && !s.upload) drop(`from ${s.after}`, { after: "" });
    if (s.before && !s.upload) drop(`before ${s.before}`, { before: "" });
    for (const tag of s.tags) drop(`tag: ${tag}`, { tags: s.tags.filter((t) => t !== tag) });
    if (s.sort !== "score" && !s.upload) drop(s.sort === "date" ? "newest first" : "by path", { sort: "score" });
    if (filters.length) parts.push(h("span", { text: "filtered by" }), ...filters);
    if (s.upload && (s.in || s.after || s.before || s.sort !== "score")) {
      parts.push(h("span", { text: "(folder, date and order filters do not apply to an uploaded image)" }));
    }
  }
  if (s.view === "search" && found && !s.upload) parts.push(saveButton(s));
  if (found && list.key) {
    const ids = list.items.slice(0, MATRIX_IMAGES).map((x) => x.id);
    parts.push(h("a", {
      class: "chip push", href: toURL({ ...s, view: "matrix", ids, id: null, open: null }),
      title: `How alike the first ${plural(ids.length, "image")} are to each label of a label set`,
    }, icon("matrix"), "Label matrix"));
  }
  ui.context.replaceChildren(...parts);
  ui.context.hidden = parts.length === 0;
}

// -- the search bar's image chip -------------------------------------------------------

export async function renderQueryChip() {
  const s = state;
  if (s.view !== "search" || (s.image == null && !s.upload)) {
    ui.chip.hidden = true;
    return;
  }
  ui.chip.hidden = false;
  if (s.upload) {
    const file = await uploadFile(s.upload);
    if (state.upload !== s.upload) return;
    ui.chipImg.src = file ? uploadPreview(file) : "";
    ui.chipLabel.textContent = file ? file.name || "pasted image" : "uploaded image";
  } else {
    ui.chipLabel.textContent = `image ${s.image}`;
    ui.chipImg.removeAttribute("src");
    try {
      const f = await facts(s.image);
      if (state.image !== s.image) return;
      ui.chipImg.src = thumbUrl(f.thumbnail, 128);
      ui.chipLabel.textContent = f.name;
    } catch { /* the search itself reports a bad id */ }
  }
  ui.q.placeholder = "Add words to the image…";
}

// -- filters ---------------------------------------------------------------------------

export function renderFilters() {
  if (ui.fIn.value !== state.in) ui.fIn.value = state.in;
  ui.fAfter.value = state.after;
  ui.fBefore.value = state.before;
  ui.fSort.value = state.sort;
  const n = activeFilters(state);
  ui.filterCount.hidden = n === 0;
  ui.filterCount.textContent = String(n);
  ui.filterToggle.setAttribute("aria-label", n ? `Filters, ${n} active` : "Filters");
  renderTagPicker();
}

function renderTagPicker() {
  const needle = ui.tagFilter.value.trim().toLowerCase();
  if (!allTags) {
    ui.tagChips.replaceChildren(h("span", { class: "muted", text: "Loading tags…" }));
    return;
  }
  if (!allTags.length) {
    ui.tagChips.replaceChildren(h("span", { class: "muted" }, "No tags yet: ",
      h("code", { text: "clipsearch tag --labels photos" }), " adds some."));
    ui.tagFilter.hidden = true;
    return;
  }
  ui.tagFilter.hidden = false;
  const chosen = new Set(state.tags);
  const shown = allTags.filter((t) => chosen.has(t.label) || !needle || t.label.toLowerCase().includes(needle));
  shown.sort((a, b) => (chosen.has(b.label) - chosen.has(a.label)) || b.images - a.images);
  const limit = needle ? 60 : 24;
  const chips = shown.slice(0, Math.max(limit, chosen.size)).map((t) => h("button", {
    type: "button", class: "chip", "aria-pressed": String(chosen.has(t.label)), "data-tag": t.label,
    onclick: () => {
      const tags = chosen.has(t.label) ? state.tags.filter((x) => x !== t.label) : [...state.tags, t.label];
      navigate({ tags });
    },
  }, t.label, h("span", { class: "n", text: t.images })));
  if (shown.length > chips.length) chips.push(h("span", { class: "muted", text: `+${shown.length - chips.length} more: type to find them` }));
  if (!chips.length) chips.push(h("span", { class: "muted", text: "No tag matches." }));
  ui.tagChips.replaceChildren(...chips);
}

export function toggleFilters(open = ui.filters.hidden) {
  ui.filters.hidden = !open;
  ui.filterToggle.setAttribute("aria-expanded", String(open));
  if (open) loadTags().catch((err) => ui.tagChips.replaceChildren(h("span", { class: "muted", text: err.message })));
}

// Filter by a tag: the search keeps its words, or takes the tag's when it has none (the
// API ranks by a query; it has no "list every image with this tag").
export function filterByTag(label, { only = false } = {}) {
  const tags = only ? [label] : [...new Set([...state.tags, label])];
  const hasQuery = state.q.trim() || state.image != null || state.upload;
  navigate({ view: "search", tags, q: hasQuery ? state.q : label, open: null, id: null });
}

// -- events ----------------------------------------------------------------------------

let typingTimer = 0;
ui.q.addEventListener("input", () => {
  clearTimeout(typingTimer);
  typingTimer = setTimeout(() => {
    const q = ui.q.value;
    if (q === state.q && state.view === "search") return;
    // The first words of a search make a history entry; the rest of the typing does not.
    const push = !state.q.trim() || state.view !== "search";
    navigate({ view: "search", q, open: null, id: null }, { push });
  }, DEBOUNCE_MS);
});

ui.form.addEventListener("submit", (e) => {
  e.preventDefault();
  clearTimeout(typingTimer);
  if (ui.q.value === state.q && state.view === "search") return;
  navigate({ view: "search", q: ui.q.value, open: null, id: null });
});

ui.q.addEventListener("keydown", (e) => {
  if (e.key === "ArrowDown" && ui.grid.querySelector(".tile")) {
    e.preventDefault();
    ui.grid.querySelector(".tile").focus();
  }
});

ui.chipClear.addEventListener("click", () => {
  navigate({ image: null, upload: null });
  ui.q.focus();
});

ui.uploadButton.addEventListener("click", () => ui.fileInput.click());
ui.fileInput.addEventListener("change", () => {
  searchWithFile(ui.fileInput.files[0]);
  ui.fileInput.value = "";
});

ui.filterToggle.addEventListener("click", () => toggleFilters());
ui.fIn.addEventListener("change", () => navigate({ in: ui.fIn.value.trim() }));
ui.fAfter.addEventListener("change", () => navigate({ after: ui.fAfter.value }));
ui.fBefore.addEventListener("change", () => navigate({ before: ui.fBefore.value }));
ui.fSort.addEventListener("change", () => navigate({ sort: ui.fSort.value }));
ui.tagFilter.addEventListener("input", renderTagPicker);
ui.clearFilters.addEventListener("click", () => navigate({ in: "", after: "", before: "", tags: [], sort: "score" }));

// Dropping or pasting an image searches by it; so does dropping one of the page's own
// thumbnails (as an indexed image, by id).
let dragDepth = 0;
const dragsFiles = (e) => [...(e.dataTransfer?.types || [])].includes("Files");
window.addEventListener("dragenter", (e) => {
  if (!dragsFiles(e)) return;
  e.preventDefault();
  dragDepth++;
  ui.dropOverlay.hidden = false;
});
window.addEventListener("dragover", (e) => {
  const types = [...(e.dataTransfer?.types || [])];
  if (!types.includes("Files") && !types.includes("text/uri-list")) return;
  e.preventDefault();
  e.dataTransfer.dropEffect = "copy";
});
window.addEventListener("dragleave", (e) => {
  if (!dragsFiles(e)) return;
  dragDepth = Math.max(0, dragDepth - 1);
  if (!dragDepth) ui.dropOverlay.hidden = true;
});
window.addEventListener("drop", (e) => {
  e.preventDefault();
  dragDepth = 0;
  ui.dropOverlay.hidden = true;
  const file = e.dataTransfer?.files?.[0];
  if (file) { searchWithFile(file); return; }
  const uri = e.dataTransfer?.getData("text/uri-list") || "";
  const m = uri.match(/\/api\/images\/(\d+)\//);
  if (m && new URL(uri, location.href).origin === location.origin) {
    navigate({ view: "search", image: Number(m[1]), upload: null, q: "", open: null, id: null });
  } else {
    toast("Drop an image file to search with it.");
  }
});

document.addEventListener("paste", (e) => {
  const file = e.clipboardData?.files?.[0];
  if (!file) return; // text goes where text goes
  e.preventDefault();
  searchWithFile(file);
});

// A pin or removal changes the album's list: fetch it again, where it was scrolled to.
events.addEventListener("album-changed", () => {
  const y = scrollY;
  list.key = null;
  showList(state, { scrollTop: false });
  requestAnimationFrame(() => scrollTo(0, y));
});

events.addEventListener("info", () => {
  if (!listKey(state) && state.view === "search") showLanding();
});
events.addEventListener("tags", () => {
  renderTagPicker();
  if (!listKey(state) && state.view === "search") showLanding();
});
