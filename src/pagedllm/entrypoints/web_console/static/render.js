// A small markdown-ish renderer for model output. It builds DOM nodes with createElement and
// textContent only: model text is never parsed as HTML, so markup in it shows as literal text.

// Splits text into blocks; each keeps its source so a re-render can keep unchanged blocks.
function parseBlocks(text) {
  const lines = text.replace(/\r\n?/g, "\n").split("\n");
  const blocks = [];
  let i = 0;
  const isFence = (line) => /^ {0,3}(`{3,}|~{3,})/.exec(line);
  const isListItem = (line) => /^ {0,3}([-*+]|\d{1,9}[.)])\s+/.exec(line);
  const isHeading = (line) => /^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$/.exec(line);
  const isRule = (line) => /^ {0,3}([-*_])(\s*\1){2,}\s*$/.test(line);
  const isTableSep = (line) => /^\s*\|?\s*:?-{2,}:?\s*(\|\s*:?-{2,}:?\s*)*\|?\s*$/.test(line);
  const startsBlock = (line, next) =>
    isFence(line) || isHeading(line) || isRule(line) || /^ {0,3}>/.test(line) ||
    isListItem(line) || (line.includes("|") && next !== undefined && isTableSep(next));

  while (i < lines.length) {
    const line = lines[i];
    const start = i;
    let m;
    if (line.trim() === "") {
      i++;
      continue;
    }
    if ((m = isFence(line))) {
      const fence = m[1];
      const lang = line.slice(line.indexOf(fence) + fence.length).trim().split(/\s+/)[0] || "";
      const body = [];
      i++;
      // An unclosed fence (a reply still streaming) runs to the end of the text.
      while (i < lines.length && !new RegExp(`^ {0,3}${fence[0]}{${fence.length},}\\s*$`).test(lines[i])) {
        body.push(lines[i]);
        i++;
      }
      const closed = i < lines.length;
      if (closed) i++;
      blocks.push({ type: "code", lang, text: body.join("\n"), closed, src: lines.slice(start, i).join("\n") });
      continue;
    }
    if ((m = isHeading(line))) {
      blocks.push({ type: "heading", level: m[1].length, text: m[2], src: line });
      i++;
      continue;
    }
    if (isRule(line)) {
      blocks.push({ type: "rule", src: line });
      i++;
      continue;
    }
    if (/^ {0,3}>/.test(line)) {
      const body = [];
      while (i < lines.length && /^ {0,3}>/.test(lines[i])) {
        body.push(lines[i].replace(/^ {0,3}> ?/, ""));
        i++;
      }
      blocks.push({ type: "quote", text: body.join("\n"), src: lines.slice(start, i).join("\n") });
      continue;
    }
    if ((m = isListItem(line))) {
      const ordered = /\d/.test(m[1]);
      const items = [];
      while (i < lines.length) {
        const item = isListItem(lines[i]);
        if (item && /\d/.test(item[1]) === ordered) {
          items.push(lines[i].slice(item[0].length));
        } else if (items.length && lines[i].trim() !== "" && /^\s+/.test(lines[i]) && !isFence(lines[i])) {
          // An indented line continues the item above it (nested lists are flattened into it).
          items[items.length - 1] += "\n" + lines[i].trim();
        } else {
          break;
        }
        i++;
      }
      const first = ordered ? parseInt(m[1], 10) : 1;
      blocks.push({ type: "list", ordered, first, items, src: lines.slice(start, i).join("\n") });
      continue;
    }
    if (line.includes("|") && i + 1 < lines.length && isTableSep(lines[i + 1])) {
      const rows = [splitRow(line)];
      i += 2;
      while (i < lines.length && lines[i].includes("|") && lines[i].trim() !== "") {
        rows.push(splitRow(lines[i]));
        i++;
      }
      blocks.push({ type: "table", rows, src: lines.slice(start, i).join("\n") });
      continue;
    }
    const body = [line];
    i++;
    while (i < lines.length && lines[i].trim() !== "" && !startsBlock(lines[i], lines[i + 1])) {
      body.push(lines[i]);
      i++;
    }
    blocks.push({ type: "paragraph", text: body.join("\n"), src: body.join("\n") });
  }
  return blocks;
}

function splitRow(line) {
  let s = line.trim();
  if (s.startsWith("|")) s = s.slice(1);
  if (s.endsWith("|") && !s.endsWith("\\|")) s = s.slice(0, -1);
  return s.split(/(?<!\\)\|/).map((cell) => cell.trim().replace(/\\\|/g, "|"));
}

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

// Emphasis and links inside a span of text that holds no code spans.
const INLINE = [
  { re: /\*\*(?=\S)([\s\S]*?\S)\*\*/, tag: "strong" },
  { re: /__(?=\S)([\s\S]*?\S)__(?!\w)/, tag: "strong" },
  { re: /\*(?=[^\s*])([^*]*?[^\s*])\*/, tag: "em" },
  { re: /(?<![\w\\])_(?=[^\s_])([^_]*?[^\s_])_(?!\w)/, tag: "em" },
  { re: /~~(?=\S)([\s\S]*?\S)~~/, tag: "del" },
  { re: /\[([^\]\n]+)\]\((https?:\/\/[^\s()]+)\)/, tag: "a" },
];

function appendText(parent, text) {
  // Single newlines inside a paragraph are kept: chat replies use them as line breaks.
  const parts = text.split("\n");
  parts.forEach((part, index) => {
    if (index > 0) parent.appendChild(document.createElement("br"));
    if (part) parent.appendChild(document.createTextNode(part));
  });
}

function renderEmphasis(parent, text) {
  while (text) {
    let best = null;
    for (const rule of INLINE) {
      const m = rule.re.exec(text);
      if (m && (best === null || m.index < best.m.index)) best = { rule, m };
    }
    if (!best) {
      appendText(parent, text);
      return;
    }
    appendText(parent, text.slice(0, best.m.index));
    const node = el(best.rule.tag);
    if (best.rule.tag === "a") {
      node.href = best.m[2];
      node.rel = "noopener noreferrer nofollow";
      node.target = "_blank";
    }
    renderEmphasis(node, best.m[1]);
    parent.appendChild(node);
    text = text.slice(best.m.index + best.m[0].length);
  }
}

// Code spans first: nothing inside backticks is emphasis.
export function renderInline(parent, text) {
  let pos = 0;
  const open = /`+/g;
  let m;
  while ((m = open.exec(text)) !== null) {
    const ticks = m[0];
    const close = text.indexOf(ticks, m.index + ticks.length);
    // A run with no closing run of the same length is literal text.
    if (close === -1) continue;
    // The closing run must be exactly as long, not part of a longer run.
    if (text[close + ticks.length] === "`") {
      open.lastIndex = close + ticks.length + 1;
      continue;
    }
    renderEmphasis(parent, text.slice(pos, m.index));
    let code = text.slice(m.index + ticks.length, close).replace(/\n/g, " ");
    if (/^ .* $/.test(code)) code = code.slice(1, -1);
    parent.appendChild(el("code", "inline-code", code));
    pos = close + ticks.length;
    open.lastIndex = pos;
  }
  renderEmphasis(parent, text.slice(pos));
}

function copyButton(getText) {
  const button = el("button", "copy-button", "Copy");
  button.type = "button";
  button.setAttribute("aria-label", "Copy code");
  button.addEventListener("click", async () => {
    const text = getText();
    if (navigator.clipboard && window.isSecureContext) {
      try {
        await navigator.clipboard.writeText(text);
        flash(button, "Copied");
        return;
      } catch {
        // Permission refused: fall through to selecting the code for a manual copy.
      }
    }
    const code = button.closest(".code-block")?.querySelector("code");
    if (code) {
      const range = document.createRange();
      range.selectNodeContents(code);
      const selection = window.getSelection();
      selection.removeAllRanges();
      selection.addRange(range);
      flash(button, "Selected");
    }
  });
  return button;
}

function flash(button, label) {
  button.textContent = label;
  clearTimeout(button._flashTimer);
  button._flashTimer = setTimeout(() => {
    button.textContent = "Copy";
  }, 1200);
}

function renderBlock(block) {
  switch (block.type) {
    case "code": {
      const wrap = el("div", "code-block");
      const head = el("div", "code-head");
      head.appendChild(el("span", "code-lang", block.lang || "text"));
      head.appendChild(copyButton(() => block.text));
      const pre = el("pre");
      const code = el("code", null, block.text);
      code.dataset.lang = block.lang;
      pre.appendChild(code);
      // Scrollable regions must be reachable by keyboard.
      pre.tabIndex = 0;
      wrap.append(head, pre);
      return wrap;
    }
    case "heading": {
      // Model headings sit inside a message: shift them down so they never outrank the page's.
      const node = el(`h${Math.min(block.level + 2, 6)}`, "md-heading");
      renderInline(node, block.text);
      return node;
    }
    case "rule":
      return el("hr");
    case "quote": {
      const node = el("blockquote");
      renderInto(node, block.text);
      return node;
    }
    case "list": {
      const node = el(block.ordered ? "ol" : "ul");
      if (block.ordered && block.first !== 1) node.start = block.first;
      for (const item of block.items) {
        const li = el("li");
        renderInline(li, item);
        node.appendChild(li);
      }
      return node;
    }
    case "table": {
      const wrap = el("div", "md-table-wrap");
      const table = el("table", "md-table");
      const [head, ...rows] = block.rows;
      const thead = el("thead");
      const tr = el("tr");
      for (const cell of head) {
        const th = el("th");
        renderInline(th, cell);
        tr.appendChild(th);
      }
      thead.appendChild(tr);
      const tbody = el("tbody");
      for (const row of rows) {
        const r = el("tr");
        for (let c = 0; c < head.length; c++) {
          const td = el("td");
          renderInline(td, row[c] ?? "");
          r.appendChild(td);
        }
        tbody.appendChild(r);
      }
      table.append(thead, tbody);
      wrap.appendChild(table);
      return wrap;
    }
    default: {
      const node = el("p");
      renderInline(node, block.text);
      return node;
    }
  }
}

// Renders `text` into `container`, keeping the leading children whose source did not change so
// that a streaming reply only rebuilds its last block (and finished code blocks keep their state).
export function renderInto(container, text) {
  const blocks = parseBlocks(text);
  const children = Array.from(container.children);
  let keep = 0;
  while (keep < blocks.length && keep < children.length && children[keep]._mdSource === blocks[keep].src) {
    keep++;
  }
  for (let i = children.length - 1; i >= keep; i--) children[i].remove();
  for (let i = keep; i < blocks.length; i++) {
    const node = renderBlock(blocks[i]);
    node._mdSource = blocks[i].src;
    container.appendChild(node);
  }
}

// Plain text kept as typed (user messages, completion documents).
export function renderPlain(container, text) {
  container.textContent = text;
}
