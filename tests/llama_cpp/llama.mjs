// llama.cpp's answers for tests/test_gguf.py: how it tokenizes and detokenizes, its next-token
// probabilities at every prompt position, and its greedy replies, for each GGUF file given.
//
//   node tests/llama_cpp/llama.mjs < job.json > answers.json
//
// job.json: {"models": {name: path}, "context": n, "end": id, "max_new_tokens": n,
//            "vocab": n, "texts": [str], "ids": [[id]], "prompts": [[id]]}
// answers:  {"llama_cpp": release, name: {"tokens": [[id]] (of texts), "texts": [str] (of ids),
//            "probabilities": [[[p per vocab id] per position] per prompt], "greedy": [[id]]}}
import {readFileSync} from "node:fs";
import {getLlama, LlamaLogLevel} from "node-llama-cpp";

const job = JSON.parse(readFileSync(0, "utf8"));
// build "never": the prebuilt CPU binary from npm, or an error; never a compile or a download.
const llama = await getLlama({gpu: false, build: "never", logLevel: LlamaLogLevel.error});
const answers = {llama_cpp: llama.llamaCppRelease.release};

const last = (tokens, generateNext) =>
  tokens.map((t, i) => (i === tokens.length - 1 ? [t, {generateNext}] : t));

async function probabilities(sequence, prompt) {
  await sequence.clearHistory();
  const out = await sequence.controlledEvaluate(
    prompt.map((t) => [t, {generateNext: {probabilities: true}}]),
  );
  return out.map(({next}) => {
    const row = new Array(job.vocab).fill(0);
    for (const [token, p] of next.probabilities) {
      if (!(token < job.vocab)) throw new Error(`token ${token} outside the vocabulary`);
      row[token] = p;
    }
    return row;
  });
}

// model.generate's stop rules: the end token, the model's context, max_new_tokens.
async function greedy(sequence, prompt) {
  await sequence.clearHistory();
  const reply = [];
  let pending = prompt;
  for (let i = 0; i < job.max_new_tokens; i++) {
    if (sequence.nextTokenIndex + pending.length > job.context) break;
    const out = await sequence.controlledEvaluate(
      last(pending, {token: true, options: {temperature: 0}}),
    );
    const token = out[pending.length - 1].next.token;
    if (token === job.end) break;
    reply.push(token);
    pending = [token];
  }
  return reply;
}

for (const [name, path] of Object.entries(job.models)) {
  const model = await llama.loadModel({modelPath: path, gpuLayers: 0});
  // llama.cpp may round the context up; decoding still stops at the model's (see greedy).
  const context = await model.createContext({contextSize: job.context, threads: 1});
  const sequence = context.getSequence();
  const answer = {
    tokens: job.texts.map((text) => model.tokenize(text, true)),
    texts: job.ids.map((ids) => model.detokenize(ids, true)),
    probabilities: [],
    greedy: [],
  };
  for (const prompt of job.prompts) {
    answer.probabilities.push(await probabilities(sequence, prompt));
    answer.greedy.push(await greedy(sequence, prompt));
  }
  answers[name] = answer;
  await context.dispose();
  await model.dispose();
}
process.stdout.write(JSON.stringify(answers));
await llama.dispose();
