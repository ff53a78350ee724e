// Greedy decode with llama.cpp through node-llama-cpp's prebuilt CPU binary, from token ids.
//
// Used by benchmarks/_llama_cpp_peer.py (see there); not a public tool. One argument, a JSON object:
//   {"node_modules": DIR, "model": GGUF, "prompt": [ids], "new_tokens": N, "threads": T, "repeats": R}
// Prints one JSON object: the architecture in the file and the one llama.cpp loaded, its CPU features, the
// tokens of the last run and the wall time of each token of every run (ms since the evaluation started).
import { join } from "node:path";
import { performance } from "node:perf_hooks";
import { pathToFileURL } from "node:url";

const args = JSON.parse(process.argv[2]);
const entry = pathToFileURL(join(args.node_modules, "node-llama-cpp", "dist", "index.js")).href;
const { getLlama, LlamaLogLevel } = await import(entry);

const logs = [];
const llama = await getLlama({
  gpu: false,
  build: "never",
  maxThreads: args.threads,
  logLevel: LlamaLogLevel.info,
  logger: (_level, message) => logs.push(String(message).trimEnd()),
});
const model = await llama.loadModel({ modelPath: args.model, gpuLayers: 0 });
const context = await model.createContext({
  contextSize: 512,
  batchSize: 512,
  sequences: 1,
  threads: { ideal: args.threads, min: args.threads },
});

const runs = [];
let tokens = [];
for (let r = 0; r < args.repeats; r++) {
  const sequence = context.getSequence();
  tokens = [];
  const times = [];
  const start = performance.now();
  for await (const token of sequence.evaluate(args.prompt, { temperature: 0 })) {
    times.push(performance.now() - start);
    tokens.push(token);
    if (tokens.length >= args.new_tokens) break;
  }
  runs.push(times);
  sequence.dispose();
}

// PEER_DEBUG_LOGS=1: llama.cpp's log on stderr
if (process.env.PEER_DEBUG_LOGS) process.stderr.write(logs.join("\n") + "\n");
const find = (pattern) => logs.map((line) => line.match(pattern)).find(Boolean)?.[1] ?? null;
const out = {
  architecture: model.fileInfo.metadata.general.architecture,
  loaded_arch: find(/print_info: arch\s*=\s*(\S+)/),
  file_type: find(/print_info: file type\s*=\s*(.+)$/),
  llama_cpp_release: llama.llamaCppRelease.release,
  build_type: llama.buildType,
  system_info: llama.systemInfo,
  threads: context.currentThreads,
  tokens,
  runs_ms: runs,
};
await context.dispose();
await model.dispose();
await llama.dispose();
process.stdout.write(JSON.stringify(out) + "\n");
