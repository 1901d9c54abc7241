// Background jobs: long work (duplicates, evaluations, tag runs) starts with a request
// that answers at once with a job, which is then followed until it ends, so the server
// keeps answering searches meanwhile (see clipsearch/jobs.py).

import { ApiError, api, postJSON } from "./api.js";

const POLL_FIRST_MS = 150;
const POLL_MAX_MS = 1000;

// Starts the job `url` takes `body` for and resolves to its result. `onProgress(job)`
// hears of each state seen. Aborting `signal` withdraws this page's interest: the
// server stops the job once nobody else has joined it.
export async function runJob(url, body, { signal, onProgress = () => {} } = {}) {
  let job = await postJSON(url, body, { signal });
  const cancel = () => { api(`/api/jobs/${job.id}`, { method: "DELETE" }).catch(() => {}); };
  signal?.addEventListener("abort", cancel, { once: true });
  try {
    let wait = POLL_FIRST_MS;
    while (job.state === "queued" || job.state === "running") {
      onProgress(job);
      await sleep(wait, signal);
      wait = Math.min(POLL_MAX_MS, wait * 1.5);
      job = await api(`/api/jobs/${job.id}`, { signal });
    }
  } finally {
    signal?.removeEventListener("abort", cancel);
  }
  if (job.state === "done") return job.result;
  if (job.state === "cancelled") throw new ApiError(0, "The job was cancelled", "Run it again to start over.");
  throw new ApiError(0, job.error?.error || "The job failed", job.error?.hint);
}

// What a job is doing, in words: "comparing pixels: 120 of 388".
export function describe(job) {
  if (job.state === "queued") return "Waiting for another job to finish…";
  const { stage, done, total } = job.progress || {};
  if (!stage) return "Starting…";
  return total ? `${capitalise(stage)}: ${done.toLocaleString()} of ${total.toLocaleString()}` : `${capitalise(stage)}…`;
}

const capitalise = (s) => s.charAt(0).toUpperCase() + s.slice(1);

function sleep(ms, signal) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(resolve, ms);
    signal?.addEventListener("abort", () => {
      clearTimeout(timer);
      reject(new DOMException("aborted", "AbortError"));
    }, { once: true });
  });
}
