// The page's shared state: `state` (which lives in the URL), the elements every view
// uses, and what the library told us (its facts, its tags, each image's facts). Views
// change `state` only through navigate() (or setState() and commit() for a step that
// renders itself); app.js registers the render() that makes the page match it.
//
// Views hear of loaded facts through `events`: "info" once /api/info answers, "tags"
// whenever the tag list loads, "page" when a result page is shown.

import { api } from "./api.js";
import { readURL, toURL } from "./url.js";

const $ = (id) => document.getElementById(id);
export const ui = {
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
  albumsView: $("albums-view"), albumList: $("album-list"),
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

export const events = new EventTarget();

export let state = readURL();
let renderer = () => {};

// app.js's render(), called by navigate().
export function setRenderer(render) {
  renderer = render;
}

// `opened` marks a history entry pushed by opening the detail view: closing it then goes
// back, so that the back button does not reopen what was just closed.
export function commit(push) {
  const url = toURL(state);
  if (push) history.pushState({ opened: state.open != null }, "", url);
  else history.replaceState(history.state, "", url);
}

export function navigate(changes, { push = true } = {}) {
  const before = listKey(state);
  state = { ...state, ...changes };
  commit(push);
  renderer({ scrollTop: listKey(state) !== before });
}

// A change that the caller shows itself (and commits, or not).
export function setState(changes) {
  state = { ...state, ...changes };
}

// The state as the URL now says (after a history step).
export function reloadState() {
  state = readURL();
}

export const activeFilters = (s) =>
  (s.in ? 1 : 0) + (s.after ? 1 : 0) + (s.before ? 1 : 0) + s.tags.length + (s.sort !== "score" ? 1 : 0);

// The identity of the list a state shows; null when it shows none.
export function listKey(s) {
  if (s.view === "similar") return `similar:${s.id}`;
  if (s.view === "album") return `album:${s.album}`;
  if (s.view !== "search") return null;
  if (!s.q.trim() && s.image == null && !s.upload) return null;
  const base = { q: s.q.trim(), image: s.image, upload: s.upload, tags: s.tags };
  const filters = s.upload ? {} : { in: s.in, after: s.after, before: s.before, sort: s.sort };
  return `search:${JSON.stringify({ ...base, ...filters })}`;
}

// -- library facts, tags, image facts (cached) -----------------------------------------

export let info = null;
export let infoLoaded = null; // loadInfo's promise
export let allTags = null;
const imageFacts = new Map();

export function loadInfo() {
  infoLoaded = api("/api/info").catch((err) => ({ error: err })).then((answer) => {
    info = answer;
    events.dispatchEvent(new Event("info"));
  });
  return infoLoaded;
}

let tagsRequest = null;
export function loadTags(force = false) {
  if (!tagsRequest || force) {
    tagsRequest = api("/api/tags").then((tags) => {
      allTags = tags;
      events.dispatchEvent(new Event("tags"));
      return tags;
    }, (err) => {
      tagsRequest = null;
      throw err;
    });
  }
  return tagsRequest;
}

export async function facts(id) {
  if (!imageFacts.has(id)) {
    const pending = api(`/api/images/${id}`);
    imageFacts.set(id, pending);
    pending.catch(() => imageFacts.delete(id));
  }
  return imageFacts.get(id);
}
