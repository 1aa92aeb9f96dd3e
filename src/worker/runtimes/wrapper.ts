// Runs the user's `main` for Millrace under bun or deno: arguments from args.json, result to
// the result file, an exception to the error file.
const RESULT_FILE = ".millrace_result.json";
const ERROR_FILE = ".millrace_error.json";

// What the wrapper needs of its runtime. Under deno, deno's own API: a module that imports a
// `node:` built-in and names `process`, or calls into `node:fs`, makes deno load its Node
// compatibility layer, ~60 ms of CPU at every start (4 times the rest of a trivial job's).
const deno = (globalThis as any).Deno;
const fs = deno ? undefined : await import("node:fs");
// All of `bytes` to a deno stream (a write may take only part).
function writeAll(stream: any, bytes: Uint8Array) {
  while (bytes.length > 0) bytes = bytes.subarray(stream.writeSync(bytes));
}
const host = deno
  ? {
      env: (): Record<string, string> => deno.env.toObject(),
      replaceEnv(vars: Record<string, string>) {
        for (const name of Object.keys(deno.env.toObject())) deno.env.delete(name);
        for (const [name, value] of Object.entries(vars)) deno.env.set(name, value);
      },
      // Only a failing job pays for the Node layer here: the script's `process.on("exit")`
      // handlers then run, as under Node.
      exit: (code: number): never => (globalThis as any).process.exit(code),
      readInput(): string {
        const buffer = new Uint8Array(65536);
        const decoder = new TextDecoder();
        let text = "";
        for (let n; (n = deno.stdin.readSync(buffer)) !== null; ) {
          // Streamed: a character split between two reads is decoded whole.
          text += decoder.decode(buffer.subarray(0, n), { stream: true });
        }
        return text + decoder.decode();
      },
      read: (file: string): string => deno.readTextFileSync(file),
      write: (file: string, text: string) => deno.writeTextFileSync(file, text),
      say: (text: string) => writeAll(deno.stdout, new TextEncoder().encode(text)),
      stream(text: string) {
        this.say(text);
      },
    }
  : {
      env: () => process.env as Record<string, string>,
      replaceEnv(vars: Record<string, string>) {
        for (const name of Object.keys(process.env)) delete process.env[name];
        Object.assign(process.env, vars);
      },
      exit: (code: number): never => process.exit(code),
      readInput: (): string => fs!.readFileSync(0, "utf8"),
      read: (file: string): string => fs!.readFileSync(file, "utf8"),
      write: (file: string, text: string) => fs!.writeFileSync(file, text),
      say: (text: string) => fs!.writeSync(1, text),
      stream: (text: string) => process.stdout.write(text),
    };

// Started ahead of its job (MILLRACE_WARM): say so, then wait for the job's environment on
// standard input, which the worker closes once it is sent (the job then reads no input, as a
// cold one reads /dev/null), and say it arrived.
if (host.env().MILLRACE_WARM === "1") {
  host.say("\x1eMILLRACE_READY\n");
  const job = JSON.parse(host.readInput());
  host.say("\x1eMILLRACE_STARTED\n");
  host.replaceEnv(job.env);
}

// Under deno, the job's end is told as its process starts to exit, after the script's own
// unload listeners (see EXIT_MARKER in the worker): deno's teardown takes ~10 ms more. Not for
// a script that may reach deno's Node layer, whose `process` exit listeners run after every
// unload listener, or that listens for `beforeunload` (an unload listener it adds there may
// come after ours); nor under bun, which tells its exit listeners 0 when an unhandled
// rejection makes it exit with 1. Their processes' exits tell.
let tellsExit = false;

function tellExit() {
  if (!tellsExit) return;
  globalThis.addEventListener("unload", () => {
    const code = deno.exitCode;
    if (typeof code !== "number") return;
    const marker = new TextEncoder().encode(`\x1eMILLRACE_EXIT ${code}\n`);
    try {
      writeAll(deno.stdout, marker);
      writeAll(deno.stderr, marker);
    } catch {
      // Then the process's exit tells.
    }
  });
}

function fail(name: string, message: string, stack?: string): never {
  host.write(ERROR_FILE, JSON.stringify({ name, message, stack }));
  if (tellsExit) {
    tellExit();
    // Nothing of the script's listens through `process`: no need to load the Node layer.
    deno.exit(1);
  }
  host.exit(1);
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

const args = JSON.parse(host.read("args.json"));
tellsExit = deno !== undefined && !/process|import|require|beforeunload/.test(host.read("main.ts"));
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
      host.stream("\x1eMILLRACE_STREAM" + JSON.stringify(piece) + "\n");
    }
    result = text;
  }
  host.write(RESULT_FILE, JSON.stringify(result === undefined ? null : result));
  // Once nothing is left to run: after the unload listeners the script adds meanwhile.
  if (tellsExit) globalThis.addEventListener("beforeunload", tellExit, { once: true });
} catch (e: any) {
  fail(e?.name ?? "Error", String(e?.message ?? e), e?.stack);
}
