// The chat page: the persona from persona.json, replies streamed from an OpenAI-style
// /v1/chat/completions. Dependency-free on purpose, so a static export can reuse it.
"use strict";

const $ = (id) => document.getElementById(id);
const HISTORY = 40; // messages sent with each request; the server keeps what fits the context
let persona = { model: "", name: "", display_name: "", summary: "", first_message: "" };
let history = []; // {role, content} of this chat, sent with each request
let busy = false;

function bubble(role, text) {
  const div = document.createElement("div");
  div.className = `msg ${role}`;
  div.textContent = text;
  $("log").appendChild(div);
  $("log").scrollTop = $("log").scrollHeight;
  return div;
}

function newChat() {
  history = [];
  $("log").replaceChildren();
  // The greeting is shown, not sent: the model learned conversations that open with the user.
  if (persona.first_message) bubble("assistant", persona.first_message);
  $("input").focus();
}

// Server-sent events from a fetch() body: `data: {...}` lines, events apart by a blank line.
async function* events(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.search(/\r?\n\r?\n/)) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end).replace(/^\r?\n\r?\n/, "");
      const data = event.split(/\r?\n/).filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trimStart()).join("\n");
      if (data === "[DONE]") return;
      if (data) yield JSON.parse(data);
    }
  }
}

async function send(text) {
  busy = true;
  $("send").disabled = true;
  history.push({ role: "user", content: text });
  bubble("user", text);
  const out = bubble("assistant", "");
  const headers = { "Content-Type": "application/json" };
  if ($("api-key").value) headers.Authorization = `Bearer ${$("api-key").value}`;
  const body = {
    model: persona.model || undefined,
    messages: history.slice(-HISTORY),
    stream: true,
    temperature: Number($("temperature").value),
    top_k: Number($("top-k").value),
  };
  try {
    const response = await fetch("v1/chat/completions", { method: "POST", headers, body: JSON.stringify(body) });
    if (!response.ok) {
      const error = await response.json().catch(() => ({}));
      throw new Error((error.error && error.error.message) || `HTTP ${response.status}`);
    }
    for await (const chunk of events(response)) {
      const delta = chunk.choices && chunk.choices[0] && chunk.choices[0].delta;
      if (delta && delta.content) out.textContent += delta.content;
      $("log").scrollTop = $("log").scrollHeight;
    }
    history.push({ role: "assistant", content: out.textContent });
    out.dataset.done = "true";
  } catch (e) {
    out.remove();
    history.pop();
    bubble("error", `error: ${e.message}`);
  } finally {
    busy = false;
    $("send").disabled = false;
  }
}

$("form").addEventListener("submit", (e) => {
  e.preventDefault();
  const text = $("input").value.trim();
  if (!text || busy) return;
  $("input").value = "";
  send(text);
});
$("new-chat").addEventListener("click", newChat);
$("temperature").addEventListener("input", () => { $("temperature-value").textContent = $("temperature").value; });

fetch("persona.json")
  .then((r) => r.json())
  .then((p) => {
    persona = p;
    document.title = `${p.display_name} · guppyforge`;
    $("name").textContent = p.display_name;
    $("summary").textContent = p.summary;
    newChat();
  })
  .catch((e) => bubble("error", `error: cannot read persona.json (${e.message})`));
