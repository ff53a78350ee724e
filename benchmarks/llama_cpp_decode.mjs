// Greedy decode with llama.cpp through node-llama-cpp's prebuilt CPU binary, from token ids.
//
// Used by benchmarks/_llama_cpp_peer.py (see there); not a public tool. One argument, a JSON object:
//   {"node_modules": DIR, "model": GGUF, "prompt": [ids], "new_tokens": N, "threads": T, "repeats": R}
// Prints one JSON object: the architecture in the file and the one llama.cpp loaded, its CPU features, the
// tokens of the last run and the wall time of each token of every run (ms since the evaluation started).
// With "sessions": [[ids], ...] (and "staggered": true or false) instead of "prompt"/"repeats": one context
// with a sequence per session, all evaluated at once (node-llama-cpp batches the sequences' steps into one
// llama.cpp batch), each started at once or when the one before has its first token; "sessions" in the
// output gives each one's send time and token times (ms since the first send) and its tokens.
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
const sessions = args.sessions ?? null;
const longest = sessions ? Math.max(...sessions.map((ids) => ids.length)) : args.prompt.length;
const context = await model.createContext({
  contextSize: sessions ? sessions.length * (longest + args.new_tokens + 64) : 512,
  batchSize: 512,
  sequences: sessions ? sessions.length : 1,
  threads: { ideal: args.threads, min: args.threads },
});

const runs = [];
let tokens = [];
const sessionRuns = [];
if (sessions) {
  const start = performance.now();
  const firsts = sessions.map(() => {
    let resolve;
    const promise = new Promise((r) => (resolve = r));
    return { promise, resolve };
  });
  const run = async (ids, i) => {
    if (args.staggered && i > 0) await firsts[i - 1].promise;
    const sequence = context.getSequence();
    const out = { sent_ms: performance.now() - start, times_ms: [], tokens: [] };
    for await (const token of sequence.evaluate(ids, { temperature: 0 })) {
      out.times_ms.push(performance.now() - start);
      out.tokens.push(token);
      firsts[i].resolve();
      if (out.tokens.length >= args.new_tokens) break;
    }
    firsts[i].resolve();
    sequence.dispose();
    return out;
  };
  sessionRuns.push(...(await Promise.all(sessions.map(run))));
} else {
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
  sessions: sessionRuns,
};
await context.dispose();
await model.dispose();
await llama.dispose();
process.stdout.write(JSON.stringify(out) + "\n");
