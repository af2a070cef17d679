// The server's API as the page uses it: the API key, JSON fetches with OpenAI-style errors, and
// server-sent events read from a streamed response body.

const KEY_STORAGE = "pagedllm-api-key";

// The server writes true/false into this meta tag; the raw placeholder means the page was opened
// from somewhere that did not fill it in, where no key can be asked for anyway.
export function apiKeyRequired() {
  const meta = document.querySelector('meta[name="pagedllm-api-key-required"]');
  return meta !== null && meta.content.trim() === "true";
}

// sessionStorage, not localStorage: the key should not outlive the tab.
export function getApiKey() {
  try {
    return sessionStorage.getItem(KEY_STORAGE) || "";
  } catch {
    return "";
  }
}

export function setApiKey(key) {
  try {
    if (key) sessionStorage.setItem(KEY_STORAGE, key);
    else sessionStorage.removeItem(KEY_STORAGE);
  } catch {
    // Storage can be disabled; the key then lasts until the page is reloaded.
  }
  memoryKey = key;
}

let memoryKey = getApiKey();

export function hasApiKey() {
  return memoryKey !== "";
}

function headers(extra = {}) {
  const h = { ...extra };
  if (memoryKey) h.Authorization = `Bearer ${memoryKey}`;
  return h;
}

// An error answered by the server (OpenAI's {"error": {...}} body) or found in a stream.
export class ApiError extends Error {
  constructor(message, status = 0, type = null, code = null) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.type = type;
    this.code = code;
  }
}

function errorFromBody(body, status) {
  const err = body && typeof body === "object" ? body.error : null;
  if (err && typeof err === "object") {
    return new ApiError(String(err.message ?? "error"), status, err.type ?? null, err.code ?? null);
  }
  if (typeof err === "string") return new ApiError(err, status);
  if (body && typeof body.detail === "string") return new ApiError(body.detail, status);
  return null;
}

async function errorFromResponse(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    // Not JSON (a proxy's page, say): the status line is all there is.
  }
  return (
    errorFromBody(body, response.status) ??
    new ApiError(`HTTP ${response.status} ${response.statusText}`.trim(), response.status)
  );
}

export async function getSnapshot(historySince = null, signal = undefined) {
  let url = "/engine/snapshot";
  if (historySince !== null && Number.isFinite(historySince)) {
    url += `?history_since=${encodeURIComponent(historySince)}`;
  }
  const response = await fetch(url, { headers: headers(), signal, cache: "no-store" });
  if (!response.ok) throw await errorFromResponse(response);
  return response.json();
}

// Yields each event's data: parsed JSON objects, until `data: [DONE]` or the end of the body.
export async function* readServerSentEvents(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  let dataLines = [];
  try {
    for (;;) {
      const { value, done } = await reader.read();
      buffer += done ? decoder.decode() : decoder.decode(value, { stream: true });
      let newline;
      // A line may be split across chunks, so only whole lines leave the buffer.
      while ((newline = buffer.search(/\r\n|\r|\n/)) !== -1) {
        // A CR that ends the chunk may be the first half of a CRLF: wait for the next chunk.
        if (!done && newline === buffer.length - 1 && buffer[newline] === "\r") break;
        const line = buffer.slice(0, newline);
        buffer = buffer.slice(newline + (buffer.startsWith("\r\n", newline) ? 2 : 1));
        if (line === "") {
          if (dataLines.length) {
            const data = dataLines.join("\n");
            dataLines = [];
            if (data === "[DONE]") return;
            yield JSON.parse(data);
          }
        } else if (line.startsWith("data:")) {
          dataLines.push(line.slice(line[5] === " " ? 6 : 5));
        }
        // Comments (":"), event names and ids carry nothing this page needs.
      }
      if (done) {
        if (buffer.startsWith("data:")) dataLines.push(buffer.slice(buffer[5] === " " ? 6 : 5));
        const data = dataLines.join("\n");
        if (data && data !== "[DONE]") yield JSON.parse(data);
        return;
      }
    }
  } finally {
    // Leaving early (abort, error, [DONE]) must release the body so the connection closes.
    reader.cancel().catch(() => {});
  }
}

// POSTs a streaming request and yields its chunks; an error body or error event throws ApiError.
export async function* streamRequest(path, body, signal) {
  const response = await fetch(path, {
    method: "POST",
    headers: headers({ "Content-Type": "application/json", Accept: "text/event-stream" }),
    body: JSON.stringify(body),
    signal,
  });
  if (!response.ok) throw await errorFromResponse(response);
  for await (const event of readServerSentEvents(response)) {
    const err = errorFromBody(event, response.status);
    if (err) throw err;
    yield event;
  }
}
