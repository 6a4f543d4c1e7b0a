// Replies from the server that sent this page (`guppyforge serve`): its OpenAI-style
// /v1/chat/completions, streamed as server-sent events, and its /inside for the inside view.
// ui.js describes the interface.

// Messages sent with each request: the server keeps the latest that fit the model's context,
// so this only bounds the request's size.
const HISTORY = 40;
let model = "";

export async function start(settings) {
  model = settings.model;
  return `ready: ${settings.name}, answered by this server`;
}

// Server-sent events from a fetch() body: `data: {...}` lines, events apart by a blank line.
// fetch, not EventSource: EventSource can neither POST nor send an Authorization header.
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

export async function reply(history, { temperature, topK, apiKey }, onText) {
  const headers = { "Content-Type": "application/json" };
  if (apiKey) headers.Authorization = `Bearer ${apiKey}`;
  const body = {
    model: model || undefined,
    messages: history.slice(-HISTORY),
    stream: true,
    stream_options: { include_usage: true }, // a last event that counts the reply's tokens
    temperature,
    top_k: topK,
    logprobs: true, // each token's bytes, for the inside view (its numbers come from /inside)
  };
  const response = await fetch("v1/chat/completions", { method: "POST", headers, body: JSON.stringify(body) });
  if (!response.ok) {
    const error = await response.json().catch(() => ({}));
    throw new Error((error.error && error.error.message) || `HTTP ${response.status}`);
  }
  let text = "";
  let tokens;
  const bytes = [];
  for await (const chunk of events(response)) {
    const piece = chunk.choices?.[0]?.delta?.content;
    if (piece) {
      text += piece;
      onText(piece);
    }
    for (const t of chunk.choices?.[0]?.logprobs?.content ?? []) bytes.push(t.bytes);
    if (chunk.usage) tokens = chunk.usage.completion_tokens;
  }
  // Each token's own text: a character split across tokens shows on the token that ends it.
  const decoder = new TextDecoder();
  const parts = bytes.map((b) => ({ text: decoder.decode(new Uint8Array(b), { stream: true }), key: b }));
  return { text, tokens, parts };
}

// One token of a finished reply, looked at by the server's engine (POST /inside).
export async function inside(history, parts, index, { apiKey }) {
  const headers = { "Content-Type": "application/json" };
  if (apiKey) headers.Authorization = `Bearer ${apiKey}`;
  const body = { messages: history.slice(-HISTORY), reply: parts.map((p) => p.key), index };
  const response = await fetch("inside", { method: "POST", headers, body: JSON.stringify(body) });
  const data = await response.json();
  if (!response.ok) throw new Error(data.error?.message || `HTTP ${response.status}`);
  const drawn = parts[index].key.join();
  data.candidates.forEach((c) => (c.drawn = c.bytes.join() === drawn));
  return data;
}
