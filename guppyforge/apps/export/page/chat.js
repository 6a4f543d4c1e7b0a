// Chat with a guppyforge character in the browser: transformers.js runs the ONNX model (with its
// KV cache) on onnxruntime-web's WebAssembly backend. Every file comes from this folder.
import {
  AutoModelForCausalLM,
  AutoTokenizer,
  Tensor,
  TextStreamer,
  env,
} from "./runtime/transformers.min.js";

// Local files only: no Hub, no CDN. The browser caches are off too, so a re-export served at
// the same address is never answered with the previous model.
env.allowRemoteModels = false;
env.allowLocalModels = true;
env.localModelPath = "./";
env.useBrowserCache = false;
env.useWasmCache = false;
// The plain WebAssembly build (no WebGPU): half the size of the default one, and what a tiny
// model wants anyway.
env.backends.onnx.wasm.wasmPaths = {
  mjs: new URL("runtime/ort-wasm-simd-threaded.mjs", location.href).href,
  wasm: new URL("runtime/ort-wasm-simd-threaded.wasm", location.href).href,
};

const $ = (id) => document.getElementById(id);
const settings = await (await fetch("guppy.json")).json();
$("name").textContent = settings.name;
$("summary").textContent = settings.summary;
document.title = `${settings.name} · guppyforge`;
$("temperature").value = settings.temperature;
$("top-k").value = settings.top_k;
const showTemperature = () => ($("temperature-value").textContent = $("temperature").value);
$("temperature").addEventListener("input", showTemperature);
showTemperature();

const status = (text, state) => {
  $("status").textContent = text;
  $("status").dataset.state = state;
};

let tokenizer, model;
try {
  tokenizer = await AutoTokenizer.from_pretrained(settings.model);
  model = await AutoModelForCausalLM.from_pretrained(settings.model, {
    dtype: settings.dtype,
    device: "wasm",
  });
} catch (error) {
  status(`could not load the model: ${error.message}`, "error");
  throw error;
}

const encode = (text) => tokenizer.encode(text, { add_special_tokens: false });
const chatml = (messages, add_generation_prompt = false) =>
  tokenizer.apply_chat_template(messages, { tokenize: false, add_generation_prompt });

// The window `guppyforge chat` uses (build_prompt in model/engine.py), so both say the same thing: the
// latest messages that fit in context - max_new_tokens (at least half the context), starting
// at a user message; a user message too long on its own keeps its end, where the question is.
function promptIds(history) {
  const budget = Math.max(settings.context - settings.max_new_tokens, settings.context >> 1);
  const pieces = history.map((m) => encode(chatml([m])));
  const header = encode(chatml([], true));
  const last = history.length - 1;
  let start = last;
  let kept = pieces[last].length + header.length;
  if (kept > budget) {
    const head = encode(`<|im_start|>${history[last].role}\n`);
    const close = encode("<|im_end|>\n");
    const room = Math.max(budget - head.length - close.length - header.length, 1);
    return [...head, ...encode(history[last].content).slice(-room), ...close, ...header];
  }
  while (start > 0 && kept + pieces[start - 1].length <= budget) kept += pieces[--start].length;
  while (start > 0 && start < last && history[start].role !== "user") start++;
  return [...pieces.slice(start).flat(), ...header];
}

function bubble(role, text) {
  const div = document.createElement("div");
  div.className = `msg ${role}`;
  div.textContent = text;
  $("log").append(div);
  div.scrollIntoView({ block: "end" });
  return div;
}

let history = [];

async function answer(text) {
  history.push({ role: "user", content: text });
  bubble("user", text);
  const out = bubble("assistant", "");
  const ids = promptIds(history);
  const temperature = Number($("temperature").value);
  const streamer = new TextStreamer(tokenizer, {
    skip_prompt: true,
    callback_function: (piece) => (out.textContent += piece),
  });
  const start = performance.now();
  const sequences = await model.generate({
    input_ids: new Tensor("int64", BigInt64Array.from(ids, BigInt), [1, ids.length]),
    attention_mask: new Tensor("int64", new BigInt64Array(ids.length).fill(1n), [1, ids.length]),
    // Learned positions end at the context: as `chat`, stop before a token would need a later one.
    max_new_tokens: Math.min(settings.max_new_tokens, settings.context + 1 - ids.length),
    do_sample: temperature > 0, // temperature 0 is greedy: the same reply every time
    temperature: temperature > 0 ? temperature : 1,
    top_k: Number($("top-k").value) || 0,
    streamer,
  });
  const seconds = (performance.now() - start) / 1000;
  const newIds = sequences.tolist()[0].slice(ids.length).map(Number);
  const reply = tokenizer.decode(newIds, { skip_special_tokens: true });
  out.textContent = reply; // the streamer holds back a word until it is complete
  history.push({ role: "assistant", content: reply });
  const tokens = newIds.length;
  status(`${tokens} tokens in ${seconds.toFixed(2)} s (${(tokens / seconds).toFixed(0)} tokens/s)`, "ready");
  Object.assign($("status").dataset, { tokens, seconds });
}

$("form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const text = $("prompt").value.trim();
  if (!text || $("send").disabled) return;
  $("prompt").value = "";
  $("send").disabled = $("new-chat").disabled = true;
  status("thinking…", "busy");
  try {
    await answer(text);
  } catch (error) {
    status(`error: ${error.message}`, "error");
  } finally {
    $("send").disabled = $("new-chat").disabled = false;
    $("prompt").focus();
  }
});

$("new-chat").addEventListener("click", () => {
  history = [];
  $("log").replaceChildren();
  status("a fresh conversation: earlier turns are forgotten", "ready");
});

$("prompt").disabled = $("send").disabled = false;
status(`ready: ${settings.parameters.toLocaleString()} parameters, ${settings.dtype} weights, in your browser`, "ready");
$("prompt").focus();
