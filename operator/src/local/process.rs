//! Child processes: finding `textrec-worker`, starting it, and signalling it.

use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::Result;

/// Environment variable naming the worker binary.
pub const WORKER_ENV: &str = "TEXTREC_WORKER";
/// File name of the worker binary.
pub const WORKER_BIN: &str = "textrec-worker";

/// Find the worker: `--worker`, else `$TEXTREC_WORKER`, else next to this executable, else on
/// `PATH`. The error names every place looked at.
pub fn find_worker(
    flag: Option<&Path>,
    env: Option<OsString>,
    exe_dir: Option<&Path>,
    path_var: Option<OsString>,
) -> Result<PathBuf, String> {
    let mut looked = Vec::new();
    if let Some(p) = flag {
        if p.is_file() {
            return Ok(p.to_path_buf());
        }
        return Err(format!("--worker {}: no such file", p.display()));
    }
    if let Some(p) = env.filter(|p| !p.is_empty()).map(PathBuf::from) {
        if p.is_file() {
            return Ok(p);
        }
        return Err(format!("{WORKER_ENV}={}: no such file", p.display()));
    }
    looked.push(format!("--worker (not given), ${WORKER_ENV} (not set)"));
    if let Some(dir) = exe_dir {
        let p = dir.join(WORKER_BIN);
        if p.is_file() {
            return Ok(p);
        }
        looked.push(format!("next to textrec-operator ({})", p.display()));
    }
    if let Some(path) = path_var {
        for dir in std::env::split_paths(&path) {
            let p = dir.join(WORKER_BIN);
            if p.is_file() {
                return Ok(p);
            }
        }
        looked.push("every folder of $PATH".into());
    }
    Err(format!(
        "cannot find {WORKER_BIN}: looked at {}. Build it (`cargo build --release -p textrec-worker`) and pass --worker PATH or set {WORKER_ENV}",
        looked.join(", ")
    ))
}

/// [`find_worker`] with this process's environment.
pub fn locate_worker(flag: Option<&Path>) -> Result<PathBuf> {
    let exe_dir = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf));
    find_worker(
        flag,
        std::env::var_os(WORKER_ENV),
        exe_dir.as_deref(),
        std::env::var_os("PATH"),
    )
    .map_err(anyhow::Error::msg)
}

/// Why a child process did not start.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// Its log file cannot be opened: a problem of the runner's folder, which may pass.
    #[error("cannot open log {}: {error}", path.display())]
    Log {
        /// The log file.
        path: PathBuf,
        /// What the OS said.
        error: io::Error,
    },
    /// The OS refused to run the program with these arguments and environment.
    #[error("cannot start {}: {}", program.display(), explain(error))]
    Exec {
        /// The program.
        program: PathBuf,
        /// What the OS said.
        error: io::Error,
    },
}

impl SpawnError {
    /// Whether starting the same program with the same arguments again is bound to fail the
    /// same way: the arguments or environment exceed the OS limit (E2BIG), the program or its
    /// interpreter is missing (ENOENT), may not be executed (EACCES) or is no program for this
    /// machine (ENOEXEC), or an argument holds a NUL byte.
    pub fn is_permanent(&self) -> bool {
        match self {
            SpawnError::Log { .. } => false,
            SpawnError::Exec { error, .. } => {
                matches!(
                    error.raw_os_error(),
                    Some(libc::E2BIG | libc::ENOENT | libc::EACCES | libc::ENOEXEC)
                ) || error.kind() == io::ErrorKind::InvalidInput
            }
        }
    }
}

/// What an exec error means for the person who has to fix it.
fn explain(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::E2BIG) => "argument list too long (E2BIG): a spec.hyperparameters or spec.env \
            value is over the OS limit of 128 KiB, or all of them together are over ARG_MAX"
            .into(),
        Some(libc::ENOENT) => "no such file (ENOENT), or its script interpreter is missing".into(),
        Some(libc::EACCES) => {
            "permission denied (EACCES): not executable, or on a file system mounted noexec".into()
        }
        Some(libc::ENOEXEC) => "exec format error (ENOEXEC): not a program for this machine".into(),
        _ => e.to_string(),
    }
}

/// Start `program args…` with stdout and stderr appended to `log`, in its own process group
/// (a Ctrl-C in the terminal reaches only the runner, which then stops its children in order),
/// and, on Linux, with SIGTERM sent to it if the runner dies, so no worker outlives it.
pub fn spawn(
    program: &Path,
    args: &[String],
    env: &[(String, String)],
    log: &Path,
) -> Result<tokio::process::Child, SpawnError> {
    let log_error = |error| SpawnError::Log {
        path: log.to_path_buf(),
        error,
    };
    if let Some(dir) = log.parent() {
        std::fs::create_dir_all(dir).map_err(log_error)?;
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(log_error)?;
    let err = file.try_clone().map_err(log_error)?;
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::from(file))
        .stderr(Stdio::from(err))
        .kill_on_drop(false);
    #[cfg(unix)]
    cmd.process_group(0);
    #[cfg(target_os = "linux")]
    // SAFETY: prctl is async-signal-safe and touches only the child's own state.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn().map_err(|error| SpawnError::Exec {
        program: program.to_path_buf(),
        error,
    })
}

/// Send `signal` to process `pid`; false when it does not exist (any more).
pub fn signal(pid: u32, signal: i32) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    // SAFETY: kill(2) with a positive pid only sends a signal.
    unsafe { libc::kill(pid, signal) == 0 }
}

/// Whether process `pid` exists and has not exited. A zombie (exited, not yet reaped by its
/// parent, e.g. a `local run` started by a test harness) counts as gone.
pub fn alive(pid: u32) -> bool {
    if !signal(pid, 0) {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name, which may itself hold spaces.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_none_or(|state| state != "Z" && state != "X"),
        Err(_) => true,
    }
}

/// SIGTERM.
pub const SIGTERM: i32 = libc::SIGTERM;
/// SIGKILL.
pub const SIGKILL: i32 = libc::SIGKILL;
/// SIGHUP.
pub const SIGHUP: i32 = libc::SIGHUP;

/// Whether `pid` runs `textrec-worker` (a pid recorded by an earlier runner may be reused by
/// an unrelated process; never signal that one).
pub fn is_worker(pid: u32) -> bool {
    match std::fs::read(format!("/proc/{pid}/cmdline")) {
        Ok(cmd) => cmd
            .split(|b| *b == 0)
            .next()
            .is_some_and(|argv0| String::from_utf8_lossy(argv0).ends_with(WORKER_BIN)),
        // No /proc (not Linux): trust the pid.
        Err(_) => !Path::new("/proc/self").exists() && alive(pid),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn exited_children_are_not_alive_even_before_they_are_reaped() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while alive(pid) {
            assert!(
                std::time::Instant::now() < deadline,
                "a zombie counts as alive"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        child.wait().unwrap();
        assert!(alive(std::process::id()));
    }

    #[test]
    fn worker_lookup_order_and_error() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join(WORKER_BIN);
        std::fs::write(&bin, "").unwrap();
        let other = tempfile::tempdir().unwrap();
        // Next to the executable.
        assert_eq!(
            find_worker(None, None, Some(dir.path()), None).unwrap(),
            bin
        );
        // On PATH.
        let path = std::env::join_paths([other.path(), dir.path()]).unwrap();
        assert_eq!(
            find_worker(None, None, Some(other.path()), Some(path.clone())).unwrap(),
            bin
        );
        // The environment wins over both; the flag over everything.
        let env_bin = other.path().join("w");
        std::fs::write(&env_bin, "").unwrap();
        assert_eq!(
            find_worker(None, Some(env_bin.clone().into()), Some(dir.path()), None).unwrap(),
            env_bin
        );
        assert_eq!(
            find_worker(Some(&bin), Some(env_bin.into()), None, None).unwrap(),
            bin
        );
        // Nothing found: every place is named.
        let e = find_worker(None, None, Some(other.path()), Some(other.path().into())).unwrap_err();
        for part in [
            "--worker",
            WORKER_ENV,
            "next to textrec-operator",
            "$PATH",
            "cargo build",
        ] {
            assert!(e.contains(part), "{e}");
        }
        assert!(
            find_worker(Some(Path::new("/nonexistent/w")), None, None, None)
                .unwrap_err()
                .contains("--worker /nonexistent/w")
        );
    }

    fn spawn_error(program: &Path, args: &[String]) -> SpawnError {
        let dir = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        // A Child needs a runtime to be created in, even one that is never awaited.
        let _guard = rt.enter();
        spawn(program, args, &[], &dir.path().join("w.log")).unwrap_err()
    }

    #[test]
    fn start_failures_that_retrying_cannot_fix_are_permanent() {
        let dir = tempfile::tempdir().unwrap();
        // ENOENT.
        let e = spawn_error(&dir.path().join("missing"), &[]);
        assert!(e.is_permanent(), "{e}");
        assert!(e.to_string().contains("ENOENT"), "{e}");
        // A script whose interpreter is missing: ENOENT too.
        let script = dir.path().join("script");
        std::fs::write(&script, "#!/nonexistent/interpreter\n").unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(spawn_error(&script, &[]).is_permanent());
        // EACCES: not executable.
        let plain = dir.path().join("plain");
        std::fs::write(&plain, "").unwrap();
        let e = spawn_error(&plain, &[]);
        assert!(e.is_permanent() && e.to_string().contains("EACCES"), "{e}");
        // E2BIG: one argument over Linux's 128 KiB per-string limit.
        let e = spawn_error(Path::new("/bin/true"), &["x".repeat(200_000)]);
        assert!(e.is_permanent() && e.to_string().contains("E2BIG"), "{e}");
        // A NUL byte in an argument.
        assert!(spawn_error(Path::new("/bin/true"), &["a\0b".into()]).is_permanent());
    }

    #[test]
    fn other_start_failures_may_pass() {
        let transient = |errno| SpawnError::Exec {
            program: "w".into(),
            error: io::Error::from_raw_os_error(errno),
        };
        for errno in [libc::EAGAIN, libc::ENOMEM, libc::EMFILE] {
            assert!(!transient(errno).is_permanent(), "errno {errno}");
        }
        let log = SpawnError::Log {
            path: "/l".into(),
            error: io::Error::from_raw_os_error(libc::EACCES),
        };
        assert!(!log.is_permanent());
    }
}
