//! Memory and process limits on a job's processes taken together (rlimits count one process
//! each, or one user): a cgroup per job user, where the worker may create cgroups — cgroup v2
//! when its own cgroup offers the `memory` and `pids` controllers (a delegated cgroup), else the
//! v1 `memory` and `pids` hierarchies (a host where the worker is root). A pod with a read-only
//! cgroup filesystem has neither; the rlimits remain.

use std::ffi::CString;
use std::io;
use std::path::{Path, PathBuf};

/// Where this worker makes its jobs' cgroups.
#[derive(Debug)]
pub enum Cgroups {
    /// The worker's own v2 cgroup, with `memory` and `pids` enabled for its children.
    V2 { base: PathBuf },
    /// The worker's own cgroups in those of the v1 `memory` and `pids` hierarchies it may
    /// write to (a root worker with only `CAP_SETUID`/`CAP_SETGID` may find one read-only).
    V1 {
        memory: Option<PathBuf>,
        pids: Option<PathBuf>,
    },
}

/// One job user's cgroup(s): the `cgroup.procs` files a job's process writes itself into.
#[derive(Debug)]
pub struct JobCgroup {
    procs: Vec<CString>,
}

impl Cgroups {
    /// The cgroups this worker may use, or why there are none. With `cheap_only`, only a v2
    /// hierarchy mounted with `favordynmods`: elsewhere the kernel makes each move into a cgroup
    /// wait for readers to drain (measured: 7–15 ms when moves are tens of ms apart), a cost
    /// paid by every job.
    pub fn detect(cheap_only: bool) -> Result<Self, String> {
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").map_err(|e| e.to_string())?;
        let own = std::fs::read_to_string("/proc/self/cgroup").map_err(|e| e.to_string())?;
        let v2 = mount_of(&mounts, |fs, options| {
            fs == "cgroup2" && (!cheap_only || options.split(',').any(|o| o == "favordynmods"))
        })
        .and_then(|mount| {
            let path = own.lines().find_map(|l| l.strip_prefix("0::"))?;
            Some(join(&mount, path))
        });
        if cheap_only && v2.is_none() {
            return Err(
                "moving a job into a cgroup is slow here (no cgroup v2 with \
                        favordynmods); JOB_CGROUPS=on uses them anyway"
                    .into(),
            );
        }
        if let Some(base) = v2 {
            match delegate_v2(&base) {
                Ok(()) => return Ok(Cgroups::V2 { base }),
                Err(e) => tracing::debug!(error = %e, "no cgroup v2 for jobs"),
            }
        }
        let v1 = |controller: &str| -> Option<PathBuf> {
            let mount = mount_of(&mounts, |fs, options| {
                fs == "cgroup" && options.split(',').any(|o| o == controller)
            })?;
            let path = own.lines().find_map(|l| {
                let mut parts = l.splitn(3, ':');
                let (_, names, path) = (parts.next()?, parts.next()?, parts.next()?);
                names.split(',').any(|n| n == controller).then_some(path)
            })?;
            Some(join(&mount, path))
        };
        let usable = |controller| v1(controller).filter(|dir| writable(dir));
        match (usable("memory"), usable("pids")) {
            (None, None) => Err("neither a delegated cgroup v2 with the memory and pids \
                                 controllers nor a writable cgroup v1 memory or pids hierarchy"
                .into()),
            (memory, pids) => Ok(Cgroups::V1 { memory, pids }),
        }
    }

    /// Makes (or takes again) the cgroup of job user `uid` with these limits.
    pub fn prepare(&self, uid: u32, memory: u64, processes: u64) -> io::Result<JobCgroup> {
        let name = format!("millrace-job-{uid}");
        let settings: Vec<(PathBuf, Vec<(&str, String)>)> = match self {
            Cgroups::V2 { base } => vec![(
                base.join(&name),
                vec![
                    ("memory.max", memory.to_string()),
                    // Past its memory a job is killed, not swapped out slowly.
                    ("memory.swap.max", "0".into()),
                    ("pids.max", processes.to_string()),
                ],
            )],
            Cgroups::V1 { memory: mem, pids } => {
                let mut settings = Vec::new();
                if let Some(mem) = mem {
                    // Memory and swap together may not go below memory alone: lifted first,
                    // so that a changed limit can be set in either direction.
                    settings.push((
                        mem.join(&name),
                        vec![
                            ("memory.memsw.limit_in_bytes", "-1".into()),
                            ("memory.limit_in_bytes", memory.to_string()),
                            ("memory.memsw.limit_in_bytes", memory.to_string()),
                        ],
                    ));
                }
                if let Some(pids) = pids {
                    settings.push((pids.join(&name), vec![("pids.max", processes.to_string())]));
                }
                settings
            }
        };
        let mut procs = Vec::new();
        for (dir, files) in settings {
            match std::fs::create_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
            }
            for (file, value) in files {
                match std::fs::write(dir.join(file), &value) {
                    Ok(()) => {}
                    // Swap accounting is a kernel option: without it there is no swap to limit.
                    Err(e) if e.kind() == io::ErrorKind::NotFound && file.contains("sw") => {}
                    Err(e) => return Err(io::Error::new(e.kind(), format!("{file}: {e}"))),
                }
            }
            let path = dir.join("cgroup.procs");
            procs.push(
                CString::new(path.as_os_str().as_encoded_bytes())
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?,
            );
        }
        Ok(JobCgroup { procs })
    }
}

impl JobCgroup {
    /// The `cgroup.procs` files a process writes itself into to join.
    pub fn procs_files(&self) -> impl Iterator<Item = &std::ffi::CStr> {
        self.procs.iter().map(CString::as_c_str)
    }

    /// Moves the calling process into the job's cgroup(s). Runs between fork and exec, before
    /// the child gives up the worker's user (whose right it is to move processes): only
    /// async-signal-safe calls.
    pub fn join(&self) -> io::Result<()> {
        for path in &self.procs {
            // SAFETY: open, write and close on a NUL-terminated path; "0" means the caller.
            unsafe {
                let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(io::Error::last_os_error());
                }
                let written = libc::write(fd, b"0".as_ptr().cast(), 1);
                let error = io::Error::last_os_error();
                libc::close(fd);
                if written != 1 {
                    return Err(error);
                }
            }
        }
        Ok(())
    }
}

/// The mount point of the first mount whose filesystem type and super options match.
fn mount_of(mountinfo: &str, matches: impl Fn(&str, &str) -> bool) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        // `id parent dev root mountpoint options [optional…] - fstype source superoptions`
        let (left, right) = line.split_once(" - ")?;
        let mount_point = left.split(' ').nth(4)?;
        let mut right = right.split(' ');
        let (fs, _source, options) = (right.next()?, right.next()?, right.next().unwrap_or(""));
        matches(fs, options).then(|| PathBuf::from(mount_point))
    })
}

fn join(mount: &Path, cgroup: &str) -> PathBuf {
    mount.join(cgroup.trim_start_matches('/'))
}

fn writable(dir: &Path) -> bool {
    let probe = dir.join(format!("millrace-probe-{}", std::process::id()));
    std::fs::create_dir(&probe).is_ok() && std::fs::remove_dir(&probe).is_ok()
}

/// Enables `memory` and `pids` for the children of the worker's v2 cgroup. A cgroup with
/// processes may not have controllers enabled below it, so the worker first moves itself into
/// a leaf of its own.
fn delegate_v2(base: &Path) -> io::Result<()> {
    let offered = std::fs::read_to_string(base.join("cgroup.controllers"))?;
    let has = |c: &str| offered.split_whitespace().any(|o| o == c);
    if !(has("memory") && has("pids")) {
        return Err(io::Error::other("memory and pids controllers not offered"));
    }
    let enable = || std::fs::write(base.join("cgroup.subtree_control"), "+memory +pids");
    if enable().is_ok() {
        return Ok(());
    }
    let leaf = base.join("millrace-worker");
    match std::fs::create_dir(&leaf) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    std::fs::write(leaf.join("cgroup.procs"), std::process::id().to_string())?;
    enable()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime shared:5 - cgroup cgroup rw,pids
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn mounts_are_found_by_type_and_controller() {
        let v1 = |c: &'static str| {
            mount_of(MOUNTINFO, move |fs, o| {
                fs == "cgroup" && o.split(',').any(|x| x == c)
            })
        };
        assert_eq!(v1("memory"), Some("/sys/fs/cgroup/memory".into()));
        assert_eq!(v1("pids"), Some("/sys/fs/cgroup/pids".into()));
        assert_eq!(v1("cpu"), None);
        assert_eq!(
            mount_of(MOUNTINFO, |fs, _| fs == "cgroup2"),
            Some("/sys/fs/cgroup/unified".into())
        );
        assert_eq!(
            join(Path::new("/sys/fs/cgroup/memory"), "/a/b"),
            PathBuf::from("/sys/fs/cgroup/memory/a/b")
        );
    }
}
