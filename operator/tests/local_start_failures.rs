//! `local run` with a worker the OS refuses to start: the trial fails at once with a message
//! that says why (visible in `local status`), and the runner exits instead of retrying the same
//! refusal forever. Needs no worker binary: each case builds its own broken one.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

fn manifest(dir: &Path, env_value: &str) -> std::path::PathBuf {
    let path = dir.join("run.yaml");
    std::fs::write(
        &path,
        format!(
            r#"
apiVersion: textrec.dev/v1alpha1
kind: TrainingRun
metadata: {{name: broken}}
spec:
  search: {{maxTrials: 1, parallelism: 1}}
  maxRestartsPerTrial: 3
  env: [{{name: TEXTREC_TEST_VALUE, value: "{env_value}"}}]
"#
        ),
    )
    .unwrap();
    path
}

/// Run `local run --no-serve` with `worker` until it exits (at most a minute); returns its exit
/// code and stderr, and the run's only trial from `local status -o json`.
fn run_with(dir: &Path, worker: &Path, env_value: &str) -> (i32, String, Value) {
    let storage = dir.join("storage");
    let mut child = Command::new(env!("CARGO_BIN_EXE_textrec-operator"))
        .args(["local", "run", "--no-serve", "--plain", "--storage"])
        .arg(&storage)
        .arg(manifest(dir, env_value))
        .env("TEXTREC_WORKER", worker)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code().unwrap_or(-1);
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            let out = child.wait_with_output().unwrap();
            panic!(
                "local run still retrying after a minute:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let stderr = String::from_utf8_lossy(&child.wait_with_output().unwrap().stderr).into_owned();
    let status = Command::new(env!("CARGO_BIN_EXE_textrec-operator"))
        .args(["local", "status", "-o", "json", "--storage"])
        .arg(&storage)
        .output()
        .unwrap();
    assert!(status.status.success(), "{status:?}");
    let list: Value = serde_json::from_slice(&status.stdout).unwrap();
    let trial = list["items"][0]["status"]["trials"][0].clone();
    (code, stderr, trial)
}

fn assert_failed_at_once(code: i32, stderr: &str, trial: &Value, why: &str) {
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(trial["phase"], "Failed", "{trial}\n{stderr}");
    // One attempt: failed at once, not after maxRestartsPerTrial retries.
    assert_eq!(trial["restarts"], 1, "{trial}");
    let message = trial["message"].as_str().unwrap_or_default();
    assert!(message.starts_with("StartError: "), "{message}");
    assert!(message.contains(why), "{message}");
    assert!(stderr.contains(why), "{stderr}");
}

#[test]
fn a_worker_that_is_not_executable_fails_the_trial_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let worker = dir.path().join("textrec-worker");
    std::fs::write(&worker, "").unwrap();
    std::fs::set_permissions(&worker, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, stderr, trial) = run_with(dir.path(), &worker, "x");
    assert_failed_at_once(code, &stderr, &trial, "EACCES");
}

#[test]
fn a_worker_whose_interpreter_is_missing_fails_the_trial_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let worker = dir.path().join("textrec-worker");
    std::fs::write(&worker, "#!/nonexistent/interpreter\n").unwrap();
    std::fs::set_permissions(&worker, std::fs::Permissions::from_mode(0o755)).unwrap();
    let (code, stderr, trial) = run_with(dir.path(), &worker, "x");
    assert_failed_at_once(code, &stderr, &trial, "ENOENT");
}

#[test]
fn arguments_over_the_os_limit_fail_the_trial_at_once() {
    let dir = tempfile::tempdir().unwrap();
    // A 200 KB environment value: over Linux's 128 KiB limit for one string.
    let (code, stderr, trial) = run_with(dir.path(), Path::new("/bin/true"), &"x".repeat(200_000));
    assert_failed_at_once(code, &stderr, &trial, "E2BIG");
}
