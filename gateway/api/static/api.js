// Calls to /api/v1 with the console's bearer token (kept in sessionStorage, so it dies with the
// tab). Every failure becomes an ApiError carrying the API's own `error` message.

export const BASE = "/api/v1";
const KEY = "gbgw.session";

export class ApiError extends Error {
  constructor(status, message, field) {
    super(message);
    this.status = status;
    this.field = field ?? null;
  }
}

let session = null;
try {
  session = JSON.parse(sessionStorage.getItem(KEY) || "null");
} catch (_) {
  session = null;
}
let onUnauthorized = () => {};

export function getSession() {
  return session;
}

export function setSession(value) {
  session = value;
  try {
    if (value) sessionStorage.setItem(KEY, JSON.stringify(value));
    else sessionStorage.removeItem(KEY);
  } catch (_) {
    // Kept in memory only.
  }
}

export function whenUnauthorized(fn) {
  onUnauthorized = fn;
}

// For calls made outside /api/v1 (the WHEP preview): the bearer header, and the 401 hook.
export function authHeaders() {
  return session && session.token ? { Authorization: `Bearer ${session.token}` } : {};
}

export function unauthorized() {
  onUnauthorized();
}

export function qs(params) {
  const parts = [];
  for (const [k, v] of Object.entries(params || {})) {
    if (v === undefined || v === null || v === "") continue;
    parts.push(`${encodeURIComponent(k)}=${encodeURIComponent(v)}`);
  }
  return parts.length ? `?${parts.join("&")}` : "";
}

export async function errorOf(resp) {
  let message = `HTTP ${resp.status}`;
  let field = null;
  try {
    const body = await resp.json();
    if (body && typeof body.error === "string") message = body.error;
    else if (body && typeof body.detail === "string") message = body.detail;
    if (body && body.field) field = body.field;
  } catch (_) {
    // Not JSON: keep the status.
  }
  return new ApiError(resp.status, message, field);
}

async function send(method, path, body, params) {
  const headers = authHeaders();
  const init = { method, headers };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let resp;
  try {
    resp = await fetch(BASE + path + qs(params), init);
  } catch (exc) {
    throw new ApiError(0, String(exc && exc.message ? exc.message : exc), null);
  }
  if (resp.status === 401 && path !== "/auth/login") {
    onUnauthorized();
  }
  if (!resp.ok) throw await errorOf(resp);
  return resp;
}

export async function api(method, path, body, params) {
  const resp = await send(method, path, body, params);
  if (resp.status === 204) return null;
  const type = resp.headers.get("Content-Type") || "";
  return type.includes("json") ? resp.json() : resp.text();
}

export const get = (path, params) => api("GET", path, undefined, params);
export const post = (path, body, params) => api("POST", path, body ?? {}, params);
export const patch = (path, body) => api("PATCH", path, body);
export const put = (path, body) => api("PUT", path, body);
export const del = (path, params) => api("DELETE", path, undefined, params);

function filenameOf(resp, fallback) {
  const cd = resp.headers.get("Content-Disposition") || "";
  const star = /filename\*=UTF-8''([^;]+)/i.exec(cd);
  if (star) {
    try {
      return decodeURIComponent(star[1]);
    } catch (_) {
      // fall through
    }
  }
  const plain = /filename="?([^";]+)"?/i.exec(cd);
  return plain ? plain[1] : fallback;
}

// A file behind the bearer token: fetched as a blob and saved through an object URL (a plain
// link could not send the Authorization header).
export async function download(path, fallbackName) {
  const resp = await send("GET", path);
  const blob = await resp.blob();
  const url = URL.createObjectURL(blob);
  const a = document.createElement("a");
  a.href = url;
  a.download = filenameOf(resp, fallbackName);
  document.body.appendChild(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
  return a.download;
}

// A file sent as multipart/form-data (field "file"); the answer is JSON.
export async function upload(path, file) {
  const headers = authHeaders();
  const form = new FormData();
  form.append("file", file, file.name);
  let resp;
  try {
    resp = await fetch(BASE + path, { method: "POST", headers, body: form });
  } catch (exc) {
    throw new ApiError(0, String(exc && exc.message ? exc.message : exc), null);
  }
  if (resp.status === 401) onUnauthorized();
  if (!resp.ok) throw await errorOf(resp);
  return resp.json();
}
