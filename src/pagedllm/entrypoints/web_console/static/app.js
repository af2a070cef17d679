// The page's entry point: theme, tabs, the API key, the first snapshot (model name, context
// length, chat template) and the wiring between the chat playground and the engine view.

import { apiKeyRequired, getApiKey, getSnapshot, hasApiKey, setApiKey } from "./api.js";
import { ChatPlayground } from "./chat.js";
import { EngineView } from "./engine_view.js";

const $ = (id) => document.getElementById(id);
const THEME_STORAGE = "pagedllm-theme";

// --- theme -----------------------------------------------------------------------------------

const systemDark = window.matchMedia("(prefers-color-scheme: dark)");

function storedTheme() {
  try {
    const t = localStorage.getItem(THEME_STORAGE);
    return t === "light" || t === "dark" ? t : null;
  } catch {
    return null;
  }
}

function applyTheme(theme) {
  document.documentElement.dataset.theme = theme;
  const next = theme === "dark" ? "light" : "dark";
  $("theme-toggle").setAttribute("aria-label", `Switch to ${next} theme`);
  $("theme-toggle").title = `Switch to ${next} theme`;
  engine?.themeChanged();
}

let engine = null;
applyTheme(storedTheme() ?? (systemDark.matches ? "dark" : "light"));
// Until the user picks one, the page follows the system's theme as it changes.
systemDark.addEventListener("change", (event) => {
  if (!storedTheme()) applyTheme(event.matches ? "dark" : "light");
});
$("theme-toggle").addEventListener("click", () => {
  const theme = document.documentElement.dataset.theme === "dark" ? "light" : "dark";
  try {
    localStorage.setItem(THEME_STORAGE, theme);
  } catch {
    // Storage disabled: the choice lasts for this page only.
  }
  applyTheme(theme);
});

// --- views -----------------------------------------------------------------------------------

const chat = new ChatPlayground();
let authenticated = !apiKeyRequired();
engine = new EngineView({ onAuthError: () => askForKey("The server no longer accepts this key (401).") });

const tabs = [
  { tab: $("tab-chat"), panel: $("chat-panel"), name: "chat" },
  { tab: $("tab-engine"), panel: $("engine-panel"), name: "engine" },
];
let current = "chat";

function showTab(name, focus = false) {
  current = name;
  for (const t of tabs) {
    const selected = t.name === name;
    t.tab.setAttribute("aria-selected", String(selected));
    // Roving tabindex: Tab reaches the selected tab, the arrow keys move between tabs.
    t.tab.tabIndex = selected ? 0 : -1;
    t.panel.hidden = !selected;
    if (selected && focus) t.tab.focus();
  }
  if (location.hash !== `#${name}`) history.replaceState(null, "", name === "chat" ? location.pathname : `#${name}`);
  updatePolling();
  if (name === "engine") engine.requestDraw(true);
}

tabs.forEach((t, index) => {
  t.tab.addEventListener("click", () => showTab(t.name));
  t.tab.addEventListener("keydown", (event) => {
    let next = null;
    if (event.key === "ArrowRight") next = tabs[(index + 1) % tabs.length];
    else if (event.key === "ArrowLeft") next = tabs[(index - 1 + tabs.length) % tabs.length];
    else if (event.key === "Home") next = tabs[0];
    else if (event.key === "End") next = tabs[tabs.length - 1];
    if (next) {
      event.preventDefault();
      showTab(next.name, true);
    }
  });
});

// The engine is polled only while its tab is shown in a visible document and a key is in hand.
function updatePolling() {
  if (current === "engine" && document.visibilityState === "visible" && authenticated && modelKnown) engine.start();
  else engine.stop();
}
document.addEventListener("visibilitychange", updatePolling);

// Esc stops the streaming reply wherever the focus is.
document.addEventListener("keydown", (event) => {
  if (event.key === "Escape" && chat.streaming) {
    event.preventDefault();
    chat.stop();
  }
});

// --- model and auth --------------------------------------------------------------------------

let modelKnown = false;
let retryTimer = null;

function showBanner(text) {
  const banner = $("banner");
  banner.textContent = text;
  banner.hidden = !text;
}

function applyModel(snapshot) {
  const model = snapshot.model ?? {};
  $("model-name").textContent = model.name ?? "?";
  $("context-length").textContent = String(model.max_model_len ?? "?");
  chat.setModel(model);
  engine.apply(snapshot);
  modelKnown = true;
  chat.setReady(true);
  updatePolling();
}

// The one snapshot taken outside the engine tab: it names the model and checks the key.
async function loadModel() {
  clearTimeout(retryTimer);
  try {
    const snapshot = await getSnapshot();
    showBanner("");
    $("auth-panel").hidden = true;
    applyModel(snapshot);
    return true;
  } catch (err) {
    if (err?.status === 401) {
      askForKey(hasApiKey() ? "The server refused this key (401)." : "");
      return false;
    }
    showBanner(`Cannot reach the server: ${err?.message ?? err}. Retrying…`);
    retryTimer = setTimeout(loadModel, 5000);
    return false;
  }
}

function askForKey(message) {
  authenticated = false;
  setApiKey("");
  chat.setReady(false);
  updatePolling();
  $("auth-panel").hidden = false;
  $("auth-error").textContent = message;
  $("api-key").focus();
}

async function saveKey() {
  const key = $("api-key").value.trim();
  if (!key) {
    $("auth-error").textContent = "Enter the key the server was started with.";
    return;
  }
  $("api-key-save").disabled = true;
  $("auth-error").textContent = "";
  setApiKey(key);
  authenticated = true;
  const ok = await loadModel();
  $("api-key-save").disabled = false;
  if (ok) {
    $("api-key").value = "";
    $("prompt").focus();
  }
}

// A form submit covers both the button and Enter in the input.
$("auth-form").addEventListener("submit", (event) => {
  event.preventDefault();
  saveKey();
});

// --- boot ------------------------------------------------------------------------------------

showTab(location.hash === "#engine" ? "engine" : "chat");
if (authenticated || getApiKey()) {
  authenticated = true;
  loadModel();
} else {
  // No request to a protected route before the key is known: a 401 would be a console error.
  askForKey("");
}
