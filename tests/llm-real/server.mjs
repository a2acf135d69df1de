// A minimal OpenAI-compatible chat-completions server over a local GGUF model (node-llama-cpp's
// prebuilt llama.cpp CPU binaries), for the real-model tests. It answers the way llama.cpp's own
// server does where conform depends on it: `response_format` json_schema / json_object enforced by
// a grammar, `max_tokens` honoured with `finish_reason: "length"`, `usage` counted with the model's
// tokenizer, `POST /tokenize` with the same tokenizer, one completion at a time, and an `exceed_context_size_error` body (numeric `code`) when
// a prompt does not fit the context.
//
// usage: node server.mjs MODEL.gguf PORT LOG.jsonl [CONTEXT_TOKENS]
// Listens on 127.0.0.1 only. Each answered request appends one JSON line to LOG.jsonl with its
// prompt and completion token counts, so a test can check every request against its budget.
//
// LLM_REPLAY=FILE.jsonl keeps every completion in FILE, keyed by a hash of what decides it (the
// messages, the response format, the completion budget, the temperature), and answers a request
// seen before from FILE without running the model. The model is deterministic here (temperature
// 0, fixed seed), so a replayed reply is the one the model would write; an evaluation that
// changes only what conform does with the replies then runs in seconds instead of an hour.
import crypto from "node:crypto";
import http from "node:http";
import fs from "node:fs";
import os from "node:os";
import {getLlama, LlamaChatSession} from "node-llama-cpp";

const [modelPath, portText, logPath, ctxText] = process.argv.slice(2);
if (!modelPath || !portText || !logPath) {
    console.error("usage: node server.mjs MODEL.gguf PORT LOG.jsonl [CONTEXT_TOKENS]");
    process.exit(2);
}
const contextSize = Number(ctxText ?? 8192);
// Bounds the body a client may send (a 736-field prompt is far below this).
const MAX_BODY = 16 * 1024 * 1024;

// llama.cpp's worker threads spin while they wait: more threads than cores makes each token take
// seconds instead of milliseconds on a small machine. LLM_THREADS overrides the core count.
const threads = Number(process.env.LLM_THREADS) || Math.max(1, os.availableParallelism());
const llama = await getLlama({gpu: false, build: "never", progressLogs: false, logLevel: "error", maxThreads: threads});
const model = await llama.loadModel({modelPath});
const context = await model.createContext({contextSize, sequences: 1, threads});
const sequence = context.getSequence();
const session = new LlamaChatSession({contextSequence: sequence, autoDisposeSequence: false});
const jsonGrammar = await llama.getGrammarFor("json");

const replayPath = process.env.LLM_REPLAY;
const replay = new Map();
if (replayPath && fs.existsSync(replayPath)) {
    for (const line of fs.readFileSync(replayPath, "utf8").split("\n")) {
        if (!line.trim()) continue;
        const entry = JSON.parse(line);
        replay.set(entry.key, entry);
    }
}

function replayKey(body) {
    const decides = {
        messages: body.messages ?? [],
        response_format: body.response_format ?? null,
        max_tokens: body.max_tokens ?? body.max_completion_tokens ?? null,
        temperature: body.temperature ?? null,
    };
    return crypto.createHash("sha256").update(JSON.stringify(decides)).digest("hex");
}

// The chat history node-llama-cpp wants, from OpenAI messages; the last user message is the
// prompt and everything before it is history.
function history(messages) {
    const items = [];
    for (const m of messages) {
        const text = typeof m.content === "string" ? m.content
            : (m.content ?? []).map((p) => p.text ?? "").join("");
        if (m.role === "system") items.push({type: "system", text});
        else if (m.role === "assistant") items.push({type: "model", response: [text]});
        else items.push({type: "user", text});
    }
    return items;
}

function promptTokens(items) {
    const state = session.chatWrapper.generateContextState({chatHistory: [...items, {type: "model", response: []}]});
    return state.contextText.tokenize(model.tokenizer).length;
}

function reply(res, status, body) {
    const text = JSON.stringify(body);
    res.writeHead(status, {"content-type": "application/json", "content-length": Buffer.byteLength(text)});
    res.end(text);
}

async function complete(body) {
    const items = history(body.messages ?? []);
    const last = items.pop();
    if (!last || last.type !== "user") {
        return [400, {error: {code: 400, message: "the last message must be from the user", type: "invalid_request_error"}}];
    }
    const maxTokens = Math.max(1, Number(body.max_tokens ?? body.max_completion_tokens ?? 512));
    const nPrompt = promptTokens([...items, last]);
    if (nPrompt + maxTokens > contextSize) {
        return [400, {error: {
            code: 400,
            message: `the request exceeds the available context size (${nPrompt} prompt + ${maxTokens} completion tokens > ${contextSize}), try increasing it`,
            type: "exceed_context_size_error",
            n_prompt_tokens: nPrompt,
            n_ctx: contextSize,
        }}];
    }
    let grammar;
    const format = body.response_format;
    if (format?.type === "json_schema") {
        grammar = await llama.createGrammarForJsonSchema(format.json_schema.schema);
    } else if (format?.type === "json_object") {
        grammar = jsonGrammar;
    }
    const started = Date.now();
    const key = replayPath ? replayKey(body) : null;
    let responseText, finish;
    const seen = key && replay.get(key);
    if (seen) {
        ({reply: responseText, finish_reason: finish} = seen);
    } else {
        session.setChatHistory(items);
        const out = await session.promptWithMeta(last.text, {
            grammar,
            maxTokens,
            temperature: Number(body.temperature ?? 0),
            seed: 1,
        });
        responseText = out.responseText;
        finish = out.stopReason === "maxTokens" ? "length" : "stop";
        if (key) {
            const entry = {key, reply: responseText, finish_reason: finish, ms: Date.now() - started};
            replay.set(key, entry);
            fs.appendFileSync(replayPath, JSON.stringify(entry) + "\n");
        }
    }
    const nCompletion = model.tokenize(responseText).length;
    fs.appendFileSync(logPath, JSON.stringify({
        prompt_tokens: nPrompt,
        completion_tokens: nCompletion,
        max_tokens: maxTokens,
        finish_reason: finish,
        format: format?.type ?? null,
        ms: Date.now() - started,
        // Answered from LLM_REPLAY: `ms` is then not the model's time (the original run's is
        // in the replay file).
        replayed: Boolean(seen),
        // What the model wrote: the evidence for why a reply runs long or goes wrong.
        reply: responseText,
    }) + "\n");
    return [200, {
        id: `chatcmpl-${started}`,
        object: "chat.completion",
        created: Math.floor(started / 1000),
        model: body.model ?? "local",
        choices: [{index: 0, message: {role: "assistant", content: responseText}, finish_reason: finish}],
        usage: {prompt_tokens: nPrompt, completion_tokens: nCompletion, total_tokens: nPrompt + nCompletion},
    }];
}

// One request at a time, like a llama.cpp server with one slot: the rest wait in order.
let queue = Promise.resolve();

const server = http.createServer((req, res) => {
    if (req.method === "GET" && req.url.startsWith("/v1/models")) {
        return reply(res, 200, {object: "list", data: [{id: "local", object: "model"}]});
    }
    const tokenize = req.method === "POST" && req.url.startsWith("/tokenize");
    if (!tokenize && (req.method !== "POST" || !req.url.startsWith("/v1/chat/completions"))) {
        return reply(res, 404, {error: {code: 404, message: "not found", type: "not_found_error"}});
    }
    const chunks = [];
    let size = 0;
    req.on("data", (c) => {
        size += c.length;
        if (size > MAX_BODY) req.destroy();
        else chunks.push(c);
    });
    req.on("end", () => {
        // llama.cpp's `POST /tokenize`: the model's tokens of `content` (no special tokens),
        // answered at once, beside a completion in progress, as llama.cpp's server does.
        if (tokenize) {
            try {
                const body = JSON.parse(Buffer.concat(chunks).toString("utf8"));
                return reply(res, 200, {tokens: Array.from(model.tokenize(String(body.content ?? "")))});
            } catch (e) {
                return reply(res, 400, {error: {code: 400, message: String(e?.message ?? e), type: "invalid_request_error"}});
            }
        }
        queue = queue.then(async () => {
            if (res.destroyed) return;
            try {
                const [status, body] = await complete(JSON.parse(Buffer.concat(chunks).toString("utf8")));
                reply(res, status, body);
            } catch (e) {
                reply(res, 500, {error: {code: 500, message: String(e?.message ?? e), type: "server_error"}});
            }
        });
    });
});
server.listen(Number(portText), "127.0.0.1", () => console.log(`listening on 127.0.0.1:${portText}`));
