// The chat page of both `guppyforge serve` and `guppyforge export --to web`: one page, two ways
// to get a reply. page.json, written by whichever of the two made this page, names the
// character, its greeting, the sampling defaults and the backend that answers:
//   server.js   asks /v1/chat/completions on the server that sent this page
//   browser.js  runs the ONNX model in this tab, with transformers.js
// Both export the same two functions, so this file never asks which one it has:
//   start(settings) -> Promise<string>
//       gets ready (the browser loads the model); resolves to the status line's "ready" text.
//   reply(history, {temperature, topK, apiKey}, onText) -> Promise<{text, tokens}>
//       history: this chat's [{role, content}], ending with the user's message. onText gets
//       each piece as it comes; text is the whole reply, tokens its length (when known).
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
    const { text: reply, tokens } = await backend.reply(history, options, (piece) => {
      out.textContent += piece;
      out.scrollIntoView({ block: "end" });
    });
    const seconds = (performance.now() - start) / 1000;
    out.textContent = reply; // the streamed pieces may lack the last word: see browser.js
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

const showTemperature = () => ($("temperature-value").textContent = $("temperature").value);
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
