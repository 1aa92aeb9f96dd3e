//! The `python3` fork servers: one that has imported `WORKER_PYTHON_PREIMPORT`'s modules, for
//! the scripts that name one of them, and a bare one for every other script. A child's fork,
//! copy-on-write faults and teardown grow with the interpreter it copies: ~27 MB with `wmill`
//! imported, ~14 without, and 1.6 against 0.73 ms of CPU per job to fork and end a child
//! (docs/benchmarks.md) — on two cores, a trivial job's largest cost.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::forkserver::ForkServer;

/// How long a fork server may take to start.
const SERVER_READY_WITHIN: Duration = Duration::from_secs(20);
/// Between two starts of a fork server.
const SERVER_RESTART_PAUSE: Duration = Duration::from_secs(1);

/// Which fork server a script's processes come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Server {
    /// The wrapper's own modules only.
    Bare,
    /// Those of `WORKER_PYTHON_PREIMPORT` too.
    Preimported,
}

impl Server {
    fn index(self) -> usize {
        self as usize
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Bare => "bare",
            Self::Preimported => "preimporting",
        }
    }
}

/// The fork servers of one worker, while they run.
pub struct Python {
    program: PathBuf,
    files_in: PathBuf,
    /// `WORKER_PYTHON_PREIMPORT` as configured.
    preimport: String,
    /// The top-level package of each of its modules: a script naming one takes the
    /// preimporting server.
    packages: Vec<String>,
    servers: [Mutex<Option<Arc<ForkServer>>>; 2],
}

impl Python {
    pub fn new(program: PathBuf, preimport: &str, files_in: PathBuf) -> Self {
        let mut packages: Vec<String> = preimport
            .split(',')
            .filter_map(|module| module.trim().split('.').next())
            .filter(|package| !package.is_empty())
            .map(str::to_owned)
            .collect();
        packages.sort();
        packages.dedup();
        Self {
            program,
            files_in,
            preimport: preimport.to_owned(),
            packages,
            servers: Default::default(),
        }
    }

    /// The server for a script: the preimporting one if its text names a preimported package
    /// as a word (`import wmill`, `from wmill.client import …`, `wmill.get_variable`; in a
    /// comment too, which costs only speed), else the bare one. A script that imports one
    /// some other way still runs, paying for that import itself.
    pub fn server_for(&self, content: &str) -> Server {
        if self.packages.iter().any(|p| names_word(content, p)) {
            Server::Preimported
        } else {
            Server::Bare
        }
    }

    /// The servers that run: with nothing to preimport, only the bare one.
    pub fn servers(&self) -> &'static [Server] {
        if self.packages.is_empty() {
            &[Server::Bare]
        } else {
            &[Server::Bare, Server::Preimported]
        }
    }

    /// The server `which`, while it runs.
    pub fn server(&self, which: Server) -> Option<Arc<ForkServer>> {
        self.servers[which.index()]
            .lock()
            .expect("server lock")
            .clone()
    }

    /// The server `which` if it runs, else the other one: while one restarts, its scripts fork
    /// from the other (from the bare one, paying for their imports; a cold start would too).
    pub fn running(&self, which: Server) -> Option<(Server, Arc<ForkServer>)> {
        let other = match which {
            Server::Bare => Server::Preimported,
            Server::Preimported => Server::Bare,
        };
        [which, other]
            .into_iter()
            .find_map(|server| Some((server, self.server(server)?)))
    }

    /// Starts the fork servers, and keeps each running (one that is gone is replaced). Call it
    /// from a task of the worker's runtime: a server dies with the spawning thread.
    pub fn boot(self: &Arc<Self>) {
        for &server in self.servers() {
            tokio::spawn(self.clone().keep_running(server));
        }
    }

    async fn keep_running(self: Arc<Self>, which: Server) {
        let preimport = match which {
            Server::Bare => "",
            Server::Preimported => &self.preimport,
        };
        let name = which.name();
        loop {
            let started = ForkServer::start(
                &self.program,
                preimport,
                &self.files_in,
                SERVER_READY_WITHIN,
            )
            .await;
            match started {
                Ok(server) => {
                    tracing::info!(server = name, "python3 jobs fork from a warm interpreter");
                    let slot = &self.servers[which.index()];
                    *slot.lock().expect("server lock") = Some(server.clone());
                    server.gone().await;
                    slot.lock().expect("server lock").take();
                    tracing::warn!(
                        server = name,
                        "a python3 fork server is gone: starting another"
                    );
                }
                Err(e) => tracing::warn!(server = name, error = %e,
                    "cannot start a python3 fork server: its python3 jobs start cold"),
            }
            tokio::time::sleep(SERVER_RESTART_PAUSE).await;
        }
    }
}

/// Whether `word` occurs in `text` other than as part of a longer identifier.
fn names_word(text: &str, word: &str) -> bool {
    let part_of_name = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
    text.match_indices(word).any(|(at, _)| {
        !part_of_name(text[..at].chars().next_back())
            && !part_of_name(text[at + word.len()..].chars().next())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn python(preimport: &str) -> Python {
        Python::new("python3".into(), preimport, "/tmp".into())
    }

    #[test]
    fn a_script_naming_a_preimported_package_takes_the_preimporting_server() {
        let python = python("wmill, requests.adapters");
        for script in [
            "import wmill\ndef main(): return wmill.get_variable('x')",
            "from wmill.client import Windmill",
            "def main():\n    import requests\n    return 1",
            "x = 1  # wmill",
        ] {
            assert_eq!(python.server_for(script), Server::Preimported, "{script}");
        }
        for script in [
            "def main(): return 1",
            "import wmillx\nimport my_wmill\nrequests_made = 0",
            "",
        ] {
            assert_eq!(python.server_for(script), Server::Bare, "{script}");
        }
    }

    #[test]
    fn with_nothing_to_preimport_every_script_takes_the_bare_server() {
        let python = python(" , ");
        assert!(python.packages.is_empty());
        assert_eq!(python.server_for("import wmill"), Server::Bare);
    }
}
