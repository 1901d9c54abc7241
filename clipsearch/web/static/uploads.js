// Uploaded query images. An upload cannot live in a URL, so the URL holds a token and this tab keeps the bytes:
// in memory, and in sessionStorage (when small enough) so that a reload still finds them.

const uploads = new Map();
const UPLOAD_KEY = "clipsearch.upload.";

export function rememberUpload(token, file) {
  uploads.set(token, file);
  if (file.size > 3 * 1024 * 1024) return;
  const reader = new FileReader();
  reader.onload = () => {
    try {
      const keys = Object.keys(sessionStorage).filter((k) => k.startsWith(UPLOAD_KEY)).sort(); // tokens sort by time
      for (const key of keys.slice(0, Math.max(0, keys.length - 4))) sessionStorage.removeItem(key);
      sessionStorage.setItem(UPLOAD_KEY + token,
        JSON.stringify({ name: file.name, type: file.type, data: reader.result }));
    } catch { /* storage full or off: the upload just won't survive a reload */ }
  };
  reader.readAsDataURL(file);
}

export async function uploadFile(token) {
  if (uploads.has(token)) return uploads.get(token);
  let saved = null;
  try { saved = JSON.parse(sessionStorage.getItem(UPLOAD_KEY + token) || "null"); } catch { saved = null; }
  if (!saved) return null;
  const blob = await (await fetch(saved.data)).blob(); // a data: URL, decoded locally
  const file = new File([blob], saved.name || "image", { type: saved.type || blob.type });
  uploads.set(token, file);
  return file;
}

const uploadUrls = new Map();
export function uploadPreview(file) {
  if (!uploadUrls.has(file)) uploadUrls.set(file, URL.createObjectURL(file));
  return uploadUrls.get(file);
}
