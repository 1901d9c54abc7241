// The page's state and its URL: every view, search and filter is a query parameter, so
// that reloading or sharing a URL restores what it showed.

const VIEWS = ["search", "similar", "tags", "duplicates"];
const SORTS = ["score", "date", "path"];

export function blankState() {
  return {
    view: "search", q: "", image: null, upload: null, in: "", after: "", before: "", tags: [],
    sort: "score", id: null, open: null, threshold: null, crops: true,
  };
}

const posInt = (s) => (/^\d+$/.test(s || "") ? Number(s) : null);
const isoDate = (s) => (/^\d{4}-\d{2}-\d{2}$/.test(s || "") ? s : "");

export function readURL() {
  const p = new URLSearchParams(location.search);
  const s = blankState();
  s.view = VIEWS.includes(p.get("view")) ? p.get("view") : "search";
  s.q = p.get("q") || "";
  s.image = posInt(p.get("image"));
  s.upload = p.get("upload") || null;
  s.in = p.get("in") || "";
  s.after = isoDate(p.get("after"));
  s.before = isoDate(p.get("before"));
  s.tags = [...new Set(p.getAll("tag").filter(Boolean))];
  s.sort = SORTS.includes(p.get("sort")) ? p.get("sort") : "score";
  s.id = posInt(p.get("id"));
  s.open = posInt(p.get("open"));
  const threshold = Number.parseFloat(p.get("threshold"));
  s.threshold = threshold > 0 && threshold <= 1 ? threshold : null;
  s.crops = p.get("crops") !== "0";
  if (s.view === "similar" && s.id == null) s.view = "search";
  return s;
}

// The search and its filters stay in the URL in every view, so that coming back to the
// search (or reloading any view) finds them as they were.
export function toURL(s) {
  const p = new URLSearchParams();
  if (s.view !== "search") p.set("view", s.view);
  if (s.view === "similar") p.set("id", s.id);
  if (s.view === "duplicates" && s.threshold) p.set("threshold", s.threshold);
  if (s.view === "duplicates" && !s.crops) p.set("crops", "0");
  if (s.q) p.set("q", s.q);
  if (s.image != null) p.set("image", s.image);
  if (s.upload) p.set("upload", s.upload);
  if (s.in) p.set("in", s.in);
  if (s.after) p.set("after", s.after);
  if (s.before) p.set("before", s.before);
  for (const tag of s.tags) p.append("tag", tag);
  if (s.sort !== "score") p.set("sort", s.sort);
  if (s.open != null) p.set("open", s.open);
  const query = p.toString();
  return location.pathname + (query ? `?${query}` : "");
}
