// The JSON API: every error is {"error", "hint"} with a 4xx status, shown as it comes.

import { h, icon } from "./dom.js";

export class ApiError extends Error {
  constructor(status, message, hint) {
    super(message);
    this.status = status;
    this.hint = hint || null;
  }
}

export async function api(url, options = {}) {
  let response;
  try {
    response = await fetch(url, { ...options, headers: { Accept: "application/json", ...options.headers } });
  } catch (err) {
    if (err.name === "AbortError") throw err;
    if (options.body instanceof FormData) {
      // A server that refuses a big body early can cut the upload off mid-way.
      throw new ApiError(0, "The upload failed before the server answered",
        "The file may be larger than the server accepts (clipsearch serve --max-upload-mb).");
    }
    throw new ApiError(0, "Cannot reach the clipsearch server", "Is `clipsearch serve` still running?");
  }
  let body = null;
  try { body = await response.json(); } catch { /* not JSON: a proxy's page, say */ }
  if (!response.ok) {
    throw new ApiError(response.status, body?.error || `${response.status} ${response.statusText}`, body?.hint);
  }
  return body;
}

export function postJSON(url, body, options = {}) {
  return api(url, {
    ...options, method: "POST", body: JSON.stringify(body), headers: { "Content-Type": "application/json" },
  });
}

export function errorBox(err, title = "Something went wrong") {
  const hint = err instanceof ApiError ? err.hint : null;
  return h("div", { class: "error-box", role: "alert" },
    icon("alert"),
    h("div", {},
      h("strong", { text: title }),
      h("div", { class: "error-text", text: err.message || String(err) }),
      hint && h("div", { class: "hint", text: hint })));
}
