// The Node example of docs/protocol.md ("Writing a client"), run as written
// against the test server.
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { readFileSync, writeFileSync, mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { URL_BASE, PASSWORD } from "./env.mjs";

const root = fileURLToPath(new URL("../..", import.meta.url));

test("the Node example in docs/protocol.md runs", { timeout: 30000 }, async () => {
  const doc = readFileSync(join(root, "docs/protocol.md"), "utf8");
  const m = doc.match(/<!-- klav\.js node example -->\s*```js\n([\s\S]*?)```/);
  assert.ok(m, "the example is marked in docs/protocol.md");
  const lib = pathToFileURL(join(root, "web/klav.js")).href;
  const code = m[1].replace(/from "\.\/klav\.js"/, `from ${JSON.stringify(lib)}`);
  assert.notEqual(code, m[1], "the example imports ./klav.js");
  const file = join(mkdtempSync(join(tmpdir(), "klav-doc-")), "chat.mjs");
  writeFileSync(file, code);
  const flags = Number(process.versions.node.split(".")[0]) < 22 ? ["--experimental-websocket"] : [];
  const { stdout } = await new Promise((resolve, reject) =>
    execFile(
      process.execPath,
      [...flags, file],
      {
        env: { ...process.env, KLAV_URL: URL_BASE, KLAV_USER: "gus", KLAV_PASSWORD: PASSWORD },
        timeout: 20000,
      },
      (err, stdout, stderr) => (err ? reject(new Error(`${err.message}\n${stderr}`)) : resolve({ stdout, stderr })),
    ),
  );
  assert.match(stdout, /stored as \d+/);
  assert.match(stdout, /: hello from Node/);
});
