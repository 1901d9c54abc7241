// clipsearch: the search page. Plain ES modules (this one, url.js, api.js, dom.js,
// uploads.js), no build step; the page talks only to /api/.
//
// Everything the page shows follows from `state`, and `state` lives in the URL: every
// change goes through navigate(), which writes the URL (pushState for a step the back
// button should undo, replaceState for typing and paging through the detail view) and
// then render() makes the page match. Reloading, sharing the URL or going back and
// forward (popstate) all just call render() on the state read from the URL.

import { ApiError, api, errorBox, postJSON } from "./api.js";
import { describe, runJob } from "./jobs.js";
import {
  basename, breakable, dirname, fmtBytes, fmtDate, fmtPercent, fmtScore, h, heat, heatGradient, icon, isTyping,
  plural, thumbUrl, toast,
} from "./dom.js";
import { rememberUpload, uploadFile, uploadPreview } from "./uploads.js";
import { blankState, readURL, toURL } from "./url.js";

const PAGE = 30; // results per request
const DEBOUNCE_MS = 250; // typing pause before a search
const MATRIX_IMAGES = 12; // the first results a label matrix compares

const $ = (id) => document.getElementById(id);
const ui = {
  form: $("search-form"), q: $("q"), chip: $("query-chip"), chipImg: $("query-chip-img"),
  chipLabel: $("query-chip-label"), chipClear: $("query-chip-clear"),
  uploadButton: $("upload-button"), fileInput: $("file-input"),
  filterToggle: $("filter-toggle"), filterCount: $("filter-count"), filters: $("filters"),
  fIn: $("f-in"), fAfter: $("f-after"), fBefore: $("f-before"), fSort: $("f-sort"),
  folderList: $("folder-list"), tagFilter: $("f-tag-filter"), tagChips: $("tag-chips"),
  clearFilters: $("clear-filters"),
  main: $("main"), context: $("context"), live: $("live"), message: $("message"),
  searchView: $("search-view"), grid: $("grid"), sentinel: $("sentinel"),
  loadingMore: $("loading-more"), endNote: $("end-note"),
  tagsView: $("tags-view"), tagsFilter: $("tags-filter"), tagList: $("tag-list"),
  dupsView: $("dups-view"), dupsThreshold: $("dups-threshold"), dupsCrops: $("dups-crops"), dupsValue: $("dups-threshold-value"),
  dupsList: $("dups-list"),
  matrixView: $("matrix-view"), matrixForm: $("matrix-form"), matrixLabels: $("matrix-labels"),
  matrixBack: $("matrix-back"), matrixResult: $("matrix-result"),
  evalView: $("eval-view"), evalForm: $("eval-form"), evalFolder: $("eval-folder"), evalFolders: $("eval-folders"),
  evalLabels: $("eval-labels"), evalShots: $("eval-shots"), evalCompare: $("eval-compare"), evalRun: $("eval-run"),
  evalResult: $("eval-result"),
  dialog: $("detail"), detailFigure: $("detail-figure"), detailImg: $("detail-img"),
  detailTitle: $("detail-title"), detailContent: $("detail-content"), detailClose: $("detail-close"),
  detailPrev: $("detail-prev"), detailNext: $("detail-next"), detailSimilar: $("detail-similar"),
  detailSearch: $("detail-search"), detailOriginal: $("detail-original"), detailPosition: $("detail-position"),
  dropOverlay: $("drop-overlay"),
};

// -- state and the URL -----------------------------------------------------------------

let state = readURL();

// `opened` marks a history entry pushed by opening the detail view: closing it then goes
// back, so that the back button does not reopen what was just closed.
function commit(push) {
  const url = toURL(state);
  if (push) history.pushState({ opened: state.open != null }, "", url);
  else history.replaceState(history.state, "", url);
}

function navigate(changes, { push = true } = {}) {
  const before = listKey(state);
  state = { ...state, ...changes };
  commit(push);
  render({ scrollTop: listKey(state) !== before });
}

const activeFilters = (s) =>
  (s.in ? 1 : 0) + (s.after ? 1 : 0) + (s.before ? 1 : 0) + s.tags.length + (s.sort !== "score" ? 1 : 0);

// -- library facts, tags, image facts (cached) -----------------------------------------

let info = null;
let infoLoaded = null; // loadInfo's promise
let allTags = null;
const imageFacts = new Map();

async function loadInfo() {
  try {
    info = await api("/api/info");
  } catch (err) {
    info = { error: err };
  }
  const roots = info.roots || [];
  ui.evalFolders.replaceChildren(...roots.map((root) => h("option", { value: root })));
  if (roots.length) ui.evalFolder.placeholder = roots[0];
  if (!listKey(state) && (state.view === "search")) showLanding();
}

let tagsRequest = null;
function loadTags(force = false) {
  if (!tagsRequest || force) {
    tagsRequest = api("/api/tags").then((tags) => {
      allTags = tags;
      renderTagPicker();
      return tags;
    }, (err) => {
      tagsRequest = null;
      throw err;
    });
  }
  return tagsRequest;
}

async function facts(id) {
  if (!imageFacts.has(id)) {
    const pending = api(`/api/images/${id}`);
    imageFacts.set(id, pending);
    pending.catch(() => imageFacts.delete(id));
  }
  return imageFacts.get(id);
}

function searchWithFile(file) {
  if (!file) return;
  const token = Date.now().toString(36) + Math.random().toString(36).slice(2, 6);
  rememberUpload(token, file);
  navigate({ view: "search", upload: token, image: null, q: "", open: null });
}

// -- result lists: search, similar -----------------------------------------------------

// The identity of the list a state shows; null when it shows none.
function listKey(s) {
  if (s.view === "similar") return `similar:${s.id}`;
  if (s.view !== "search") return null;
  if (!s.q.trim() && s.image == null && !s.upload) return null;
  const base = { q: s.q.trim(), image: s.image, upload: s.upload, tags: s.tags };
  const filters = s.upload ? {} : { in: s.in, after: s.after, before: s.before, sort: s.sort };
  return `search:${JSON.stringify({ ...base, ...filters })}`;
}

function fetcherFor(s) {
  if (s.view === "similar") {
    return (offset, n, signal) => api(`/api/similar/${s.id}?n=${n}&offset=${offset}`, { signal });
  }
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
let list = { key: null, items: [], offset: 0, hasMore: false, loading: false, controller: null, fetcher: null };
const listCache = new Map(); // key -> snapshot, for back and forward
const seenFolders = new Set();

function showList(s, { restore = false, scrollTop = true } = {}) {
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

async function loadPage(first = false) {
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
    detailNav();
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

function tile(hit, index, { showFolder = false } = {}) {
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
  return h("li", {}, link);
}

// -- what the search view says around its grid -----------------------------------------

function showLanding() {
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

function renderContext() {
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

async function renderQueryChip() {
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

function renderFilters() {
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

function toggleFilters(open = ui.filters.hidden) {
  ui.filters.hidden = !open;
  ui.filterToggle.setAttribute("aria-expanded", String(open));
  if (open) loadTags().catch((err) => ui.tagChips.replaceChildren(h("span", { class: "muted", text: err.message })));
}

// Filter by a tag: the search keeps its words, or takes the tag's when it has none (the
// API ranks by a query; it has no "list every image with this tag").
function filterByTag(label, { only = false } = {}) {
  const tags = only ? [label] : [...new Set([...state.tags, label])];
  const hasQuery = state.q.trim() || state.image != null || state.upload;
  navigate({ view: "search", tags, q: hasQuery ? state.q : label, open: null, id: null });
}

// -- the tags view ---------------------------------------------------------------------

async function showTagsView() {
  ui.tagList.replaceChildren(h("li", { class: "muted" }, h("span", { class: "spinner" })));
  try {
    await loadTags(true);
  } catch (err) {
    ui.tagList.replaceChildren();
    ui.message.replaceChildren(errorBox(err, "Could not load the tags"));
    return;
  }
  renderTagList();
}

function renderTagList() {
  const needle = ui.tagsFilter.value.trim().toLowerCase();
  if (!allTags?.length) {
    ui.tagList.replaceChildren();
    ui.message.replaceChildren(h("div", { class: "empty" },
      h("div", { class: "big-icon" }, icon("tag")),
      h("h2", { text: "No tags yet" }),
      h("p", {}, "Tag the library from its stored vectors, in seconds: ",
        h("code", { text: "clipsearch tag --labels photos" }), ".")));
    return;
  }
  ui.message.replaceChildren();
  const max = Math.max(...allTags.map((t) => t.images));
  const shown = allTags.filter((t) => !needle || t.label.toLowerCase().includes(needle));
  ui.tagList.replaceChildren(...shown.map((t) => h("li", {},
    h("a", {
      class: "tag-card", href: toURL({ ...state, view: "search", tags: [t.label], q: state.q || t.label, open: null }),
      "data-tag": t.label, "aria-label": `${t.label}: ${plural(t.images, "image")}`,
      onclick: (e) => { if (!e.metaKey && !e.ctrlKey && !e.shiftKey) { e.preventDefault(); filterByTag(t.label, { only: true }); } },
    },
    h("span", { class: "row" }, h("span", { class: "label", text: t.label }), h("span", { class: "count", text: t.images.toLocaleString() })),
    h("span", { class: "bar" }, h("span", { style: `width:${Math.max(2, (100 * t.images) / max)}%` })),
    h("span", { class: "sources", text: t.sources.join(", ") })))));
  if (!shown.length) ui.tagList.append(h("li", { class: "muted", text: "No tag matches." }));
  document.title = "Tags · clipsearch";
}

// -- views that show one request's answer ----------------------------------------------

// A box showing the answer to one request at a time, named by `key`: show() with the key
// shown already does nothing; a new key aborts the request before it and shows `busy`
// until the answer is drawn, or the error with its hint (asked again, it tries again).
// A box that shows one answer at a time. `request(signal, progress)` fetches it; a
// background job's request calls `progress(job)`, which shows how far the job is, with
// a button that cancels it.
function answerBox(box, { busy, failed, onBusy = () => {} }) {
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
function card(title, ...body) {
  return h("section", { class: "card" }, h("h2", { text: title }), body);
}

function emptyState(iconName, title, ...text) {
  return h("div", { class: "empty" },
    h("div", { class: "big-icon" }, icon(iconName)),
    h("h2", { text: title }),
    h("p", {}, ...text));
}

// A table of numbers: column heads, then rows whose first cell heads the row.
function dataTable(caption, heads, rows) {
  return h("table", { class: "data" },
    h("caption", { class: "sr-only", text: caption }),
    h("thead", {}, h("tr", {}, heads.map((head) => h("th", { scope: "col", text: head })))),
    h("tbody", {}, rows.map(([head, ...cells]) => h("tr", {},
      h("th", { scope: "row" }, head), cells.map((cell) => h("td", {}, cell))))));
}

function unreadableNote(files) {
  return files.length > 0 && h("details", { class: "note" },
    h("summary", { text: `${plural(files.length, "file")} could not be read, and ${files.length === 1 ? "is" : "are"} left out` }),
    h("ul", {}, files.map((f) => h("li", {}, h("code", { text: f.path }), `: ${f.reason}`))));
}

// A link that opens an image's detail view, over whatever view shows it.
function openLink(id, ...children) {
  return h("a", { href: toURL({ ...state, open: id }), "data-open": id }, ...children);
}

// -- the duplicates view ---------------------------------------------------------------

const dupsBox = answerBox(ui.dupsList, { busy: "Looking for near-duplicates.", failed: "Could not look for duplicates" });
let dupItems = []; // the tiles shown, in order, for the detail view's arrows

async function showDuplicates() {
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

// -- the label matrix view -------------------------------------------------------------

const matrixBox = answerBox(ui.matrixResult, { busy: "Comparing the images with the labels…", failed: "Could not draw the matrix" });

function showMatrix() {
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

// -- the eval view ---------------------------------------------------------------------

const evalBox = answerBox(ui.evalResult, {
  busy: "Evaluating: a big folder, or few-shot probes, can take tens of seconds.",
  failed: "The evaluation failed",
  onBusy: (on) => {
    ui.evalRun.disabled = on;
    ui.evalRun.textContent = on ? "Running…" : "Run";
  },
});

function showEval() {
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

// -- the detail view -------------------------------------------------------------------

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
  state = { ...state, open: next.id };
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
    state = { ...state, open: null };
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

// -- render: make the page match `state` -----------------------------------------------

function render({ restore = false, scrollTop = true } = {}) {
  const s = state;
  for (const link of document.querySelectorAll(".views a")) {
    const current = link.dataset.nav === (s.view === "similar" || s.view === "matrix" ? "search" : s.view);
    if (current) link.setAttribute("aria-current", "page"); else link.removeAttribute("aria-current");
    link.href = toURL({ ...s, view: link.dataset.nav, id: null, open: null });
  }
  if (ui.q.value !== s.q) ui.q.value = s.q;
  ui.q.placeholder = "Describe what you are looking for…";
  renderFilters();
  renderQueryChip();

  const listView = s.view === "search" || s.view === "similar";
  ui.searchView.hidden = !listView;
  ui.tagsView.hidden = s.view !== "tags";
  ui.dupsView.hidden = s.view !== "duplicates";
  ui.matrixView.hidden = s.view !== "matrix";
  ui.evalView.hidden = s.view !== "eval";
  if (!listView) {
    ui.context.hidden = true;
    ui.message.replaceChildren();
    showList({ ...s, view: "none" });
  }
  if (s.view === "tags") showTagsView();
  if (s.view === "duplicates") {
    document.title = "Duplicates · clipsearch";
    showDuplicates();
  }
  if (s.view === "matrix") showMatrix();
  if (s.view === "eval") showEval();
  if (listView) {
    document.title = s.view === "similar" ? "Similar images · clipsearch"
      : s.q ? `${s.q} · clipsearch` : "clipsearch";
    if (listKey(s)) {
      showList(s, { restore, scrollTop });
      renderContext();
    } else {
      showList(s);
      showLanding();
    }
  }

  if (s.open != null) showDetail(s.open);
  else if (ui.dialog.open || detail.id != null) closeDetail();
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
ui.tagsFilter.addEventListener("input", renderTagList);

ui.dupsThreshold.addEventListener("input", () => { ui.dupsValue.textContent = Number(ui.dupsThreshold.value).toFixed(3); });
ui.dupsThreshold.addEventListener("change", () => navigate({ threshold: Number(ui.dupsThreshold.value) }, { push: false }));
ui.dupsCrops.addEventListener("change", () => navigate({ crops: ui.dupsCrops.checked }, { push: false }));

ui.matrixForm.addEventListener("submit", (e) => {
  e.preventDefault();
  navigate({ labels: ui.matrixLabels.value.trim() });
});

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
    state = readURL();
    render({ scrollTop: listKey(state) !== before });
  }
});

window.addEventListener("popstate", () => {
  const before = listKey(state);
  state = readURL();
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

// -- start -----------------------------------------------------------------------------

history.scrollRestoration = "manual";
if (state.upload) {
  // Keep the token's entry honest if its bytes are gone; the search says so.
  uploadFile(state.upload).catch(() => null);
}
if (activeFilters(state) > 0) toggleFilters(true);
infoLoaded = loadInfo();
render();
loadTags().then(() => { if (!listKey(state) && state.view === "search") showLanding(); }, () => {});
