// Albums: saved searches whose images follow the library. The albums view lists them; an
// album's own view is a result list like a search's (search.js shows it, paging and the
// detail view included), whose tiles can be pinned in or removed for good; a search can be
// saved as one from its context line.

import { api, errorBox, postJSON } from "./api.js";
import { h, icon, plural, toast } from "./dom.js";
import { events, listKey, navigate, state, ui } from "./state.js";
import { toURL } from "./url.js";

const path = (name) => `/api/albums/${encodeURIComponent(name)}`;

// The page of an album's images, as search.js's lists fetch pages.
export const albumFetcher = (name) => (offset, n, signal) => api(`${path(name)}?n=${n}&offset=${offset}`, { signal });

// The albums view.
export async function showAlbums() {
  document.title = "Albums · clipsearch";
  ui.albumList.replaceChildren(h("li", { class: "muted" }, h("span", { class: "spinner" })));
  let albums;
  try {
    albums = await api("/api/albums");
  } catch (err) {
    ui.albumList.replaceChildren();
    ui.message.replaceChildren(errorBox(err, "Could not load the albums"));
    return;
  }
  if (!albums.length) {
    ui.albumList.replaceChildren();
    ui.message.replaceChildren(h("div", { class: "empty" },
      h("div", { class: "big-icon" }, icon("album")),
      h("h2", { text: "No albums yet" }),
      h("p", { text: "Search for something, then save the search as an album from the line above its results. " +
                     "Its images follow the library: new ones join, deleted ones leave." }),
      h("p", {}, "Or from the command line: ", h("code", { text: 'clipsearch album create beach "a sunny beach"' }))));
    return;
  }
  ui.message.replaceChildren();
  ui.albumList.replaceChildren(...albums.map((a) => h("li", {},
    h("a", { class: "tag-card album-card", href: toURL({ ...state, view: "album", album: a.name, open: null }),
             "data-album": a.name, "aria-label": `${a.name}: ${plural(a.members, "image")}` },
    h("span", { class: "row" }, h("span", { class: "label", text: a.name }),
      h("span", { class: "count", text: a.members.toLocaleString() })),
    h("span", { class: "sources", text: a.query }),
    (a.pinned.length || a.removed.length) && h("span", { class: "sources",
      text: [a.pinned.length && `${a.pinned.length} pinned`, a.removed.length && `${a.removed.length} removed`]
        .filter(Boolean).join(", ") })))));
}

// What the album view says above its grid: the album, its search, and its actions.
export function albumContext(s, found, album) {
  const parts = [icon("album"), h("strong", { text: s.album })];
  if (found) parts.push(h("span", { text: "·" }), found);
  if (album) parts.push(h("span", { class: "muted album-query", text: album.query }));
  parts.push(h("a", { class: "chip push", href: toURL({ ...s, view: "albums", album: "" }), "data-nav": "albums" },
    "All albums"));
  parts.push(h("button", { type: "button", class: "chip danger", onclick: () => deleteAlbum(s.album) },
    icon("x"), "Delete album"));
  return parts;
}

async function deleteAlbum(name) {
  if (!confirm(`Delete the album “${name}”? Its images stay where they are.`)) return;
  try {
    await api(path(name), { method: "DELETE" });
  } catch (err) {
    toast(`Could not delete the album: ${err.message}`);
    return;
  }
  toast(`Deleted the album ${name}`);
  navigate({ view: "albums", album: "", open: null });
}

// The pin and remove buttons of an album's tile (beside its link: a button cannot sit
// inside one).
export function memberActions(hit) {
  const decide = (which) => async () => {
    try {
      await postJSON(`${path(state.album)}/members`, { images: [hit.id], state: which });
    } catch (err) {
      toast(`Could not change the album: ${err.message}`);
      return;
    }
    toast(which === "pinned" ? `Pinned ${hit.name}: it stays in the album`
      : which === "removed" ? `Removed ${hit.name} from the album for good` : `The album's search decides about ${hit.name} again`);
    events.dispatchEvent(new Event("album-changed"));
  };
  return h("span", { class: "member-actions" },
    hit.pinned
      ? h("button", { type: "button", class: "chip pinned", "aria-pressed": "true", title: "Pinned: kept whatever the search says. Click to let the search decide.",
                      "aria-label": `Unpin ${hit.name}`, onclick: decide("search") }, icon("pin"), "Pinned")
      : h("button", { type: "button", class: "chip", "aria-pressed": "false", title: "Keep this image in the album whatever the search says",
                      "aria-label": `Pin ${hit.name}`, onclick: decide("pinned") }, icon("pin"), "Pin"),
    h("button", { type: "button", class: "chip", title: "Take this image out of the album for good",
                  "aria-label": `Remove ${hit.name} from the album`, onclick: decide("removed") }, icon("x"), "Remove"));
}

// "Save as album" on a search's context line: a name, then the search as the API takes it.
// The context line is drawn again as each page of results arrives: a form opened for this
// search stays open, with what was typed and the focus, instead of closing under the user.
let draft = null; // { key, name } of the open form

export function saveButton(s) {
  const key = listKey(s);
  const open = draft?.key === key;
  const refocus = open && document.activeElement?.matches?.(".save-album input");
  const form = h("form", { class: "inline-form save-album", hidden: !open },
    h("input", { type: "text", name: "name", required: true, maxlength: 200, pattern: "[^\\x2F\\x5C]+",
                 placeholder: "Album name", "aria-label": "Album name", value: open ? draft.name : s.q.trim() }),
    h("button", { type: "submit", class: "button primary", text: "Save" }));
  const input = form.elements.name;
  input.addEventListener("input", () => { if (draft?.key === key) draft.name = input.value; });
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const name = input.value.trim();
    const body = { name, ...(s.q.trim() ? { text: s.q.trim() } : {}), ...(s.image != null ? { images: [s.image] } : {}),
                   ...(s.in ? { in: [s.in] } : {}), ...(s.after ? { after: s.after } : {}),
                   ...(s.before ? { before: s.before } : {}), ...(s.tags.length ? { tag: s.tags } : {}), sort: s.sort };
    try {
      const album = await postJSON("/api/albums", body);
      draft = null;
      toast(`Saved the album ${album.name}: ${plural(album.members, "image")}`);
      navigate({ view: "album", album: album.name, open: null });
    } catch (err) {
      toast(`Could not save the album: ${err.message}${err.hint ? ` (${err.hint})` : ""}`);
    }
  });
  const button = h("button", { type: "button", class: "chip", hidden: open,
                               title: "Save this search as an album that follows the library",
                               onclick: () => {
                                 draft = { key, name: input.value };
                                 button.hidden = true; form.hidden = false; input.focus();
                               } },
    icon("album"), "Save as album");
  if (refocus) requestAnimationFrame(() => input.focus());
  return h("span", { class: "save-album-box" }, button, form);
}
