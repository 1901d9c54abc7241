// The tags view: every tag in use with its count; a tag filters the search by it.

import { errorBox } from "./api.js";
import { h, icon, plural } from "./dom.js";
import { filterByTag } from "./search.js";
import { allTags, loadTags, state, ui } from "./state.js";
import { toURL } from "./url.js";

export async function showTagsView() {
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

ui.tagsFilter.addEventListener("input", renderTagList);
