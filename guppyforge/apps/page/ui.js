// The chat page of both `guppyforge serve` and `guppyforge export --to web`: one page, two ways
// to get a reply. page.json, written by whichever of the two made this page, names the
// character, its greeting, the sampling defaults and the backend that answers:
//   server.js   asks /v1/chat/completions on the server that sent this page
//   browser.js  runs the ONNX model in this tab, with transformers.js
// Both export the same three functions, so this file never asks which one it has:
//   start(settings) -> Promise<string>
//       gets ready (the browser loads the model); resolves to the status line's "ready" text.
//   reply(history, {temperature, topK, apiKey}, onText) -> Promise<{text, tokens, parts}>
//       history: this chat's [{role, content}], ending with the user's message. onText gets
//       each piece as it comes; text is the whole reply, tokens its length (when known), parts
//       its tokens as [{text, key}] (key: what inside() needs to name the token).
//   inside(history, parts, index, {apiKey}) -> Promise<{token, logprob, candidates, logprobs,
//                                                        context, attention}>
//       token `index` of the reply `parts` to `history`, as the model saw it: its likeliest
//       candidates [{token, logprob, drawn}] and every token's log-probability at temperature
//       1 (logprobs), the tokens before it (context) and attention[layer][head][context token].
// A callback rather than an async generator: transformers.js streams through a callback, and
// the server backend is as short either way.

const $ = (id) => document.getElementById(id);
let settings;
let backend;
let history = []; // this chat's messages: each reply is asked with all of them

function status(text, state) {
  $("status").textContent = text;
  $("status").dataset.state = state;
}

function bubble(role, text) {
  const div = document.createElement("div");
  div.className = `msg ${role}`;
  div.textContent = text;
  $("log").append(div);
  div.scrollIntoView({ block: "end" });
  return div;
}

function newChat() {
  history = [];
  $("inside").hidden = true;
  looking = null;
  $("log").replaceChildren();
  // The greeting is shown, not sent: the model learned conversations that open with the user.
  if (settings.first_message) bubble("assistant", settings.first_message);
}

async function send(text) {
  history.push({ role: "user", content: text });
  bubble("user", text);
  const out = bubble("assistant", "");
  const options = {
    temperature: Number($("temperature").value),
    topK: Number($("top-k").value) || 0,
    apiKey: $("api-key").value,
  };
  const start = performance.now();
  try {
    const { text: reply, tokens, parts } = await backend.reply(history, options, (piece) => {
      out.textContent += piece;
      out.scrollIntoView({ block: "end" });
    });
    const seconds = (performance.now() - start) / 1000;
    out.textContent = reply; // the streamed pieces may lack the last word: see browser.js
    clickable(out, history.slice(), parts);
    out.dataset.done = "true";
    history.push({ role: "assistant", content: reply });
    const rate = tokens ? `${tokens} tokens in ` : "";
    const speed = tokens ? ` (${(tokens / seconds).toFixed(0)} tokens/s)` : "";
    status(`${rate}${seconds.toFixed(2)} s${speed}`, "ready");
    Object.assign($("status").dataset, { tokens: tokens ?? "", seconds });
  } catch (error) {
    // The question stays on screen but leaves the conversation: the next one is asked without it.
    out.remove();
    history.pop();
    status(`error: ${error.message}`, "error");
  }
}

// --- The inside view: click a token of a reply to see what the model could have written there,
// how likely each candidate was before and after the page's temperature and top-k, and which
// earlier tokens each attention head looked at when it chose.

const shown = (text) => text.replaceAll(" ", "\u2423").replaceAll("\n", "\u21b5") || "\u2205";
let looking = null; // {data, bubble, index} of the token the view shows

function clickable(bubble, conversation, parts) {
  // Only when the tokens spell the reply exactly: the view must never show other text.
  if (!parts || parts.map((p) => p.text).join("") !== bubble.textContent) return;
  bubble.replaceChildren(
    ...parts.map((part, i) => {
      const span = document.createElement("span");
      span.className = "tok";
      span.dataset.index = i;
      span.textContent = part.text;
      return span;
    }),
  );
  bubble.inside = { conversation, parts };
}

$("log").addEventListener("click", async (event) => {
  const span = event.target.closest(".tok");
  if (!span) return;
  const bubble = span.parentElement;
  const index = Number(span.dataset.index);
  const { conversation, parts } = bubble.inside;
  document.querySelectorAll(".tok.chosen").forEach((s) => s.classList.remove("chosen"));
  span.classList.add("chosen");
  delete $("inside").dataset.ready;
  try {
    const data = await backend.inside(conversation, parts, index, { apiKey: $("api-key").value });
    looking = { data, index };
    $("inside").hidden = false;
    $("inside-token").textContent = shown(data.token);
    fillSelect($("layer"), data.attention.length, (i) => `layer ${i}`);
    fillSelect($("head"), data.attention[0].length, (i) => `head ${i}`, "all heads (mean)");
    drawCandidates();
    drawAttention();
    $("inside").dataset.ready = "true";
    $("inside").scrollIntoView({ block: "nearest" });
  } catch (error) {
    status(`inside: ${error.message}`, "error");
  }
});

function fillSelect(select, n, label, first) {
  const keep = select.value;
  const options = [...(first ? [["mean", first]] : []), ...Array.from({ length: n }, (_, i) => [i, label(i)])];
  select.replaceChildren(
    ...options.map(([value, text]) => Object.assign(document.createElement("option"), { value, text })),
  );
  if ([...select.options].some((o) => o.value === keep)) select.value = keep;
}

// What sampling draws from at the page's settings: temperature divides the log-probabilities
// (the logits, shifted), top-k keeps the k likeliest, softmax makes them sum to 1 again.
function scaled(logprobs, temperature, topK) {
  const best = Math.max(...logprobs);
  if (temperature <= 0) return (lp) => (lp === best ? 1 : 0); // greedy: all on the likeliest
  let kept = logprobs;
  if (topK > 0 && topK < logprobs.length) {
    const cut = [...logprobs].sort((a, b) => b - a)[topK - 1];
    kept = logprobs.filter((lp) => lp >= cut);
  }
  const floor = kept.length < logprobs.length ? Math.min(...kept) : -Infinity;
  const total = kept.reduce((sum, lp) => sum + Math.exp((lp - best) / temperature), 0);
  return (lp) => (lp >= floor ? Math.exp((lp - best) / temperature) / total : 0);
}

function bar(p, kind) {
  const cell = document.createElement("td");
  cell.className = `p ${kind}`;
  cell.innerHTML = `<span class="bar"></span><span class="num"></span>`;
  cell.firstChild.style.width = `${(100 * p).toFixed(1)}%`;
  cell.lastChild.textContent = `${(100 * p).toFixed(1)}%`;
  return cell;
}

function drawCandidates() {
  if (!looking) return;
  const { data } = looking;
  const temperature = Number($("temperature").value);
  const topK = Number($("top-k").value) || 0;
  const atPage = scaled(data.logprobs, temperature, topK);
  $("scaled-head").textContent = `T=${temperature}${topK ? `, top-k ${topK}` : ""}`;
  const rows = [...data.candidates];
  if (!rows.some((c) => c.drawn)) rows.push({ token: data.token, logprob: data.logprob, drawn: true });
  $("candidates").replaceChildren(
    ...rows.map((c) => {
      const row = document.createElement("tr");
      const p1 = Math.exp(c.logprob);
      const pt = atPage(c.logprob);
      Object.assign(row.dataset, { token: c.token, p1, pt });
      if (c.drawn) row.dataset.drawn = "true";
      const name = document.createElement("td");
      name.className = "cand";
      name.textContent = `${shown(c.token)}${c.drawn ? "  \u2190 drawn" : ""}`;
      row.append(name, bar(p1, "t1"), bar(pt, "tpage"));
      return row;
    }),
  );
}

function drawAttention() {
  if (!looking) return;
  const { data } = looking;
  const layer = data.attention[Number($("layer").value) || 0];
  const head = $("head").value;
  const weights =
    head === "mean"
      ? layer[0].map((_, j) => layer.reduce((sum, h) => sum + h[j], 0) / layer.length)
      : layer[Number(head)];
  const most = Math.max(...weights);
  $("strip").replaceChildren(
    ...data.context.map((text, j) => {
      const span = document.createElement("span");
      span.className = "ctx";
      span.textContent = shown(text);
      span.dataset.weight = weights[j];
      span.title = `${(100 * weights[j]).toFixed(1)}% of this head's attention`;
      // Scaled to the strongest, so a spread-out head still shows where it looks.
      span.style.background = `rgba(214, 80, 30, ${(weights[j] / most).toFixed(3)})`;
      return span;
    }),
  );
}

$("layer").addEventListener("change", drawAttention);
$("head").addEventListener("change", drawAttention);
$("top-k").addEventListener("input", drawCandidates);
$("close-inside").addEventListener("click", () => {
  $("inside").hidden = true;
  looking = null;
  document.querySelectorAll(".tok.chosen").forEach((s) => s.classList.remove("chosen"));
});

$("form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const text = $("prompt").value.trim();
  if (!text || $("send").disabled) return;
  $("prompt").value = "";
  // New chat waits too: a reply landing in a cleared log would belong to no conversation.
  $("send").disabled = $("new-chat").disabled = true;
  status("thinking…", "busy");
  await send(text);
  $("send").disabled = $("new-chat").disabled = false;
  $("prompt").focus();
});

$("new-chat").addEventListener("click", () => {
  newChat();
  status("a fresh conversation: earlier turns are forgotten", "ready");
  $("prompt").focus();
});

const showTemperature = () => {
  $("temperature-value").textContent = $("temperature").value;
  drawCandidates(); // the bars at the page's temperature move with the slider
};
$("temperature").addEventListener("input", showTemperature);

try {
  const response = await fetch("page.json");
  if (!response.ok) throw new Error(`page.json: HTTP ${response.status}`);
  settings = await response.json();
  document.title = `${settings.name} · guppyforge`;
  $("name").textContent = settings.name;
  $("summary").textContent = settings.summary;
  $("temperature").value = settings.temperature;
  $("top-k").value = settings.top_k;
  showTemperature();
  $("api-key-label").hidden = settings.backend !== "server"; // the browser asks no one
  newChat();
  // import() by name: serve never loads the browser's runtime, and an export has no server.js.
  backend = await import(`./${settings.backend}.js`);
  const ready = await backend.start(settings);
  $("prompt").disabled = $("send").disabled = false;
  status(ready, "ready");
  $("prompt").focus();
} catch (error) {
  status(`could not start: ${error.message}`, "error");
  throw error;
}
