//! Every script is hostile: each attack here is what a workspace member could try from a job.
//! The worker runs jobs as users of their own only when it may change users, so these tests
//! need the harness (and its workers) to run as root — as CI does; elsewhere they say so and
//! stop.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::{jobs_have_own_users, Options, TestEnv};

/// The job directories of root's workers (the harness runs as root when these tests run):
/// each `job-…/work`.
fn job_dirs() -> Vec<std::path::PathBuf> {
    std::fs::read_dir(std::env::temp_dir().join("millrace-0"))
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("job-"))
                })
                .map(|p| p.join("work"))
                .collect()
        })
        .unwrap_or_default()
}

/// A worker with one slot whose jobs run as the first user of `uids` (a range no other test's
/// workers take), so that what is left of a job can be counted.
async fn one_slot_env(uids: &str, extra: &[(&str, &str)]) -> TestEnv {
    let mut worker_env = vec![
        ("WORKER_SLOTS".into(), "1".into()),
        ("JOB_UID_RANGE".into(), uids.into()),
    ];
    worker_env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    TestEnv::with(Options {
        workers: 1,
        worker_env,
        ..Default::default()
    })
    .await
}

/// Waits until no process of `uid` is left; fails with their states after 10 s.
async fn none_left_of(uid: u32, what: &str) {
    let states = || {
        let out = std::process::Command::new("ps")
            .args(["-u", &uid.to_string(), "-o", "stat="])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !states().trim().is_empty() {
        assert!(
            Instant::now() < deadline,
            "{what}: processes survived: {:?}",
            states()
                .split_whitespace()
                .collect::<std::collections::BTreeSet<_>>()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn run_output(env: &TestEnv, path: &str, args: Value) -> (Value, String) {
    let id = env.run(path, args).await;
    let done = env.wait(&id, Duration::from_secs(60)).await;
    let logs = env.job_logs(&id).await;
    (done, logs)
}

#[tokio::test]
async fn a_job_cannot_read_the_workers_environment_or_memory() {
    if !jobs_have_own_users() {
        return;
    }
    let env = TestEnv::start().await;
    env.script(
        "u/alice/peek",
        "bash",
        "tr '\\0' '\\n' < /proc/$PPID/environ 2>&1 | head -c 20000\n\
         head -c 16 /proc/$PPID/mem 2>&1 | head -c 200\n\
         id -u\necho \"groups $(id -G)\"\n\
         echo \"dir $(stat -c '%u %a' .) $(stat -c '%u %g %a' ..) uid $(id -u)\"\necho end\n",
    )
    .await;
    let (done, logs) = run_output(&env, "u/alice/peek", json!({})).await;
    assert_eq!(done["result"], json!("end"), "{done}");
    for secret in [
        "DATABASE_URL",
        "SUPERADMIN_SECRET",
        "NATS_URL",
        "postgres://",
    ] {
        assert!(!logs.contains(secret), "the job read {secret}: {logs}");
    }
    assert!(logs.contains("Permission denied"), "{logs}");
    // Its own group only: none of the worker's (which holds every slot's group).
    let groups = logs
        .lines()
        .find_map(|l| l.strip_prefix("groups "))
        .unwrap();
    assert_eq!(groups.split_whitespace().count(), 1, "{logs}");
    assert!(
        !logs.lines().any(|l| l.trim() == "0"),
        "the job ran as root: {logs}"
    );
    // Its directory is its user's own, 0700, inside one of the worker's that its group may
    // only pass through.
    let dir = logs.lines().find_map(|l| l.strip_prefix("dir ")).unwrap();
    let [owner, mode, outer_owner, outer_group, outer_mode, "uid", uid] =
        dir.split(' ').collect::<Vec<_>>()[..]
    else {
        panic!("{logs}");
    };
    assert_eq!((owner, mode), (uid, "700"), "{logs}");
    assert_eq!(
        (outer_owner, outer_group, outer_mode),
        ("0", uid, "710"),
        "{logs}"
    );
}

#[tokio::test]
async fn jobs_cannot_read_or_signal_each_other() {
    if !jobs_have_own_users() {
        return;
    }
    let env = TestEnv::start().await;
    // The victim keeps a secret in its directory and its token in its environment.
    env.script(
        "u/alice/victim",
        "bash",
        "echo s3cret-file > secret.txt\nchmod 644 secret.txt\nsleep 4\ncat secret.txt\n",
    )
    .await;
    env.script(
        "u/alice/attacker",
        "bash",
        "victim=\"$1\"\ndir=\"$2\"\n\
         cat \"$dir/secret.txt\" 2>&1\n\
         ls \"$dir\" 2>&1\n\
         echo \"listed $(ls \"${dir%/*/*}\" 2>/dev/null | grep -c job-)\"\n\
         mv \"$dir\" \"$dir.gone\" 2>&1\n\
         rm -rf \"$dir\" 2>&1\n\
         for f in /proc/[0-9]*/environ; do tr '\\0' '\\n' < \"$f\" 2>/dev/null | grep -q \"$victim\" && echo \"FOUND $f\"; done\n\
         kill -9 -1 2>&1\n\
         pkill -9 -f 'sleep 4' 2>&1\n\
         echo tried\n",
    )
    .await;
    let victim = env.run("u/alice/victim", json!({})).await;
    // The harness (root) finds the victim's directory; the attacker is told where it is.
    let deadline = Instant::now() + Duration::from_secs(15);
    let victim_dir = loop {
        let found = job_dirs()
            .into_iter()
            .find(|d| d.join("secret.txt").exists());
        if let Some(dir) = found {
            break dir;
        }
        assert!(Instant::now() < deadline, "the victim never started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let attack = json!({"victim": victim, "dir": victim_dir.display().to_string()});
    let (done, logs) = run_output(&env, "u/alice/attacker", attack).await;
    assert_eq!(done["result"], json!("tried"), "{done}");
    assert!(
        !logs.contains("s3cret-file"),
        "read the victim's directory: {logs}"
    );
    assert!(
        logs.contains("listed 0"),
        "listed the job directories: {logs}"
    );
    assert!(
        !logs.contains("FOUND"),
        "read the victim's environment: {logs}"
    );
    let victim_done = env.wait(&victim, Duration::from_secs(30)).await;
    assert_eq!(
        victim_done["success"],
        json!(true),
        "the attacker killed the victim: {victim_done}"
    );
    assert_eq!(victim_done["result"], json!("s3cret-file"));
}

#[tokio::test]
async fn a_fork_bomb_is_contained_and_the_worker_goes_on() {
    if !jobs_have_own_users() {
        return;
    }
    // The default process limit; a user of its own, so that what is left of it can be counted
    // (the slot's first, 62100; the other four are kept for warm processes).
    let env = one_slot_env("62100-62109", &[]).await;
    env.script_with(
        "u/alice/bomb",
        "bash",
        "bomb() { bomb | bomb & }\nbomb\nsleep 60\n",
        json!({"timeout": 3}),
    )
    .await;
    env.script("u/alice/warm", "bash", "echo warm\n").await;
    env.run_ok("u/alice/warm", json!({})).await;
    let baseline = env.worker_rss_kib(0);
    let started = Instant::now();
    let id = env.run("u/alice/bomb", json!({})).await;
    let done = env.wait(&id, Duration::from_secs(30)).await;
    // It fails: killed at its timeout, or its shell killed while forks are refused.
    assert_eq!(done["success"], json!(false), "{done}");
    assert!(started.elapsed() < Duration::from_secs(20));
    // Nothing of it is left, and the next job runs as usual.
    none_left_of(62100, "the bomb").await;
    env.assert_worker_idle(0, baseline).await;
    env.script("u/alice/after", "bash", "echo fine\n").await;
    assert_eq!(env.run_ok("u/alice/after", json!({})).await, json!("fine"));
}

#[tokio::test]
async fn a_process_that_left_the_group_dies_with_its_job() {
    if !jobs_have_own_users() {
        return;
    }
    let env = TestEnv::start().await;
    env.script("u/alice/escape", "bash", "setsid sleep 987 &\nsleep 60\n")
        .await;
    let id = env.run("u/alice/escape", json!({})).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    let escaped = || {
        std::process::Command::new("pgrep")
            .args(["-f", "sleep 987"])
            .status()
            .unwrap()
            .success()
    };
    while !escaped() {
        assert!(Instant::now() < deadline, "the escapee never started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    env.cancel(&id).await;
    env.wait(&id, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!escaped(), "a setsid process outlived its cancelled job");
}

#[tokio::test]
async fn what_a_finished_job_left_behind_is_gone_before_its_user_runs_again() {
    if !jobs_have_own_users() {
        return;
    }
    // A job that ends by itself may leave processes behind: one that still holds its output
    // (killed before the job's answer, or its output would never end) and one that let go of
    // it and keeps writing — a heartbeat into a directory of the test's, files into /tmp —
    // (killed beside the answer, and again before its user serves the slot's next job); and
    // files, in /tmp too, even a tree too deep to be named by one path.
    let env = one_slot_env("62300-62301", &[("WORKER_WARM", "0")]).await;
    let beats = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        beats.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let letgo = "dir=\"$1\"\nsetsid sh -c 'while :; do date +%s%N >> \"$0/beat\"; : > /tmp/mr-left-$$-$(date +%N); sleep 0.002; done' \"$dir\" </dev/null >/dev/null 2>&1 &\nsleep 0.05\necho left\n";
    env.script("u/alice/holder", "bash", "sleep 983 &\necho left\n")
        .await;
    env.script("u/alice/letgo", "bash", letgo).await;
    // A tree in /tmp nested deeper than a path may be long (PATH_MAX, 4096 bytes).
    env.script(
        "u/alice/deep",
        "bash",
        "cd /tmp && mkdir deep-$$ && cd deep-$$ && for i in $(seq 1 100); do mkdir d23456789012345678901234567890123456789012345678901234567890 && cd d23456789012345678901234567890123456789012345678901234567890; done\necho left\n",
    )
    .await;
    // Its start (ns), then what of its user it finds: live processes besides its own, and
    // files at the top of the shared temporary directories. Killed processes may linger as
    // zombies until init reaps them: only live ones count.
    env.script(
        "u/alice/count",
        "bash",
        "start=$(date +%s%N)\nps -u \"$(id -u)\" -o stat=,args= >&2\nlive=$(ps -u \"$(id -u)\" -o stat=,comm= | awk '$1 !~ /^Z/ && ($2 == \"sleep\" || $2 == \"sh\")' | wc -l)\nfind /tmp /var/tmp /dev/shm -maxdepth 1 -user \"$(id -u)\" -printf '%T@ %p\\n' >&2\nfiles=$(find /tmp /var/tmp /dev/shm -maxdepth 1 -user \"$(id -u)\" | wc -l)\necho \"$start $live $files\"\n",
    )
    .await;
    let args = json!({"dir": beats.path().to_str().unwrap()});
    for round in 0..6 {
        let leaver = ["u/alice/holder", "u/alice/letgo", "u/alice/deep"][round % 3];
        assert_eq!(
            env.run_ok(leaver, args.clone()).await,
            json!("left"),
            "round {round}"
        );
        let (done, logs) = run_output(&env, "u/alice/count", json!({})).await;
        let found = done["result"].as_str().unwrap_or_default().to_owned();
        let [start, live, files] = found.split(' ').collect::<Vec<_>>()[..] else {
            panic!("round {round}: {done}");
        };
        assert_eq!((live, files), ("0", "0"), "round {round}, {leaver}: {logs}");
        // Nothing of the job ran once its user's next job had started.
        let last_beat = std::fs::read_to_string(beats.path().join("beat"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.parse::<u128>().ok())
            .max();
        if leaver == "u/alice/letgo" {
            let last_beat = last_beat.expect("the leftover never ran");
            assert!(
                last_beat < start.parse::<u128>().unwrap(),
                "round {round}: a heartbeat at {last_beat} after the next job's start {start}"
            );
        }
    }
    none_left_of(62300, "after the last job").await;
}

#[tokio::test]
async fn a_dead_workers_job_leaves_nothing_to_the_next_job_of_its_user() {
    use std::os::unix::fs::MetadataExt;
    if !jobs_have_own_users() {
        return;
    }
    // Users no other test's workers take, so the next worker here gets the same ones: the
    // slot's first, 62000, and four kept for warm processes.
    let mut env = one_slot_env("62000-62009", &[]).await;
    env.script(
        "u/alice/orphan",
        "bash",
        "echo leftover > secret.txt\nsleep 986\n",
    )
    .await;
    env.run("u/alice/orphan", json!({})).await;
    let left_behind = || {
        let pids = std::process::Command::new("pgrep")
            .args(["-u", "62000", "-f", "sleep 986"])
            .output()
            .unwrap();
        let pids: Vec<String> = String::from_utf8_lossy(&pids.stdout)
            .split_whitespace()
            .map(String::from)
            .collect();
        let dirs: Vec<std::path::PathBuf> = job_dirs()
            .into_iter()
            .filter(|p| std::fs::metadata(p).is_ok_and(|m| m.gid() == 62000))
            .collect();
        (pids, dirs)
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    let (pids, dirs) = loop {
        let (pids, dirs) = left_behind();
        if !pids.is_empty() && !dirs.is_empty() {
            break (pids, dirs);
        }
        assert!(Instant::now() < deadline, "the job never started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // The worker's reaper would kill the job's processes at once (tested in fencing.rs): it
    // dies first here, as when a whole node's processes are killed in no order, so that what
    // is left is the next worker's to clear.
    let reaper = std::process::Command::new("pgrep")
        .args([
            "-f",
            "reap-job-users .* 62000:62005 62001:62006 62002:62007 62003:62008 62004:62009$",
        ])
        .output()
        .unwrap();
    let reaper = String::from_utf8_lossy(&reaper.stdout).trim().to_owned();
    let reaper: i32 = reaper
        .parse()
        .unwrap_or_else(|_| panic!("one reaper: {reaper:?}"));
    // It keeps only the right to take a user, and not the job users' groups.
    let status = std::fs::read_to_string(format!("/proc/{reaper}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_default()
            .trim()
            .to_owned()
    };
    assert_eq!(field("CapEff:"), format!("{:016x}", 1u64 << 7), "{status}");
    assert_eq!(field("CapPrm:"), format!("{:016x}", 1u64 << 7), "{status}");
    assert!(!field("Groups:").contains("62000"), "{status}");
    // SAFETY: kill(2) on the pid pgrep just found.
    unsafe { libc::kill(reaper, libc::SIGKILL) };
    env.kill_worker(0);
    assert_eq!(
        left_behind().0,
        pids,
        "a crashed worker without its reaper leaves its job running"
    );
    // And one left by a worker from before job directories had a `work` inside: the user's
    // files (a directory it closed too) and the worker's, straight in `job-…`.
    let legacy = std::env::temp_dir().join("millrace-0/job-legacy-62000");
    std::fs::create_dir_all(legacy.join("closed")).unwrap();
    std::fs::write(legacy.join("main.sh"), "echo old\n").unwrap();
    std::fs::write(legacy.join("closed/secret.txt"), "old secret\n").unwrap();
    for (path, mode) in [
        (legacy.join("closed/secret.txt"), 0o600),
        (legacy.join("closed"), 0o700),
    ] {
        std::os::unix::fs::chown(&path, Some(62000), Some(62000)).unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(mode))
            .unwrap();
    }
    std::os::unix::fs::chown(&legacy, None, Some(62000)).unwrap();
    std::fs::set_permissions(&legacy, std::os::unix::fs::PermissionsExt::from_mode(0o770)).unwrap();
    env.add_worker(&[]);
    // The new worker takes the user over: the orphan and its directory are gone (the job
    // itself, redelivered, may run again — as a new process in a new directory).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (now_pids, now_dirs) = left_behind();
        let gone = pids.iter().all(|p| !now_pids.contains(p))
            && dirs.iter().all(|d| !d.parent().unwrap().exists())
            && !legacy.exists();
        if gone {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "left behind: {now_pids:?} {now_dirs:?} {}",
            legacy.exists()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Whether this machine lets a root worker make cgroup v1 memory and pids groups, or has a
/// delegated v2 cgroup (CI's machines have the former); the worker says which in its log.
fn job_cgroups_in_log(env: &TestEnv) -> bool {
    let logs = env.logs();
    if logs.contains("no cgroups for jobs") {
        let why = logs
            .lines()
            .find(|l| l.contains("no cgroups for jobs"))
            .unwrap_or_default();
        eprintln!("skipped: this machine lets the worker make no cgroups: {why}");
        return false;
    }
    assert!(
        logs.contains("jobs run in cgroups of their own"),
        "the worker said nothing about cgroups:\n{logs}"
    );
    true
}

#[tokio::test]
async fn a_jobs_processes_share_one_memory_and_process_budget() {
    if !jobs_have_own_users() {
        return;
    }
    let env = TestEnv::with(Options {
        workers: 1,
        worker_env: vec![
            ("JOB_CGROUPS".into(), "on".into()),
            ("JOB_MEMORY_LIMIT".into(), (200u64 << 20).to_string()),
            ("JOB_MAX_PROCESSES".into(), "77".into()),
        ],
        ..Default::default()
    })
    .await;
    env.script(
        "u/alice/where",
        "bash",
        "echo \"oom $(cat /proc/self/oom_score_adj)\"\n\
         grep -E ':(memory|pids):|^0::' /proc/self/cgroup\n\
         for f in $(sed -n 's/^[0-9]*:\\(pids\\|memory\\):\\(.*\\)/\\1\\2/p;s/^0::\\(.*\\)/unified\\1/p' /proc/self/cgroup); do\n\
           d=/sys/fs/cgroup/$f\n\
           cat $d/pids.max $d/memory.limit_in_bytes $d/memory.max 2>/dev/null\n\
         done\n",
    )
    .await;
    let (_, logs) = run_output(&env, "u/alice/where", json!({})).await;
    // Out of memory, the kernel takes a job's process before the worker.
    assert!(logs.contains("oom 1000"), "{logs}");
    if !job_cgroups_in_log(&env) {
        return;
    }
    assert!(logs.contains("millrace-job-"), "{logs}");
    // A root worker with only CAP_SETUID/CAP_SETGID may find the pids hierarchy read-only (as
    // here): then RLIMIT_NPROC alone counts the job's processes.
    if logs
        .lines()
        .any(|l| l.contains(":pids:/") && l.contains("millrace-job-"))
    {
        assert!(logs.lines().any(|l| l.trim() == "77"), "pids.max: {logs}");
    }
    assert!(
        logs.lines().any(|l| l.trim() == (200u64 << 20).to_string()),
        "memory limit: {logs}"
    );

    // Three processes of 150 MiB each: every one is within its own limit (the rlimit is per
    // process), together they are over the job's 200 MiB, and the kernel stops them.
    env.script(
        "u/alice/hog",
        "bash",
        "for i in 1 2 3; do\n\
           python3 -c \"b = bytearray(150 << 20)\nfor i in range(0, len(b), 4096): b[i] = 1\nimport time; time.sleep(3); print('held')\" &\n\
         done\n\
         wait\necho end\n",
    )
    .await;
    let (_, logs) = run_output(&env, "u/alice/hog", json!({})).await;
    assert!(logs.contains("end"), "{logs}");
    assert!(
        logs.lines().filter(|l| l.trim() == "held").count() < 3,
        "450 MiB held under a 200 MiB job limit: {logs}"
    );
    // The worker is unharmed.
    env.script("u/alice/ok", "bash", "echo '1' > result.json\n")
        .await;
    assert_eq!(env.run_ok("u/alice/ok", json!({})).await, json!(1));
}

#[tokio::test]
async fn the_worker_reads_no_result_but_a_plain_file_of_the_job() {
    if !jobs_have_own_users() {
        return;
    }
    let env = TestEnv::start().await;
    // A secret only the worker may read, which a link in place of result.json would hand over.
    let secret = env.nats_password_file("worker");
    env.scratch();
    for (name, setup) in [
        ("link", format!("ln -s {} result.json", secret.display())),
        ("device", "ln -s /dev/zero result.json".into()),
        ("fifo", "mkfifo result.json".into()),
        (
            "hardlink",
            "echo '\"x\"' > a.json; ln a.json result.json".into(),
        ),
    ] {
        let path = format!("u/alice/result_{name}");
        env.script(&path, "bash", &format!("{setup}\necho planted\n"))
            .await;
        let started = Instant::now();
        let (done, logs) = run_output(&env, &path, json!({})).await;
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{name}: took {:?}",
            started.elapsed()
        );
        assert_eq!(done["success"], json!(false), "{name}: {done}\n{logs}");
        let text = done.to_string();
        assert!(text.contains("ResultError"), "{name}: {text}");
        assert!(
            !text.contains(env.nats.password("worker")),
            "{name} leaked the secret"
        );
    }
    // The worker goes on.
    env.script("u/alice/ok", "bash", "echo '1' > result.json\n")
        .await;
    assert_eq!(env.run_ok("u/alice/ok", json!({})).await, json!(1));
}

#[tokio::test]
async fn a_job_cannot_stop_the_kill_of_its_own_processes() {
    if !jobs_have_own_users() {
        return;
    }
    // The worker kills a job's processes through a short-lived helper that takes the job's
    // user. A job that stops everything its user may signal, without end, must not be able to
    // stop that helper (the worker would wait for it forever, its slot lost).
    let env = one_slot_env("62200-62201", &[("WORKER_WARM", "0")]).await;
    env.script_with(
        "u/alice/stopper",
        "bash",
        "while :; do kill -STOP -1; done 2>/dev/null\n",
        json!({"timeout": 1}),
    )
    .await;
    env.script("u/alice/after", "bash", "echo fine\n").await;
    // Each round is one chance for the attacker to catch the helper between taking the user
    // and killing; a stopped helper hangs the slot, so the next job would never finish.
    for round in 0..12 {
        let id = env.run("u/alice/stopper", json!({})).await;
        let done = env.wait(&id, Duration::from_secs(30)).await;
        assert_eq!(
            done["result"]["error"]["name"],
            json!("Timeout"),
            "round {round}: {done}"
        );
        // Killed, though stopped: nothing of the job's user is left.
        none_left_of(62200, &format!("round {round}")).await;
    }
    assert_eq!(env.run_ok("u/alice/after", json!({})).await, json!("fine"));
}

#[tokio::test]
async fn a_jobs_limits_are_the_ones_configured() {
    if !jobs_have_own_users() {
        return;
    }
    let env = TestEnv::with(Options {
        workers: 1,
        worker_env: vec![
            ("JOB_MAX_OPEN_FILES".into(), "333".into()),
            ("JOB_MAX_FILE_SIZE".into(), "1048576".into()),
            ("JOB_MEMORY_LIMIT".into(), "536870912".into()),
            ("JOB_MAX_PROCESSES".into(), "77".into()),
        ],
        ..Default::default()
    })
    .await;
    // Open files, file size (1 KiB blocks), data (KiB), processes, core dumps, CPU seconds.
    env.script(
        "u/alice/limits",
        "bash",
        "echo \"$(ulimit -n) $(ulimit -f) $(ulimit -d) $(ulimit -u) $(ulimit -c) $(ulimit -t)\"\n",
    )
    .await;
    let seen = env.run_ok("u/alice/limits", json!({})).await;
    let seen = seen.as_str().unwrap_or_default().to_owned();
    let fields: Vec<&str> = seen.split_whitespace().collect();
    assert_eq!(fields[..5], ["333", "1024", "524288", "77", "0"], "{seen}");
    // CPU time is a backstop derived from the job's timeout: a number, not unlimited.
    assert!(fields[5].parse::<u64>().is_ok_and(|s| s > 0), "{seen}");
}

#[tokio::test]
async fn a_worker_that_cannot_change_users_says_so_once_and_runs_jobs_as_itself() {
    if !jobs_have_own_users() {
        return;
    }
    // Root without CAP_SETUID and CAP_SETGID may change users no more than a plain user.
    let env = TestEnv::with(Options {
        workers: 1,
        worker_bounding_set: Some("-all".into()),
        ..Default::default()
    })
    .await;
    env.script("u/alice/who", "bash", "echo \"uid $(id -u)\"\n")
        .await;
    for _ in 0..2 {
        let (done, logs) = run_output(&env, "u/alice/who", json!({})).await;
        assert_eq!(done["success"], json!(true), "{done}");
        assert!(logs.contains("uid 0"), "not the worker's own user: {logs}");
    }
    let logs = env.logs();
    let warnings: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("may not change users"))
        .collect();
    assert_eq!(warnings.len(), 1, "{logs}");
    assert!(warnings[0].contains("WARN"), "{}", warnings[0]);
    assert!(
        warnings[0].contains("do not run untrusted code here"),
        "{}",
        warnings[0]
    );
}

#[tokio::test]
async fn what_a_job_made_in_system_v_ipc_is_gone_before_its_user_runs_again() {
    if !jobs_have_own_users() {
        return;
    }
    // Shared memory, message queues and semaphores outlive their processes, as files in /tmp
    // do; the slot's next job may be another tenant's. POSIX message queues may not be made.
    let env = one_slot_env("62400-62401", &[("WORKER_WARM", "0")]).await;
    env.script(
        "u/alice/ipc",
        "bash",
        "count() { awk -v u=\"$(id -u)\" -v c=\"$2\" 'NR > 1 && $c == u' \"/proc/sysvipc/$1\" | wc -l; }\n\
         echo \"before $(count shm 8) $(count msg 8) $(count sem 5)\"\n\
         ipcmk -M 4096 >/dev/null && ipcmk -Q >/dev/null && ipcmk -S 1 >/dev/null\n\
         perl -MIPC::SysV=IPC_PRIVATE,IPC_CREAT,S_IRUSR,S_IWUSR -MIPC::Msg \
           -e '$q = IPC::Msg->new(IPC_PRIVATE, IPC_CREAT|S_IRUSR|S_IWUSR) or die; $q->set(uid => 0) or die; print \"given\\n\"'\n\
         echo \"after $(count shm 8) $(count msg 8) $(count sem 5)\"\n\
         echo \"mqueue $(ulimit -q)\"\n",
    )
    .await;
    // Owned or made by the user: a job may give what it made to another user (root here).
    let owned_by_user = || {
        ["shm", "msg", "sem"]
            .iter()
            .zip([[7, 9], [7, 9], [4, 6]])
            .map(|(file, columns)| {
                std::fs::read_to_string(format!("/proc/sysvipc/{file}"))
                    .unwrap()
                    .lines()
                    .skip(1)
                    .filter(|l| {
                        let fields: Vec<&str> = l.split_whitespace().collect();
                        columns.iter().any(|c| fields.get(*c) == Some(&"62400"))
                    })
                    .count()
            })
            .sum::<usize>()
    };
    for round in 0..2 {
        let (done, logs) = run_output(&env, "u/alice/ipc", json!({})).await;
        assert_eq!(done["success"], json!(true), "{done}");
        assert!(logs.contains("before 0 0 0"), "round {round}: {logs}");
        assert!(logs.contains("after 1 1 1"), "round {round}: {logs}");
        assert!(logs.contains("given"), "round {round}: {logs}");
        assert!(logs.contains("mqueue 0"), "round {round}: {logs}");
        crate::common::eventually(
            Duration::from_secs(10),
            "the job's IPC objects removed",
            async || owned_by_user() == 0,
        )
        .await;
    }
}

#[tokio::test]
async fn a_jobs_keys_are_gone_before_its_user_runs_again() {
    if !jobs_have_own_users() {
        return;
    }
    // A uid's kernel keyrings outlive its processes. Six runs over at most five users: some
    // user runs twice, warm (the fork server) or cold alike.
    let env = one_slot_env("62500-62509", &[]).await;
    env.script(
        "u/alice/keys",
        "python3",
        "import ctypes, os, platform\n\
         def main():\n\
         \x20   libc = ctypes.CDLL(None, use_errno=True)\n\
         \x20   add_key, keyctl = {'x86_64': (248, 250), 'aarch64': (217, 219)}[platform.machine()]\n\
         \x20   user = ctypes.c_long(-4)\n\
         \x20   found = libc.syscall(keyctl, 10, user, b'user', b'millrace-test', 0)\n\
         \x20   seen = None\n\
         \x20   if found > 0:\n\
         \x20       buf = ctypes.create_string_buffer(64)\n\
         \x20       n = libc.syscall(keyctl, 11, found, buf, 64)\n\
         \x20       seen = buf.raw[:n].decode()\n\
         \x20   made = libc.syscall(add_key, b'user', b'millrace-test', b'tenant-data', 11, user)\n\
         \x20   return {'uid': os.getuid(), 'seen': seen, 'made': made > 0}\n",
    )
    .await;
    let mut uids = std::collections::HashSet::new();
    let mut repeated = false;
    for round in 0..6 {
        let result = env.run_ok("u/alice/keys", json!({})).await;
        assert_eq!(result["made"], json!(true), "round {round}: {result}");
        assert_eq!(result["seen"], Value::Null, "round {round}: {result}");
        repeated |= !uids.insert(result["uid"].as_u64().unwrap());
    }
    assert!(repeated, "no user ran twice: {uids:?}");
}
