// The official `openai` npm package against a real aicloud (issue 4 §6): a server, an agent with
// declared GPUs, the tiny model made by `aicloud models create-tiny` imported into the catalog, a
// chat deployment and an embeddings deployment (the real llama-server built by `make engine`),
// then every call made with `new OpenAI({ baseURL, apiKey })` as a user's program would.
// Run: AICLOUD_BIN=build/aicloud node --test tests/node/openai.test.mjs (CTest: openai_node).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn, execFileSync } from "node:child_process";
import { mkdtempSync, readdirSync, readFileSync, rmSync, chmodSync, openSync, existsSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import OpenAI from "openai";

const BIN = resolve(process.env.AICLOUD_BIN || "build/aicloud");
const CHAT_MODEL = "tiny-llama";
const EMBED_MODEL = "tiny-embed";

let work, server, agent, url, operatorKey, a, b, chatDeployment;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// JSON over fetch with a bearer key (the management API, not the SDK's business).
async function api(method, path, key, body, { org, expect } = {}) {
  const headers = { Authorization: `Bearer ${key}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (org) headers["OpenAI-Organization"] = org;
  const r = await fetch(url + path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await r.text();
  if (expect !== undefined && r.status !== expect) {
    throw new Error(`${method} ${path}: expected ${expect}, got ${r.status}: ${text}`);
  }
  return text ? JSON.parse(text) : {};
}

async function tenant(name) {
  const org = await api("POST", "/admin/v1/organizations", operatorKey,
    { name, owner_email: `${name}-owner@example.com`, owner_password: "correct horse battery" }, { expect: 201 });
  const adminKey = (await api("POST", "/v1/organization/admin_api_keys", operatorKey, { name: "node test admin" },
    { org: org.id, expect: 201 })).value;
  const proj = await api("POST", "/v1/organization/projects", adminKey, { name: `${name} project` }, { expect: 201 });
  const projectKey = (await api("POST", `/v1/organization/projects/${proj.id}/api_keys`, adminKey,
    { name: "node test key" }, { expect: 201 })).value;
  return { orgId: org.id, adminKey, projectId: proj.id, projectKey };
}

function logTail(file) {
  try {
    return readFileSync(file, "utf8").slice(-4000);
  } catch {
    return "(no log)";
  }
}

async function waitReady(key, id) {
  const deadline = Date.now() + 120_000;  // the agent installs the engine and fetches the model
  let d;
  while (Date.now() < deadline) {
    d = await api("GET", `/v1/deployments/${id}`, key);
    if (d.status?.ready_replicas === 1) return;
    await sleep(100);
  }
  throw new Error(`deployment ${id} did not become ready: ${JSON.stringify(d)}\nagent log:\n${logTail(join(work, "agent.log"))}`);
}

const client = (key) => new OpenAI({ baseURL: url + "/v1", apiKey: key, maxRetries: 0, timeout: 60_000 });

before(async () => {
  assert.ok(existsSync(BIN), `no aicloud binary at ${BIN} (set AICLOUD_BIN)`);
  work = mkdtempSync(join(tmpdir(), "aicloud-node-"));
  chmodSync(work, 0o711);  // the agent runs workloads as nobody
  const data = join(work, "data");
  const serverLog = openSync(join(work, "server.log"), "a");
  server = spawn(BIN, ["server", "--listen", "127.0.0.1:0", "--data-dir", data, "--log-level", "warn",
    "--heartbeat-interval-ms", "500"], { stdio: ["ignore", serverLog, serverLog] });
  const deadline = Date.now() + 15_000;
  while (!url) {
    if (server.exitCode !== null) throw new Error(`aicloud server exited: ${logTail(join(work, "server.log"))}`);
    if (Date.now() > deadline) throw new Error(`aicloud server did not start: ${logTail(join(work, "server.log"))}`);
    try {
      const u = readFileSync(join(data, "server.url"), "utf8").trim();
      if (u && (await fetch(u + "/healthz")).status === 200) {
        url = u;
        operatorKey = readFileSync(join(data, "admin.key"), "utf8").trim();
      }
    } catch {}
    if (!url) await sleep(20);
  }

  await api("POST", "/admin/v1/regions", operatorKey, { id: "eu-west-1", jurisdiction: "EU" }, { expect: 201 });
  await api("POST", "/admin/v1/zones", operatorKey, { id: "eu-west-1a", region: "eu-west-1" }, { expect: 201 });
  const token = (await api("POST", "/admin/v1/join_tokens", operatorKey, { zone: "eu-west-1a", max_uses: 0 },
    { expect: 201 })).token;
  const agentLog = openSync(join(work, "agent.log"), "a");
  agent = spawn(BIN, ["agent", "--server", url, "--work-dir", join(work, "node-a"), "--join-token", token,
    "--name", "node-a", "--gpus", "2xH100-80GB", "--address", "127.0.0.1", "--log-level", "warn"],
  { stdio: ["ignore", agentLog, agentLog] });

  // Two tiny models in the catalog: one served for chat, one served with embeddings on.
  for (const name of [CHAT_MODEL, EMBED_MODEL]) {
    const file = join(work, `${name}.gguf`);
    execFileSync(BIN, ["models", "create-tiny", "--name", name, "--out", file], { stdio: "ignore" });
    await api("POST", "/v1/models/import", operatorKey, { name, path: file }, { expect: 201 });
  }
  a = await tenant("acme");
  b = await tenant("beta");
  const resources = { gpu_type: "H100-80GB", gpus: 1 };
  chatDeployment = (await api("POST", "/v1/deployments", a.projectKey, {
    model: CHAT_MODEL, region: "eu-west-1", resources, engine_args: { context_size: 512, parallel: 2 },
  }, { expect: 201 })).id;
  const embed = (await api("POST", "/v1/deployments", a.projectKey, {
    model: EMBED_MODEL, region: "eu-west-1", resources, engine_args: { context_size: 512, parallel: 1, embeddings: true },
  }, { expect: 201 })).id;
  await waitReady(a.projectKey, chatDeployment);
  await waitReady(a.projectKey, embed);
});

// The processes this test's cloud left behind: workloads outlive their agent by design (an agent
// restart must not stop replicas), so they are found by the work dir in their command lines.
function leftovers() {
  const pids = [];
  for (const d of readdirSync("/proc")) {
    if (!/^\d+$/.test(d) || Number(d) === process.pid) continue;
    try {
      if (readFileSync(`/proc/${d}/cmdline`, "utf8").includes(work)) pids.push(Number(d));
    } catch {}
  }
  return pids;
}

function signalAll(pids, sig) {
  for (const pid of pids) {
    try {
      process.kill(pid, sig);
    } catch {}
  }
}

after(async () => {
  for (const p of [agent, server]) {
    if (!p || p.exitCode !== null || p.signalCode !== null) continue;
    const gone = new Promise((r) => p.once("exit", r));
    p.kill("SIGTERM");
    const t = setTimeout(() => p.kill("SIGKILL"), 10_000);
    await gone;
    clearTimeout(t);
  }
  if (!work) return;
  signalAll(leftovers(), "SIGTERM");
  for (let i = 0; i < 50 && leftovers().length; ++i) await sleep(100);
  signalAll(leftovers(), "SIGKILL");
  rmSync(work, { recursive: true, force: true });
});

test("models.list includes the tiny model", async () => {
  const ids = [];
  for await (const m of client(a.projectKey).models.list()) ids.push(m.id);
  assert.ok(ids.includes(CHAT_MODEL), `models: ${ids.join(", ")}`);
  const one = await client(a.projectKey).models.retrieve(CHAT_MODEL);
  assert.equal(one.id, CHAT_MODEL);
});

test("chat.completions.create, whole, carries usage", async () => {
  const r = await client(a.projectKey).chat.completions.create({
    model: CHAT_MODEL, messages: [{ role: "user", content: "Hello there" }], max_tokens: 8,
  });
  assert.equal(r.object, "chat.completion");
  assert.equal(r.model, CHAT_MODEL);
  assert.equal(r.choices.length, 1);
  assert.equal(typeof r.choices[0].message.content, "string");
  assert.equal(r.choices[0].message.role, "assistant");
  assert.ok(r.usage.prompt_tokens > 0);
  assert.ok(r.usage.completion_tokens > 0 && r.usage.completion_tokens <= 8, JSON.stringify(r.usage));
  assert.equal(r.usage.total_tokens, r.usage.prompt_tokens + r.usage.completion_tokens);
});

test("chat.completions.create with .withResponse() exposes x-request-id", async () => {
  const { data, response } = await client(a.projectKey).chat.completions
    .create({ model: CHAT_MODEL, messages: [{ role: "user", content: "Hi" }], max_tokens: 4 })
    .withResponse();
  assert.ok(response.headers.get("x-request-id"));
  assert.equal(data.object, "chat.completion");
});

test("streaming with include_usage: chunks, then one usage chunk last", async () => {
  const stream = await client(a.projectKey).chat.completions.create({
    model: CHAT_MODEL, messages: [{ role: "user", content: "Tell me a story" }], max_tokens: 12,
    stream: true, stream_options: { include_usage: true },
  });
  const chunks = [];
  for await (const c of stream) chunks.push(c);
  assert.ok(chunks.length > 2, `only ${chunks.length} chunks`);
  for (const c of chunks) assert.equal(c.object, "chat.completion.chunk");
  const withUsage = chunks.filter((c) => c.usage);
  assert.equal(withUsage.length, 1, JSON.stringify(chunks.map((c) => c.usage ?? null)));
  const last = chunks[chunks.length - 1];
  assert.ok(last.usage, "the last chunk carries usage");
  assert.ok(last.usage.completion_tokens > 0 && last.usage.completion_tokens <= 12);
  assert.ok(last.usage.prompt_tokens > 0);
  const text = chunks.map((c) => c.choices[0]?.delta?.content ?? "").join("");
  assert.ok(text.length > 0);
});

test("streaming without include_usage: no usage chunk", async () => {
  const stream = await client(a.projectKey).chat.completions.create({
    model: CHAT_MODEL, messages: [{ role: "user", content: "Tell me a story" }], max_tokens: 12, stream: true,
  });
  const chunks = [];
  for await (const c of stream) chunks.push(c);
  assert.ok(chunks.length > 2, `only ${chunks.length} chunks`);
  assert.equal(chunks.filter((c) => c.usage).length, 0);
  assert.ok(chunks.some((c) => c.choices[0]?.finish_reason), "a chunk gives the finish_reason");
});

test("completions.create", async () => {
  const r = await client(a.projectKey).completions.create({ model: CHAT_MODEL, prompt: "Once upon", max_tokens: 4 });
  assert.equal(r.object, "text_completion");
  assert.equal(typeof r.choices[0].text, "string");
  assert.ok(r.usage.completion_tokens > 0 && r.usage.completion_tokens <= 4);
});

test("embeddings.create against the embeddings deployment", async () => {
  const r = await client(a.projectKey).embeddings.create({
    model: EMBED_MODEL, input: ["hello world", "goodbye"], encoding_format: "float",
  });
  assert.equal(r.object, "list");
  assert.equal(r.data.length, 2);
  assert.equal(r.data[0].object, "embedding");
  assert.equal(r.data[1].index, 1);
  assert.ok(Array.isArray(r.data[0].embedding) && r.data[0].embedding.length > 0);
  assert.ok(r.data[0].embedding.every((x) => typeof x === "number" && Number.isFinite(x)));
  assert.equal(r.data[0].embedding.length, r.data[1].embedding.length);
  assert.ok(r.usage.prompt_tokens > 0);
  // No encoding_format: the SDK asks for base64 and decodes it; the same vector either way.
  const f = await client(a.projectKey).embeddings.create({ model: EMBED_MODEL, input: "hello world" });
  assert.equal(f.data[0].embedding.length, r.data[0].embedding.length);
  f.data[0].embedding.forEach((x, i) => assert.ok(Math.abs(x - r.data[0].embedding[i]) < 1e-4, `at ${i}: ${x}`));
});

test("a bad key is an AuthenticationError (401)", async () => {
  await assert.rejects(
    client("sk-proj-nope").chat.completions.create({ model: CHAT_MODEL, messages: [{ role: "user", content: "hi" }] }),
    (e) => e instanceof OpenAI.AuthenticationError && e.status === 401,
  );
});

test("an unknown model is a NotFoundError with code model_not_found", async () => {
  await assert.rejects(
    client(a.projectKey).chat.completions.create({ model: "gpt-99", messages: [{ role: "user", content: "hi" }] }),
    (e) => {
      assert.ok(e instanceof OpenAI.NotFoundError, String(e));
      assert.equal(e.status, 404);
      assert.equal(e.code, "model_not_found");
      assert.ok(e.requestID, "the error carries the request id");
      return true;
    },
  );
});

test("missing messages is a BadRequestError with param 'messages'", async () => {
  await assert.rejects(
    client(a.projectKey).chat.completions.create({ model: CHAT_MODEL }),
    (e) => {
      assert.ok(e instanceof OpenAI.BadRequestError, String(e));
      assert.equal(e.status, 400);
      assert.equal(e.param, "messages");
      assert.equal(e.type, "invalid_request_error");
      return true;
    },
  );
});

test("another organization's key gets NotFoundError for the model", async () => {
  await assert.rejects(
    client(b.projectKey).chat.completions.create({ model: CHAT_MODEL, messages: [{ role: "user", content: "hi" }] }),
    (e) => e instanceof OpenAI.NotFoundError && e.code === "model_not_found",
  );
  await assert.rejects(
    client(b.projectKey).embeddings.create({ model: EMBED_MODEL, input: "hi" }),
    (e) => e instanceof OpenAI.NotFoundError,
  );
});
// /v1/organization/projects/{id}/rate_limits): a limit of one request a minute on a project of its
// own, so the other tests' project is untouched.
test("a project's rate limit is a RateLimitError with its x-ratelimit-* headers", async () => {
  const proj = await api("POST", "/v1/organization/projects", a.adminKey, { name: "acme limited" }, { expect: 201 });
  const key = (await api("POST", `/v1/organization/projects/${proj.id}/api_keys`, a.adminKey,
    { name: "limited key" }, { expect: 201 })).value;
  const limits = await api("GET", `/v1/organization/projects/${proj.id}/rate_limits`, a.adminKey, undefined,
    { expect: 200 });
  const rl = limits.data.find((l) => l.model === CHAT_MODEL);
  assert.ok(rl, JSON.stringify(limits));
  const set = await api("POST", `/v1/organization/projects/${proj.id}/rate_limits/${rl.id}`, a.adminKey,
    { max_requests_per_1_minute: 1 }, { expect: 200 });
  assert.equal(set.max_requests_per_1_minute, 1);
  await new Promise((r) => setTimeout(r, 1200));  // limits reach the gateway's memory within a second
  const body = { model: CHAT_MODEL, messages: [{ role: "user", content: "hi" }], max_tokens: 2 };
  await client(key).chat.completions.create(body);
  await assert.rejects(client(key).chat.completions.create(body), (e) => {
    assert.ok(e instanceof OpenAI.RateLimitError, String(e));
    assert.equal(e.status, 429);
    assert.equal(e.headers.get("x-ratelimit-limit-requests"), "1");
    assert.equal(e.headers.get("x-ratelimit-remaining-requests"), "0");
    assert.ok(e.headers.get("x-ratelimit-reset-requests"));
    return true;
  });
  await client(a.projectKey).chat.completions.create(body);  // another project's limit is its own
});
