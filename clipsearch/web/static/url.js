// The page's state and its URL: every view, search and filter is a query parameter, so
// that reloading or sharing a URL restores what it showed.

const VIEWS = ["search", "similar", "tags", "duplicates", "matrix", "eval", "albums", "album"];
const MAX_MATRIX_IMAGES = 64; // the server's limit for /api/matrix
const SORTS = ["score", "date", "path"];

export function blankState() {
  return {
    view: "search", q: "", image: null, upload: null, in: "", after: "", before: "", tags: [],
    sort: "score", id: null, open: null, threshold: null, crops: true,
    labels: "", ids: [], folder: "", compare: false, shots: null, album: "",
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
  s.labels = p.get("labels") || "";
  s.ids = [...new Set((p.get("ids") || "").split(",").map(posInt).filter((id) => id != null))].slice(0, MAX_MATRIX_IMAGES);
  s.folder = p.get("folder") || "";
  s.compare = p.get("compare") === "1";
  s.shots = posInt(p.get("shots")) || null;
  s.album = p.get("album") || "";
  if (s.view === "similar" && s.id == null) s.view = "search";
  if (s.view === "album" && !s.album) s.view = "albums";
  return s;
}

// The search and its filters stay in the URL in every view, so that coming back to the
// search (or reloading any view) finds them as they were; so does the label set last
// used by the matrix and eval views.
export function toURL(s) {
  const p = new URLSearchParams();
  if (s.view !== "search") p.set("view", s.view);
  if (s.view === "similar") p.set("id", s.id);
  if (s.view === "album") p.set("album", s.album);
  if (s.view === "duplicates" && s.threshold) p.set("threshold", s.threshold);
  if (s.view === "duplicates" && !s.crops) p.set("crops", "0");
  if (s.view === "matrix" && s.ids.length) p.set("ids", s.ids.join(","));
  if (s.view === "eval" && s.folder) p.set("folder", s.folder);
  if (s.view === "eval" && s.compare) p.set("compare", "1");
  if (s.view === "eval" && s.shots) p.set("shots", s.shots);
  if (s.labels) p.set("labels", s.labels);
  if (s.q) p.set("q", s.q);
  if (s.image != null) p.set("image", s.image);
  if (s.upload) p.set("upload", s.upload);
  if (s.in) p.set("in", s.in);
  if (s.after) p.set("after", s.after);
  if (s.before) p.set("before", s.before);
  for (const tag of s.tags) p.append("tag", tag);
  if (s.sort !== "score") p.set("sort", s.sort);
  if (s.open != null) p.set("open", s.open);
  const query = p.toString().replaceAll("%2C", ","); // the same query, easier to read
  return location.pathname + (query ? `?${query}` : "");
}
