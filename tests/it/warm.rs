//! Warm runtimes (`WORKER_WARM`): python3 jobs fork from a fork server, bun and deno jobs take
//! a process started ahead; no job sees what another left, a warm runtime killed from outside
//! is replaced, and a warm job is confined exactly as a cold one.

use std::time::Duration;

use serde_json::{json, Value};

use crate::common::{eventually, jobs_have_own_users, Options, TestEnv};
use crate::runtimes::{env_in, mode};

/// The children of `parent` whose command line contains `needle`.
fn children_with(parent: u32, needle: &str) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let ppid = stat_fields(&format!("/proc/{pid}/stat"))
            .and_then(|fields| fields.get(1)?.parse::<u32>().ok());
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if ppid == Some(parent) && String::from_utf8_lossy(&cmdline).contains(needle) {
            found.push(pid);
        }
    }
    found
}

/// The two fork servers: the bare one, for scripts that name no preimported module, and the
/// one that has imported `WORKER_PYTHON_PREIMPORT`'s (`wmill` by default).
#[derive(Clone, Copy, PartialEq)]
enum Server {
    Bare,
    Preimporting,
}

impl Server {
    fn name(self) -> &'static str {
        match self {
            Self::Bare => "bare",
            Self::Preimporting => "preimporting",
        }
    }

    /// Whether `pid` is this server: the bare one has nothing to preimport on its command line
    /// (`forkserver.py <wrapper.py> <modules>`).
    fn is(self, pid: u32) -> bool {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        cmdline.ends_with(b"wrapper.py\0\0") == (self == Self::Bare)
    }
}

/// How many times the worker has said fork server `which` is ready.
fn servers_ready(env: &TestEnv, which: Server) -> usize {
    env.logs()
        .lines()
        .filter(|l| l.contains("python3 jobs fork from a warm interpreter"))
        .filter(|l| l.contains(which.name()))
        .count()
}

/// The worker's fork server `which`, once it is ready for the `count`th time.
async fn server(env: &TestEnv, which: Server, count: usize) -> u32 {
    let worker = env.worker_pid(0);
    let mut server = None;
    eventually(
        Duration::from_secs(30),
        &format!("the {} fork server is ready", which.name()),
        async || {
            server = children_with(worker, "forkserver.py")
                .into_iter()
                .find(|pid| which.is(*pid));
            server.is_some() && servers_ready(env, which) >= count
        },
    )
    .await;
    server.unwrap()
}

/// The fork server of scripts that name no preimported module, once it is ready for the
/// `count`th time.
async fn fork_server(env: &TestEnv, count: usize) -> u32 {
    server(env, Server::Bare, count).await
}

/// Whether process `pid` is blocked reading descriptor `fd` (`read(fd, …)`): a warm process
/// waiting for its job, on its standard input (bun, deno) or its job pipe (3, python3).
fn reads(pid: u32, fd: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/syscall"))
        .is_ok_and(|s| s.starts_with(&format!("0 {fd:#x} ")))
}

/// The directory a process runs in.
fn cwd_of(pid: u32) -> Option<String> {
    let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).ok()?;
    Some(cwd.display().to_string())
}

/// A process of `lang` started ahead by the worker (python3: forked by its fork server) and
/// waiting for a job, and its directory.
async fn waiting_process(env: &TestEnv, lang: &str) -> (u32, String) {
    let worker = env.worker_pid(0);
    let mut found = None;
    eventually(
        Duration::from_secs(60),
        &format!("a warm {lang} process waits"),
        async || {
            let (candidates, fd) = match lang {
                "python3" => {
                    let servers = children_with(worker, "forkserver.py");
                    let forked = servers
                        .iter()
                        .flat_map(|s| children_with(*s, "forkserver.py"));
                    (forked.collect::<Vec<_>>(), 3)
                }
                _ => (children_with(worker, "wrapper.ts"), 0),
            };
            found = candidates
                .into_iter()
                .filter(|pid| {
                    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
                    exe.to_string_lossy().contains(&lang[..3]) && reads(*pid, fd)
                })
                .find_map(|pid| Some((pid, cwd_of(pid)?)));
            found.is_some()
        },
    )
    .await;
    found.unwrap()
}

const PY_FIRST: &str = "import json, os\n\
def main():\n    json.millrace_mark = os.environ['WM_JOB_ID']\n    os.environ['LEFT_BY_FIRST'] = '1'\n    open('mine.txt', 'w').write('first')\n    parent = open(f'/proc/{os.getppid()}/cmdline').read().replace(chr(0), ' ')\n    fds = sorted(int(f) for f in os.listdir('/proc/self/fd') if os.path.exists(f'/proc/self/fd/{f}'))\n    return {'cwd': os.getcwd(), 'parent': parent, 'ppid': os.getppid(), 'pid': os.getpid(), 'fds': fds}\n";

const PY_SECOND: &str = "import json, os\n\
def main(first_dir: str):\n    import resource\n    fds = sorted(int(f) for f in os.listdir('/proc/self/fd') if os.path.exists(f'/proc/self/fd/{f}'))\n    return {'mark': getattr(json, 'millrace_mark', None), 'env': os.environ.get('LEFT_BY_FIRST'), 'cwd': os.getcwd(), 'sees_first': os.path.exists(os.path.join(first_dir, 'mine.txt')), 'fds': fds, 'cpu': resource.getrlimit(resource.RLIMIT_CPU), 'token': len(os.environ.get('WM_TOKEN', '')), 'pid': os.getpid()}\n";

const TS_FIRST: &str = "import { writeFileSync } from 'node:fs';\n\
export function main() {\n  (globalThis as any).millraceMark = 'first';\n  process.env.LEFT_BY_FIRST = '1';\n  writeFileSync('mine.txt', 'first');\n  return { cwd: process.cwd(), pid: process.pid };\n}\n";

const TS_SECOND: &str = "import { existsSync, readFileSync, readdirSync } from 'node:fs';\n\
export function main(first_dir: string) {\n  const nices = readdirSync('/proc/self/task').map((t) => { const stat = readFileSync(`/proc/self/task/${t}/stat`, 'utf8'); return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[16]); });\n  return { mark: (globalThis as any).millraceMark ?? null, env: process.env.LEFT_BY_FIRST ?? null, warm: process.env.MILLRACE_WARM ?? null, cwd: process.cwd(), sees_first: existsSync(first_dir + '/mine.txt'), token: (process.env.WM_TOKEN ?? '').length, pid: process.pid, nices: [...new Set(nices)] };\n}\n";

/// The fields of a `/proc/…/stat` file after the command's name (`pid (comm) state ppid …`:
/// comm may hold spaces, so counted from its closing paren), state first.
fn stat_fields(path: &str) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(path).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// The nice values of the threads of process `pid`, each once.
fn thread_nices(pid: u32) -> Vec<i64> {
    let mut nices: Vec<i64> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
        .filter_map(|task| stat_fields(&format!("{}/stat", task.path().display())))
        .map(|fields| fields[16].parse().unwrap())
        .collect();
    nices.sort();
    nices.dedup();
    nices
}

fn assert_nothing_shared(first: &Value, second: &Value) {
    assert_eq!(second["mark"], json!(null), "module state leaked: {second}");
    assert_eq!(second["env"], json!(null), "environment leaked: {second}");
    assert_ne!(second["cwd"], first["cwd"], "{second}");
    assert_eq!(second["sees_first"], json!(false), "{second}");
    assert!(second["token"].as_u64().unwrap() >= 32, "{second}");
}

#[tokio::test]
async fn python_jobs_fork_from_the_fork_server_and_share_nothing() {
    let env = env_in(true).await;
    let server = fork_server(&env, 1).await;
    env.script("u/alice/first", "python3", PY_FIRST).await;
    // A timeout of its own: its CPU limit is lower than that of the children forked ahead.
    env.script_with(
        "u/alice/second",
        "python3",
        PY_SECOND,
        json!({"timeout": 7}),
    )
    .await;
    // The first job is forked when it comes, and has a child forked ahead for the next.
    let first = env.run_ok("u/alice/first", json!({})).await;
    assert_eq!(first["ppid"], json!(server), "not forked: {first}");
    assert_eq!(first["fds"], json!([0, 1, 2]), "{first}");
    assert!(
        first["parent"].as_str().unwrap().contains("forkserver.py"),
        "{first}"
    );
    let (waiting, waiting_in) = waiting_process(&env, "python3").await;
    let second = env
        .run_ok("u/alice/second", json!({"first_dir": first["cwd"]}))
        .await;
    assert_eq!(second["pid"], json!(waiting), "not the child forked ahead");
    assert_eq!(second["cwd"], json!(waiting_in), "{second}");
    assert_nothing_shared(&first, &second);
    // Its job pipe (and every other descriptor of the server) is closed before the script
    // runs, and its CPU limit is its own: timeout + 60 s.
    assert_eq!(second["fds"], json!([0, 1, 2]), "{second}");
    assert_eq!(second["cpu"], json!([67, 67]), "{second}");
    // The next job of the same script, too: a fresh fork each time.
    let (_, next_in) = waiting_process(&env, "python3").await;
    let again = env.run_ok("u/alice/first", json!({})).await;
    assert_eq!(again["ppid"], json!(server));
    assert_eq!(again["cwd"], json!(next_in));
    assert_ne!(again["cwd"], first["cwd"]);
}

/// Whether `wmill` was imported before the script, which names it (in `main` only, as a word
/// the choice of server sees).
const PY_WMILL_PRELOADED: &str = "import os, sys\n\
PRELOADED = [m for m in ('wm' + 'ill', 'httpx') if m in sys.modules]\n\
def main():\n    import wmill\n    return {'pid': os.getpid(), 'ppid': os.getppid(), 'preloaded': PRELOADED, 'client': hasattr(wmill, 'get_variable')}\n";

/// The children of fork server `server` waiting for their jobs (on their job pipe).
fn waiting_children(server: u32) -> Vec<u32> {
    children_with(server, "forkserver.py")
        .into_iter()
        .filter(|pid| reads(*pid, 3))
        .collect()
}

/// A child of fork server `server` waiting for its job.
async fn waiting_child_of(server: u32) -> u32 {
    let mut found = None;
    eventually(
        Duration::from_secs(30),
        "a child forked ahead waits",
        async || {
            found = waiting_children(server).first().copied();
            found.is_some()
        },
    )
    .await;
    found.unwrap()
}

#[tokio::test]
async fn a_script_naming_a_preimported_module_forks_from_the_server_that_imported_it() {
    let env = env_in(true).await;
    let bare = fork_server(&env, 1).await;
    let preimporting = server(&env, Server::Preimporting, 1).await;
    assert_ne!(bare, preimporting);
    env.script("u/alice/plain", "python3", PY_FIRST).await;
    env.script("u/alice/client", "python3", PY_WMILL_PRELOADED)
        .await;
    // The same check, without the word: this script's children come from the bare server.
    let unnamed = PY_WMILL_PRELOADED.replace("import wmill", "__import__('wm' + 'ill')");
    let unnamed = unnamed.replace("hasattr(wmill,", "hasattr(sys.modules['wm' + 'ill'],");
    env.script("u/alice/unnamed", "python3", &unnamed).await;
    let plain = env.run_ok("u/alice/plain", json!({})).await;
    assert_eq!(plain["ppid"], json!(bare), "{plain}");
    // A bare child waits now: a job taking from the wrong pool would run in it.
    let bare_child = waiting_child_of(bare).await;
    let client = env.run_ok("u/alice/client", json!({})).await;
    assert_eq!(client["ppid"], json!(preimporting), "{client}");
    assert_eq!(client["preloaded"], json!(["wmill", "httpx"]), "{client}");
    assert_eq!(client["client"], json!(true), "{client}");
    // Its pool's child forked ahead takes the next one.
    let ahead = waiting_child_of(preimporting).await;
    let client = env.run_ok("u/alice/client", json!({})).await;
    assert_eq!(client["pid"], json!(ahead), "{client}");
    assert_eq!(client["preloaded"], json!(["wmill", "httpx"]), "{client}");
    // A script without the word runs in the bare child, paying for its import itself.
    let unnamed = env.run_ok("u/alice/unnamed", json!({})).await;
    assert_eq!(unnamed["pid"], json!(bare_child), "{unnamed}");
    assert_eq!(unnamed["preloaded"], json!([]), "{unnamed}");
    assert_eq!(unnamed["client"], json!(true), "{unnamed}");
    // Without its server, a script's job forks from the other one (from the bare one, paying
    // for its import), or from the server's replacement once that is ready.
    // SAFETY: kill(2) on a pid just found among the worker's children.
    unsafe { libc::kill(preimporting as i32, libc::SIGKILL) };
    eventually(
        Duration::from_secs(10),
        "the preimporting server is known to be gone",
        async || env.logs().contains("fork server is gone"),
    )
    .await;
    let client = env.run_ok("u/alice/client", json!({})).await;
    assert_ne!(client["ppid"], json!(preimporting), "{client}");
    assert_eq!(client["client"], json!(true), "{client}");
    if client["preloaded"] == json!([]) {
        assert_eq!(client["ppid"], json!(bare), "{client}");
    }
}

#[tokio::test]
async fn the_two_fork_servers_pools_share_python3s_users() {
    let env = TestEnv::with(mode(
        true,
        Options {
            workers: 1,
            worker_env: vec![("WORKER_SLOTS".into(), "1".into())],
            ..Default::default()
        },
    ))
    .await;
    let bare = fork_server(&env, 1).await;
    let preimporting = server(&env, Server::Preimporting, 1).await;
    env.script("u/alice/plain", "python3", PY_FIRST).await;
    env.script("u/alice/client", "python3", PY_WMILL_PRELOADED)
        .await;
    let waiting = |server| waiting_children(server).len();
    // One slot, one user for children forked ahead: it follows the scripts that come.
    for (path, expected) in [
        ("u/alice/plain", (1, 0)),
        ("u/alice/client", (0, 1)),
        ("u/alice/plain", (1, 0)),
    ] {
        env.run_ok(path, json!({})).await;
        eventually(
            Duration::from_secs(20),
            &format!("after {path}: children waiting (bare, preimporting) {expected:?}"),
            async || (waiting(bare), waiting(preimporting)) == expected,
        )
        .await;
    }
    // And never more than one at a time.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!((waiting(bare), waiting(preimporting)), (1, 0));
}

#[tokio::test]
async fn without_warm_runtimes_python_jobs_start_cold() {
    let env = env_in(false).await;
    env.script("u/alice/first", "python3", PY_FIRST).await;
    let first = env.run_ok("u/alice/first", json!({})).await;
    assert_eq!(first["ppid"], json!(env.worker_pid(0)), "{first}");
    // Started by the worker's own spawn: no descriptor of the worker's is left open.
    assert_eq!(first["fds"], json!([0, 1, 2]), "{first}");
    assert!(children_with(env.worker_pid(0), "forkserver.py").is_empty());
    assert!(children_with(env.worker_pid(0), "wrapper.ts").is_empty());
}

#[tokio::test]
async fn typescript_jobs_take_a_process_started_ahead_and_share_nothing() {
    // With CAP_SYS_NICE (the chart's workers have only CAP_SETUID and CAP_SETGID).
    let env = TestEnv::with(mode(
        true,
        Options {
            workers: 1,
            worker_bounding_set: Some("-all,+setuid,+setgid,+sys_nice".into()),
            ..Default::default()
        },
    ))
    .await;
    for lang in ["bun", "deno"] {
        let first_path = format!("u/alice/first_{lang}");
        let second_path = format!("u/alice/second_{lang}");
        env.script(&first_path, lang, TS_FIRST).await;
        env.script(&second_path, lang, TS_SECOND).await;
        // The first job of a language starts cold and has a process started for the next.
        let first = env.run_ok(&first_path, json!({})).await;
        let (waiting, waiting_in) = waiting_process(&env, lang).await;
        // It waits behind the jobs (the worker may put it back), and its job, in that very
        // process, runs at the worker's priority, every thread of it.
        let worker_nice = thread_nices(env.worker_pid(0));
        if jobs_have_own_users() {
            let behind = (worker_nice[0] + 10).min(19);
            assert_eq!(thread_nices(waiting), [behind], "{lang}");
        }
        let second = env
            .run_ok(&second_path, json!({"first_dir": first["cwd"]}))
            .await;
        assert_eq!(
            second["pid"],
            json!(waiting),
            "{lang}: not the warm process"
        );
        assert_eq!(second["nices"], json!(worker_nice), "{lang}: {second}");
        assert_eq!(
            second["cwd"],
            json!(waiting_in),
            "{lang}: not the warm process"
        );
        assert_eq!(second["warm"], json!(null), "{lang}: {second}");
        assert_nothing_shared(&first, &second);
        // The process that ran it is gone; another waits in a directory of its own.
        let (_, next_in) = waiting_process(&env, lang).await;
        assert_ne!(next_in, waiting_in, "{lang}");
    }
}

#[tokio::test]
async fn a_stopped_waiting_python_child_is_passed_over_and_killed() {
    let env = env_in(true).await;
    fork_server(&env, 1).await;
    env.script("u/alice/first", "python3", PY_FIRST).await;
    env.run_ok("u/alice/first", json!({})).await;
    let (stopped, dir) = waiting_process(&env, "python3").await;
    // SAFETY: kill(2) on the pid just found among the worker's descendants.
    unsafe { libc::kill(stopped as i32, libc::SIGSTOP) };
    // It takes the job's bytes but never says it has the job: the job runs in another child,
    // and the stopped one, which holds the job's environment, is killed first.
    let result = env.run_ok("u/alice/first", json!({})).await;
    assert_ne!(result["pid"], json!(stopped), "{result}");
    assert_eq!(result["cwd"], json!(dir), "{result}");
    eventually(
        Duration::from_secs(10),
        "the stopped child is gone",
        async || !std::path::Path::new(&format!("/proc/{stopped}")).exists(),
    )
    .await;
}

#[tokio::test]
async fn a_killed_fork_server_is_replaced_and_jobs_go_on() {
    let env = env_in(true).await;
    env.script("u/alice/first", "python3", PY_FIRST).await;
    let server = fork_server(&env, 1).await;
    // SAFETY: kill(2) on the pid just found among the worker's children.
    unsafe { libc::kill(server as i32, libc::SIGKILL) };
    // Right away: the job runs (cold while no server is back).
    let result = env.run_ok("u/alice/first", json!({})).await;
    assert_ne!(result["ppid"], json!(server), "{result}");
    let replacement = fork_server(&env, 2).await;
    assert_ne!(replacement, server);
    let result = env.run_ok("u/alice/first", json!({})).await;
    assert_eq!(result["ppid"], json!(replacement), "{result}");
}

#[tokio::test]
async fn a_killed_waiting_process_is_replaced_and_jobs_go_on() {
    let env = env_in(true).await;
    fork_server(&env, 1).await;
    env.script("u/alice/first_bun", "bun", TS_FIRST).await;
    env.script("u/alice/first_py", "python3", PY_FIRST).await;
    for (lang, path) in [
        ("bun", "u/alice/first_bun"),
        ("python3", "u/alice/first_py"),
    ] {
        env.run_ok(path, json!({})).await;
        let (pid, dir) = waiting_process(&env, lang).await;
        // A worker that could not put it back does not lower it.
        assert_eq!(thread_nices(pid), thread_nices(env.worker_pid(0)), "{lang}");
        // SAFETY: kill(2) on the pid just found among the worker's descendants.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        // It runs: otherwise if the kill came just before it took it.
        let result = env.run_ok(path, json!({})).await;
        assert_ne!(result["pid"], json!(pid), "{lang}: {result}");
        let (_, next) = waiting_process(&env, lang).await;
        assert_ne!(next, dir, "{lang}");
        env.run_ok(path, json!({})).await;
    }
}

/// What a job's process sees of its own confinement: identity, capabilities, limits, cgroup,
/// process group, OOM score; user and group ids as whether they are the job's own.
const PY_CONFINEMENT: &str = "import os\n\
def main():\n    status = dict(l.split(':', 1) for l in open('/proc/self/status').read().splitlines())\n    keep = ['Groups', 'NoNewPrivs', 'CapInh', 'CapPrm', 'CapEff', 'CapAmb', 'Seccomp']\n    uid = os.getuid()\n    return {'status': {k: status[k].strip() for k in keep}, 'own_user': uid != 0 and os.getgid() == uid and status['Uid'].split() == [str(uid)] * 4, 'limits': open('/proc/self/limits').read(), 'oom': open('/proc/self/oom_score_adj').read(), 'cgroup': open('/proc/self/cgroup').read().replace(str(uid), 'UID'), 'leader': os.getpgid(0) == os.getpid(), 'mode': oct(os.stat('.').st_mode & 0o777)}\n";

const TS_CONFINEMENT: &str = "import { readFileSync, statSync } from 'node:fs';\n\
export function main() {\n  const status = Object.fromEntries(readFileSync('/proc/self/status', 'utf8').trim().split('\\n').map((l) => { const i = l.indexOf(':'); return [l.slice(0, i), l.slice(i + 1).trim()]; }));\n  const uid = process.getuid!();\n  const keep = ['Groups', 'NoNewPrivs', 'CapInh', 'CapPrm', 'CapEff', 'CapAmb', 'Seccomp'];\n  return { status: Object.fromEntries(keep.map((k) => [k, status[k]])), own_user: uid !== 0 && process.getgid!() === uid, limits: readFileSync('/proc/self/limits', 'utf8'), oom: readFileSync('/proc/self/oom_score_adj', 'utf8'), cgroup: readFileSync('/proc/self/cgroup', 'utf8').replaceAll(String(uid), 'UID'), mode: (statSync('.').mode & 0o777).toString(8) };\n}\n";

#[tokio::test]
async fn warm_jobs_are_confined_exactly_as_cold_ones() {
    if !jobs_have_own_users() {
        return;
    }
    let mut seen = Vec::new();
    for warm in [true, false] {
        let env = env_in(warm).await;
        env.script("u/alice/conf_py", "python3", PY_CONFINEMENT)
            .await;
        env.script("u/alice/conf_bun", "bun", TS_CONFINEMENT).await;
        if warm {
            fork_server(&env, 1).await;
            // The first job of each starts without one and has one started ahead for the
            // second.
            env.run_ok("u/alice/conf_bun", json!({})).await;
            waiting_process(&env, "bun").await;
            env.run_ok("u/alice/conf_py", json!({})).await;
            waiting_process(&env, "python3").await;
        }
        let python = env.run_ok("u/alice/conf_py", json!({})).await;
        assert_eq!(python["own_user"], json!(true), "{python}");
        assert_eq!(python["leader"], json!(true), "{python}");
        assert_eq!(python["status"]["NoNewPrivs"], json!("1"), "{python}");
        assert_eq!(python["status"]["CapEff"], json!("0000000000000000"));
        let bun = env.run_ok("u/alice/conf_bun", json!({})).await;
        assert_eq!(bun["own_user"], json!(true), "{bun}");
        seen.push((python, bun));
    }
    let (warm, cold) = (&seen[0], &seen[1]);
    assert_eq!(warm.0, cold.0, "python3: warm and cold differ");
    assert_eq!(warm.1, cold.1, "bun: warm and cold differ");
}

/// Counts its jobs in a module global; fails or sleeps when asked.
const COUNTER: &str = "import os, time\n\
count = 0\n\
def main(fail: bool = False, sleep: int = 0):\n    global count\n    count += 1\n    print('job', count)\n    time.sleep(sleep)\n    if fail:\n        raise ValueError('asked to fail')\n    return {'count': count, 'pid': os.getpid(), 'job': os.environ['WM_JOB_ID'], 'token': os.environ['WM_TOKEN']}\n";

#[tokio::test]
async fn a_dedicated_script_keeps_its_module_state_between_its_jobs() {
    let env = env_in(true).await;
    fork_server(&env, 1).await;
    env.script_with(
        "u/alice/counter",
        "python3",
        COUNTER,
        json!({"dedicated_worker": true, "timeout": 3}),
    )
    .await;
    env.script("u/alice/plain", "python3", COUNTER).await;
    let script = env
        .get(
            &format!("/api/w/{}/scripts/get/p/u/alice/counter", crate::common::WS),
            &env.token,
        )
        .await
        .expect(200)
        .json();
    assert_eq!(script["dedicated_worker"], json!(true), "{script}");

    let mut seen = Vec::new();
    for expected in 1..=3 {
        let id = env.run("u/alice/counter", json!({})).await;
        let done = env.wait(&id, Duration::from_secs(30)).await;
        assert_eq!(done["result"]["count"], json!(expected), "{done}");
        // Each job its own environment and logs.
        assert_eq!(done["result"]["job"], json!(id));
        assert_eq!(env.job_logs(&id).await, format!("job {expected}\n"));
        seen.push(done["result"].clone());
    }
    assert!(seen.iter().all(|r| r["pid"] == seen[0]["pid"]), "{seen:?}");
    assert_ne!(seen[0]["token"], seen[1]["token"]);
    // A failing job leaves the process, and its state, to the next.
    let id = env.run("u/alice/counter", json!({"fail": true})).await;
    let done = env.wait(&id, Duration::from_secs(30)).await;
    assert_eq!(
        done["result"]["error"]["name"],
        json!("ValueError"),
        "{done}"
    );
    let after = env.run_ok("u/alice/counter", json!({})).await;
    assert_eq!(after["count"], json!(5), "{after}");
    assert_eq!(after["pid"], seen[0]["pid"]);
    // A job stopped at its timeout takes its process with it: the next starts afresh.
    let id = env.run("u/alice/counter", json!({"sleep": 30})).await;
    let done = env.wait(&id, Duration::from_secs(30)).await;
    assert_eq!(done["result"]["error"]["name"], json!("Timeout"), "{done}");
    let fresh = env.run_ok("u/alice/counter", json!({})).await;
    assert_eq!(fresh["count"], json!(1), "{fresh}");
    assert_ne!(fresh["pid"], seen[0]["pid"]);
    // A script without the setting starts from scratch every time.
    for _ in 0..2 {
        let plain = env.run_ok("u/alice/plain", json!({})).await;
        assert_eq!(plain["count"], json!(1), "{plain}");
    }
}

#[tokio::test]
async fn without_warm_runtimes_a_dedicated_script_runs_like_any_other() {
    let env = env_in(false).await;
    env.script_with(
        "u/alice/counter",
        "python3",
        COUNTER,
        json!({"dedicated_worker": true}),
    )
    .await;
    for _ in 0..2 {
        let result = env.run_ok("u/alice/counter", json!({})).await;
        assert_eq!(result["count"], json!(1), "{result}");
    }
}

#[tokio::test]
async fn a_dedicated_job_cannot_make_the_worker_write_through_its_links() {
    use std::os::unix::fs::PermissionsExt;
    // The worker writes the next job's files into the directory the dedicated process keeps;
    // the job may have put links there, to files only the worker may write.
    let env = env_in(true).await;
    fork_server(&env, 1).await;
    let victim = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(victim.path(), "original").unwrap();
    std::fs::set_permissions(victim.path(), std::fs::Permissions::from_mode(0o644)).unwrap();
    let script = format!(
        "import os\n\
         def main():\n\
         \x20   for name in ('main.py', 'wrapper.py', 'args.json'):\n\
         \x20       try:\n\
         \x20           os.remove(name)\n\
         \x20       except OSError:\n\
         \x20           pass\n\
         \x20       os.symlink({:?}, name)\n\
         \x20   return os.getpid()\n",
        victim.path().display().to_string()
    );
    env.script_with(
        "u/alice/planter",
        "python3",
        &script,
        json!({"dedicated_worker": true}),
    )
    .await;
    env.run_ok("u/alice/planter", json!({})).await;
    // The next job of the same version: its files are written anew, not through the links.
    let id = env.run("u/alice/planter", json!({})).await;
    env.wait(&id, Duration::from_secs(30)).await;
    assert_eq!(std::fs::read_to_string(victim.path()).unwrap(), "original");
}
