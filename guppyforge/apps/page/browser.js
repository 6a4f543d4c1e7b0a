// Replies from the model itself, in this tab: transformers.js runs the ONNX model (with its KV
// cache) on onnxruntime-web's WebAssembly backend; the inside view runs a second graph of the
// same weights that also returns the attention weights (onnx/inside*.onnx, loaded on the first
// click on a token). Every file comes from the exported folder (`guppyforge export --to web`):
// runtime/ and character/. ui.js describes the interface.
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

let settings, tokenizer, model;

export async function start(pageSettings) {
  settings = pageSettings;
  tokenizer = await AutoTokenizer.from_pretrained(settings.model);
  model = await AutoModelForCausalLM.from_pretrained(settings.model, {
    dtype: settings.dtype,
    device: "wasm",
  });
  const parameters = settings.parameters.toLocaleString();
  return `ready: ${parameters} parameters, ${settings.dtype} weights, in your browser`;
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

export async function reply(history, { temperature, topK }, onText) {
  const ids = promptIds(history);
  const streamer = new TextStreamer(tokenizer, { skip_prompt: true, callback_function: onText });
  const sequences = await model.generate({
    input_ids: new Tensor("int64", BigInt64Array.from(ids, BigInt), [1, ids.length]),
    attention_mask: new Tensor("int64", new BigInt64Array(ids.length).fill(1n), [1, ids.length]),
    // Learned positions end at the context: as `chat`, stop before a token would need a later one.
    max_new_tokens: Math.min(settings.max_new_tokens, settings.context + 1 - ids.length),
    do_sample: temperature > 0, // temperature 0 is greedy: the same reply every time
    temperature: temperature > 0 ? temperature : 1,
    top_k: topK,
    streamer,
  });
  const newIds = sequences.tolist()[0].slice(ids.length).map(Number);
  // The streamer holds back a word until it is complete, so the end may never have reached
  // onText: the whole reply is decoded once more.
  const text = tokenizer.decode(newIds, { skip_special_tokens: true });
  return { text, tokens: newIds.length, parts: tokenParts(newIds) };
}

// Each token's own text, as the text so far grows by it (a character split across tokens shows
// on the token that completes it); the end token that closed the reply is not part of it.
function tokenParts(ids) {
  const end = tokenizer.convert_tokens_to_ids("<|im_end|>");
  const parts = [];
  let shown = "";
  for (let i = 0; i < ids.length && ids[i] !== end; i++) {
    const text = tokenizer.decode(ids.slice(0, i + 1));
    const grew = !text.endsWith("\ufffd") && text.length > shown.length;
    parts.push({ text: grew ? text.slice(shown.length) : "", key: ids[i] });
    if (grew) shown = text;
  }
  return parts;
}

let insideModel;
let looked = { key: null, run: null }; // the last reply run through the inside graph

// The whole conversation and reply in one pass: logits at every position, and each layer's
// attention weights [layer, batch, head, T, T].
async function runInside(ids) {
  insideModel ??= await AutoModelForCausalLM.from_pretrained(settings.model, {
    dtype: settings.dtype,
    device: "wasm",
    model_file_name: "inside",
  });
  const input = new Tensor("int64", BigInt64Array.from(ids, BigInt), [1, ids.length]);
  const { logits, attentions } = await insideModel({ input_ids: input });
  return { logits: logits.data, attentions: attentions.data, dims: attentions.dims };
}

export async function inside(history, parts, index) {
  const ids = [...promptIds(history), ...parts.map((p) => p.key)];
  const key = ids.join();
  if (looked.key !== key) looked = { key, run: await runInside(ids) };
  const { logits, attentions, dims } = looked.run;
  const [layers, , heads, T] = dims;
  const vocab = logits.length / T;
  const at = ids.length - parts.length + index; // the token's position; chosen at the one before
  const z = Array.from(logits.subarray((at - 1) * vocab, at * vocab));
  const best = Math.max(...z);
  const norm = best + Math.log(z.reduce((sum, v) => sum + Math.exp(v - best), 0));
  const logprobs = z.map((v) => v - norm); // log_softmax: temperature 1
  const order = logprobs.map((_, i) => i).sort((a, b) => logprobs[b] - logprobs[a]).slice(0, 10);
  const name = (id) => tokenizer.decode([id], { skip_special_tokens: false });
  const attention = [];
  for (let l = 0; l < layers; l++) {
    attention.push([]);
    for (let h = 0; h < heads; h++) {
      const row = ((l * heads + h) * T + (at - 1)) * T;
      attention[l].push(Array.from(attentions.subarray(row, row + at)));
    }
  }
  return {
    token: name(ids[at]),
    logprob: logprobs[ids[at]],
    candidates: order.map((id) => ({ token: name(id), logprob: logprobs[id], drawn: id === ids[at] })),
    logprobs,
    context: ids.slice(0, at).map(name),
    attention,
  };
}
