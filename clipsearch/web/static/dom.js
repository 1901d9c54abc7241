// Small DOM and formatting helpers for the search page.

export function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value == null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat(Infinity)) {
    if (child != null && child !== false) node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

const SVG_NS = "http://www.w3.org/2000/svg";
const ICONS = {
  search: "M11 4a7 7 0 1 0 0 14a7 7 0 1 0 0-14M20 20l-3.5-3.5",
  alert: "M12 8v5M12 16.5v.5M10.3 3.9L2.5 17.5A2 2 0 0 0 4.2 20.5h15.6a2 2 0 0 0 1.7-3L13.7 3.9a2 2 0 0 0-3.4 0z",
  image: "M5 5h14a2 2 0 0 1 2 2v10a2 2 0 0 1-2 2H5a2 2 0 0 1-2-2V7a2 2 0 0 1 2-2zM21 16l-5-5-8 8M9 8.4a1.6 1.6 0 1 0 0 3.2a1.6 1.6 0 1 0 0-3.2",
  tag: "M3 12V4a1 1 0 0 1 1-1h8l9 9-9 9zM7.5 7.5h.01",
  copies: "M8 8h11a1 1 0 0 1 1 1v11a1 1 0 0 1-1 1H8a1 1 0 0 1-1-1V9a1 1 0 0 1 1-1zM4 16V5a1 1 0 0 1 1-1h11",
  x: "M6 6l12 12M18 6L6 18",
  matrix: "M4 4h16v16H4zM4 9.33h16M4 14.67h16M9.33 4v16M14.67 4v16",
  album: "M4 6h16v13a1 1 0 0 1-1 1H5a1 1 0 0 1-1-1zM7 3h10M4 15l4.5-4.5 4 4 2.5-2.5 5 5",
  pin: "M9 3h6l-1 6 4 4H6l4-4zM12 13v8",
};

export function icon(name) {
  const svg = document.createElementNS(SVG_NS, "svg");
  svg.setAttribute("class", "icon");
  svg.setAttribute("viewBox", "0 0 24 24");
  svg.setAttribute("aria-hidden", "true");
  const path = document.createElementNS(SVG_NS, "path");
  path.setAttribute("d", ICONS[name]);
  svg.append(path);
  return svg;
}

export const fmtScore = (score) => (typeof score === "number" ? score.toFixed(3) : "");
export const fmtPercent = (x) => (typeof x === "number" ? `${(100 * x).toFixed(1)}%` : "-");
export const dirname = (path) => path.replace(/[\\/][^\\/]*$/, "") || "/";
export const basename = (path) => path.replace(/^.*[\\/]/, "");

export function fmtBytes(n) {
  if (n == null) return "";
  const units = ["bytes", "KB", "MB", "GB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return i === 0 ? `${n} bytes` : `${n.toFixed(n < 10 ? 1 : 0)} ${units[i]}`;
}

export function fmtDate(iso) {
  if (!iso) return "unknown";
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return iso;
  return date.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });
}

export function thumbUrl(base, size) {
  return `${base}${base.includes("?") ? "&" : "?"}size=${size}`;
}

// Heat-map colours, cold to hot, for the light and the dark scheme.
const HEAT = {
  light: [[246, 246, 252], [199, 210, 254], [129, 140, 248], [79, 70, 229], [49, 46, 129]],
  dark: [[31, 35, 44], [49, 46, 129], [79, 70, 229], [165, 180, 252], [238, 240, 255]],
};

function heatColour(t) {
  const stops = HEAT[matchMedia("(prefers-color-scheme: dark)").matches ? "dark" : "light"];
  const x = Math.min(1, Math.max(0, Number.isFinite(t) ? t : 0)) * (stops.length - 1);
  const i = Math.min(Math.floor(x), stops.length - 2);
  return stops[i].map((v, k) => Math.round(v + (stops[i + 1][k] - v) * (x - i)));
}

// The style of a heat-map cell for `t` in 0..1: its colour, and black or white text,
// whichever contrasts more with it (at least 4.5:1 either way).
export function heat(t) {
  const rgb = heatColour(t);
  const [r, g, b] = rgb.map((v) => {
    const c = v / 255;
    return c <= 0.04045 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4;
  });
  const luminance = 0.2126 * r + 0.7152 * g + 0.0722 * b;
  const text = (luminance + 0.05) / 0.05 >= 1.05 / (luminance + 0.05) ? "#000" : "#fff";
  return `background-color: rgb(${rgb.join(" ")}); color: ${text}`;
}

// The heat scale as a CSS gradient, for a legend.
export function heatGradient() {
  return `linear-gradient(to right, ${[0, 0.25, 0.5, 0.75, 1].map((t) => `rgb(${heatColour(t).join(" ")})`).join(", ")})`;
}

// A path that wraps after its slashes rather than anywhere.
export function breakable(path) {
  return path.split(/(?<=[\\/])/).flatMap((part, i) => (i ? [document.createElement("wbr"), part] : [part]));
}

export function plural(n, word) {
  return `${n.toLocaleString()} ${word}${n === 1 ? "" : "s"}`;
}

export function isTyping(target) {
  return target instanceof HTMLElement &&
    (target.isContentEditable || ["INPUT", "TEXTAREA", "SELECT"].includes(target.tagName));
}

let toastTimer = 0;
export function toast(text) {
  const box = document.getElementById("toast");
  box.textContent = text;
  box.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { box.hidden = true; }, 4000);
}
