// Runs the user's `main` for Millrace under bun or deno: arguments from args.json, result to
// the result file, an exception to the error file.
import { readFileSync, writeFileSync, writeSync } from "node:fs";

const RESULT_FILE = ".millrace_result.json";
const ERROR_FILE = ".millrace_error.json";

// Started ahead of its job (MILLRACE_WARM): say so, then wait for the job's environment on
// standard input, which the worker closes once it is sent (the job then reads no input, as a
// cold one reads /dev/null), and say it arrived.
if (process.env.MILLRACE_WARM === "1") {
  writeSync(1, "\x1eMILLRACE_READY\n");
  const job = JSON.parse(readFileSync(0, "utf8"));
  writeSync(1, "\x1eMILLRACE_STARTED\n");
  for (const name of Object.keys(process.env)) delete process.env[name];
  Object.assign(process.env, job.env);
}

function fail(name: string, message: string, stack?: string): never {
  writeFileSync(ERROR_FILE, JSON.stringify({ name, message, stack }));
  process.exit(1);
}

// Parameter names from the compiled function's source: `main(a, b = 1, ...rest)`.
function parameters(fn: Function): { names: string[]; optional: Set<string>; rest: boolean } {
  const source = fn.toString();
  const open = source.indexOf("(");
  let depth = 0;
  let end = open;
  for (let i = open; i < source.length; i++) {
    if ("([{".includes(source[i])) depth++;
    if (")]}".includes(source[i])) depth--;
    if (depth === 0) { end = i; break; }
  }
  const names: string[] = [];
  const optional = new Set<string>();
  let rest = false;
  let current = "";
  depth = 0;
  const flush = () => {
    const part = current.trim();
    current = "";
    if (!part) return;
    if (part.startsWith("...")) { rest = true; return; }
    const name = part.split(/[=:]/)[0].trim();
    if (!/^[A-Za-z_$][\w$]*$/.test(name)) return;
    names.push(name);
    if (part.includes("=")) optional.add(name);
  };
  for (const ch of source.slice(open + 1, end)) {
    if ("([{".includes(ch)) depth++;
    if (")]}".includes(ch)) depth--;
    if (ch === "," && depth === 0) flush(); else current += ch;
  }
  flush();
  return { names, optional, rest };
}

const args = JSON.parse(readFileSync("args.json", "utf8"));
let mod: any;
try {
  mod = await import("./main.ts");
} catch (e: any) {
  fail(e?.name ?? "Error", String(e?.message ?? e), e?.stack);
}
if (typeof mod.main !== "function") fail("MissingMain", "the script exports no main function");
const { names, optional, rest } = parameters(mod.main);
const missing = names.filter((n) => !(n in args) && !optional.has(n));
if (missing.length > 0) fail("MissingArguments", "missing required argument(s): " + missing.join(", "));
try {
  // Like Python's **kwargs: a rest parameter receives the arguments main does not name.
  const extra = Object.fromEntries(Object.entries(args).filter(([k]) => !names.includes(k)));
  let result = await mod.main(...names.map((n) => args[n]), ...(rest ? [extra] : []));
  if (result && typeof result[Symbol.asyncIterator] === "function") {
    let text = "";
    for await (const chunk of result) {
      const piece = typeof chunk === "string" ? chunk : JSON.stringify(chunk);
      text += piece;
      process.stdout.write("\x1eMILLRACE_STREAM" + JSON.stringify(piece) + "\n");
    }
    result = text;
  }
  writeFileSync(RESULT_FILE, JSON.stringify(result === undefined ? null : result));
} catch (e: any) {
  fail(e?.name ?? "Error", String(e?.message ?? e), e?.stack);
}
