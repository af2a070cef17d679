// The chat playground: the conversation, its settings, streaming a reply (chat or plain
// completion mode), stop / reset / export, and the per-reply timing.

import { streamRequest } from "./api.js";
import { renderInto, renderPlain } from "./render.js";

const $ = (id) => document.getElementById(id);

export class ChatPlayground {
  constructor() {
    this.messagesEl = $("messages");
    this.promptEl = $("prompt");
    this.sendEl = $("send");
    this.stopEl = $("stop");
    this.model = null; // the snapshot's model object once known
    this.mode = "chat";
    this.turns = []; // {role, content}: what the next request sends (system prompt aside)
    this.conversation = 0; // bumped by reset, so a reply that ends after it is not recorded
    this.controller = null; // the AbortController of the reply streaming now
    this.ready = false; // false until the model is known and any API key is in hand
    this.pendingSend = false; // Enter pressed before ready: sent once ready

    $("composer").addEventListener("submit", (event) => {
      event.preventDefault();
      this.send();
    });
    this.promptEl.addEventListener("keydown", (event) => {
      // isComposing: Enter that confirms an IME composition must not send.
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        this.send();
      }
    });
    this.stopEl.addEventListener("click", () => this.stop());
    $("reset").addEventListener("click", () => this.reset());
    $("export").addEventListener("click", () => this.exportConversation());
    this.updateButtons();
  }

  // Called with the snapshot's model: picks the mode and the limits of the settings.
  setModel(model) {
    this.model = model;
    const completion = model.chat_template === false;
    const mode = completion ? "completion" : "chat";
    if (mode !== this.mode && this.turns.length) this.reset();
    this.mode = mode;
    $("mode").textContent = mode;
    $("system-prompt-field").hidden = completion;
    this.promptEl.placeholder = completion
      ? "Text to continue (Enter sends, Shift+Enter adds a line, Esc stops)"
      : "Message (Enter sends, Shift+Enter adds a line, Esc stops)";
    const maxTokens = $("max-tokens");
    if (Number.isInteger(model.max_model_len) && model.max_model_len > 0) {
      maxTokens.max = String(model.max_model_len);
      if (Number(maxTokens.value) > model.max_model_len) maxTokens.value = String(model.max_model_len);
    }
  }

  setReady(ready) {
    this.ready = ready;
    this.updateButtons();
    if (ready && this.pendingSend) {
      this.pendingSend = false;
      this.send();
    }
  }

  get streaming() {
    return this.controller !== null;
  }

  updateButtons() {
    this.sendEl.disabled = this.streaming || !this.ready;
    this.stopEl.disabled = !this.streaming;
  }

  settings() {
    const number = (id) => {
      const v = $(id).valueAsNumber;
      return Number.isFinite(v) ? v : null;
    };
    const seedText = $("seed").value.trim();
    const seed = seedText === "" ? null : Number(seedText);
    return {
      system_prompt: this.mode === "chat" ? $("system-prompt").value : "",
      temperature: number("temperature"),
      top_p: number("top-p"),
      max_tokens: number("max-tokens"),
      seed: Number.isSafeInteger(seed) ? seed : null,
    };
  }

  // The chat messages of the next request: the system prompt first when there is one.
  chatMessages(settings) {
    const messages = [];
    if (settings.system_prompt.trim() !== "") messages.push({ role: "system", content: settings.system_prompt });
    for (const turn of this.turns) messages.push({ role: turn.role, content: turn.content });
    return messages;
  }

  requestBody(settings) {
    const body = { stream: true, stream_options: { include_usage: true } };
    if (this.model?.name) body.model = this.model.name;
    if (this.mode === "chat") {
      body.messages = this.chatMessages(settings);
    } else {
      // Completion mode continues one running document: every text and continuation so far.
      body.prompt = this.turns.map((turn) => turn.content).join("");
    }
    // Left empty, a setting is not sent and the server's default applies.
    for (const key of ["temperature", "top_p", "max_tokens", "seed"]) {
      if (settings[key] !== null) body[key] = settings[key];
    }
    return body;
  }

  addArticle(role, state) {
    this.messagesEl.querySelector(".messages-empty")?.remove();
    const article = document.createElement("article");
    article.className = "message";
    article.dataset.role = role;
    if (state) article.dataset.state = state;
    const label = document.createElement("div");
    label.className = "message-role";
    label.textContent = role === "user" ? (this.mode === "chat" ? "You" : "Text") : this.mode === "chat" ? "Assistant" : "Continuation";
    const content = document.createElement("div");
    content.className = "message-content";
    article.append(label, content);
    this.messagesEl.appendChild(article);
    return article;
  }

  nearBottom() {
    const el = this.messagesEl;
    return el.scrollHeight - el.scrollTop - el.clientHeight < 48;
  }

  scrollToBottom() {
    this.messagesEl.scrollTop = this.messagesEl.scrollHeight;
  }

  async send() {
    if (this.streaming) return;
    // The model (and with it the mode) is not known yet: the text waits in the box until it is.
    if (!this.ready) {
      this.pendingSend = this.promptEl.value.trim() !== "";
      return;
    }
    const text = this.promptEl.value;
    const empty = text.trim() === "";
    // An empty send in completion mode continues the document; in chat mode it means nothing.
    if (empty && (this.mode === "chat" || this.turns.length === 0)) return;

    const settings = this.settings();
    let userTurn = null;
    let userArticle = null;
    if (!empty || this.mode === "chat") {
      userTurn = { role: "user", content: text };
      this.turns.push(userTurn);
      userArticle = this.addArticle("user");
      renderPlain(userArticle.querySelector(".message-content"), text);
    }
    const body = this.requestBody(settings);
    this.promptEl.value = "";

    const article = this.addArticle("assistant", "streaming");
    const contentEl = article.querySelector(".message-content");
    this.scrollToBottom();

    const conversation = this.conversation;
    const reply = { content: "", reasoning: "", toolCalls: [], usage: null, deltas: 0, finish: null };
    const controller = new AbortController();
    this.controller = controller;
    this.updateButtons();

    const t0 = performance.now();
    let tFirst = null;
    let frame = 0;
    const paint = () => {
      frame = 0;
      const stick = this.nearBottom();
      this.paintReply(article, contentEl, reply);
      if (stick) this.scrollToBottom();
    };
    // One re-render per animation frame however many tokens arrived in between.
    const schedule = () => {
      if (!frame) frame = requestAnimationFrame(paint);
    };

    let state = "done";
    let error = null;
    try {
      const path = this.mode === "chat" ? "/v1/chat/completions" : "/v1/completions";
      for await (const chunk of streamRequest(path, body, controller.signal)) {
        if (chunk.usage) reply.usage = chunk.usage;
        const choice = chunk.choices?.[0];
        if (!choice) continue;
        if (choice.finish_reason) reply.finish = choice.finish_reason;
        let got = false;
        if (this.mode === "chat") {
          const delta = choice.delta ?? {};
          if (typeof delta.content === "string" && delta.content) {
            reply.content += delta.content;
            got = true;
          }
          if (typeof delta.reasoning_content === "string" && delta.reasoning_content) {
            reply.reasoning += delta.reasoning_content;
            got = true;
          }
          if (Array.isArray(delta.tool_calls) && delta.tool_calls.length) {
            mergeToolCalls(reply.toolCalls, delta.tool_calls);
            got = true;
          }
        } else if (typeof choice.text === "string" && choice.text) {
          reply.content += choice.text;
          got = true;
        }
        if (got) {
          reply.deltas++;
          if (tFirst === null) tFirst = performance.now();
          schedule();
        }
      }
    } catch (err) {
      if (err?.name === "AbortError" || controller.signal.aborted) {
        state = "stopped";
      } else {
        state = "error";
        error = err;
      }
    }
    const tEnd = performance.now();
    if (frame) cancelAnimationFrame(frame);
    this.controller = null;
    this.updateButtons();
    if (conversation !== this.conversation) return; // reset while streaming: nothing to record

    paint();
    article.dataset.state = state;
    if (state === "error") {
      const msg = document.createElement("p");
      msg.className = "message-error";
      msg.setAttribute("role", "alert");
      msg.textContent = error?.message || String(error);
      article.appendChild(msg);
    }
    if (reply.content || reply.reasoning || reply.toolCalls.length || state !== "error") {
      article.appendChild(this.stats(t0, tFirst, tEnd, reply, state));
    }
    if (reply.content || state === "done") {
      // The partial text of a stopped reply stays in the conversation: it is what the user saw.
      this.turns.push({ role: "assistant", content: reply.content });
    } else if (userTurn && this.turns[this.turns.length - 1] === userTurn) {
      // Nothing came back: the text leaves the conversation (two user turns in a row would be
      // resent together, and strict templates refuse them) and returns to the box to retry.
      this.turns.pop();
      userArticle.classList.add("unsent");
      userArticle.title = "Not part of the conversation: no reply came back";
      if (this.promptEl.value === "") this.promptEl.value = text;
    }
    if (state !== "stopped" && document.activeElement === document.body) this.promptEl.focus();
    this.scrollToBottom();
  }

  paintReply(article, contentEl, reply) {
    if (this.mode === "chat") renderInto(contentEl, reply.content);
    else renderPlain(contentEl, reply.content);
    if (reply.reasoning) {
      const details = foldable(article, "reasoning", "Reasoning", contentEl);
      details.querySelector(".fold-body").textContent = reply.reasoning;
    }
    if (reply.toolCalls.length) {
      const details = foldable(article, "tool-calls", `Tool calls (${reply.toolCalls.length})`, null);
      details.querySelector("summary").textContent = `Tool calls (${reply.toolCalls.length})`;
      const shown = reply.toolCalls.map((call) => {
        let args = call.function.arguments;
        try {
          args = JSON.parse(args);
        } catch {
          // Arguments still streaming (or not JSON): shown as they are.
        }
        return { id: call.id, type: call.type, function: { name: call.function.name, arguments: args } };
      });
      details.querySelector(".fold-body").textContent = JSON.stringify(shown, null, 2);
    }
  }

  stats(t0, tFirst, tEnd, reply, state) {
    const el = document.createElement("div");
    el.className = "message-stats";
    const tokens = reply.usage?.completion_tokens ?? reply.deltas;
    const parts = [];
    parts.push(tFirst === null ? "TTFT –" : `TTFT ${Math.round(tFirst - t0)} ms`);
    const span = tFirst === null ? 0 : (tEnd - tFirst) / 1000;
    // With one token (or none) there is no interval to measure a rate over.
    parts.push(span > 0 && tokens > 1 ? `${(tokens / span).toFixed(1)} tok/s` : "– tok/s");
    parts.push(`${tokens} token${tokens === 1 ? "" : "s"}`);
    if (state === "stopped") parts.push("stopped");
    else if (reply.finish === "length") parts.push("hit max tokens");
    el.textContent = parts.join(" · ");
    return el;
  }

  stop() {
    if (!this.controller) return;
    this.controller.abort();
  }

  reset() {
    this.stop();
    this.conversation++;
    this.turns = [];
    this.messagesEl.replaceChildren();
    const empty = document.createElement("p");
    empty.className = "messages-empty";
    empty.textContent = this.mode === "chat" ? "Send a message to start." : "Type text for the model to continue.";
    this.messagesEl.appendChild(empty);
    this.promptEl.focus();
  }

  exportConversation() {
    const settings = this.settings();
    const data = {
      model: this.model?.name ?? null,
      max_model_len: this.model?.max_model_len ?? null,
      mode: this.mode,
      exported_at: new Date().toISOString(),
      settings,
      messages:
        this.mode === "chat"
          ? this.chatMessages(settings)
          : this.turns.map((turn) => ({ role: turn.role === "user" ? "text" : "completion", content: turn.content })),
    };
    const blob = new Blob([JSON.stringify(data, null, 2) + "\n"], { type: "application/json" });
    const url = URL.createObjectURL(blob);
    const a = document.createElement("a");
    a.href = url;
    a.download = "conversation.json";
    document.body.appendChild(a);
    a.click();
    a.remove();
    // The download has started by the time the click returns; the URL only needs to outlive it.
    setTimeout(() => URL.revokeObjectURL(url), 1000);
  }
}

// Tool-call deltas arrive in pieces keyed by index: the first carries the id and name, later
// ones append to the arguments string.
function mergeToolCalls(calls, deltas) {
  for (const d of deltas) {
    const index = Number.isInteger(d.index) ? d.index : calls.length;
    const call = (calls[index] ??= { id: null, type: "function", function: { name: "", arguments: "" } });
    if (d.id) call.id = d.id;
    if (d.type) call.type = d.type;
    if (d.function?.name) call.function.name += d.function.name;
    if (typeof d.function?.arguments === "string") call.function.arguments += d.function.arguments;
    else if (d.function?.arguments && typeof d.function.arguments === "object") {
      call.function.arguments = JSON.stringify(d.function.arguments);
    }
  }
}

// A folded <details> in the article, created once and reused by every later paint.
function foldable(article, className, title, before) {
  let details = article.querySelector(`details.${className}`);
  if (!details) {
    details = document.createElement("details");
    details.className = className;
    const summary = document.createElement("summary");
    summary.textContent = title;
    const body = document.createElement("pre");
    body.className = "fold-body";
    details.append(summary, body);
    if (before) article.insertBefore(details, before);
    else article.appendChild(details);
  }
  return details;
}
