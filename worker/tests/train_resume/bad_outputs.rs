//! Bad configs, an unwritable output, a full disk and a read-only file system: a clear exit
//! and no checkpoint lost.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use textrec_contract::metrics::{TrialProgress, WorkerPhase};

use crate::harness::*;
use crate::train_support::complete_checkpoints;

#[test]
fn config_error_exits_78_and_names_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let termlog = dir.path().join("termination-log");
    let out = run(train_cmd(
        &dir.path().join("out"),
        &[
            "--set",
            "optimizer.learning_rate=0.1",
            "--termination-log",
            termlog.to_str().unwrap(),
        ],
    ));
    assert_eq!(out.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("learning_rate") && stderr.contains("`lr`"),
        "{stderr}"
    );
    let term: TrialProgress = serde_json::from_slice(&std::fs::read(&termlog).unwrap()).unwrap();
    assert_eq!(term.phase, WorkerPhase::Failed);
    assert!(term.message.unwrap().contains("learning_rate"));

    let bad_enum = run(train_cmd(&dir.path().join("out"), &["--set", "device=tpu"]));
    assert_eq!(bad_enum.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&bad_enum.stderr).contains("device"));
}

#[test]
fn unwritable_output_fails_fast_before_training() {
    let dir = tempfile::tempdir().unwrap();
    // A regular file where a folder must go: not writable even for root.
    let blocker = dir.path().join("not-a-folder");
    std::fs::write(&blocker, b"x").unwrap();
    let started = Instant::now();
    let out = run(train_cmd(&blocker.join("trial"), &[]));
    assert_eq!(out.status.code(), Some(78));
    assert!(started.elapsed() < Duration::from_secs(30));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("not-a-folder"), "{stderr}");
    assert!(!stderr.contains("step 5"), "it trained before failing");

    let out = run(train_cmd(Path::new("ftp://example.invalid/x"), &[]));
    assert_eq!(out.status.code(), Some(78));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("s3://"),
        "alternatives named"
    );
}

/// Whether this machine lets an unprivileged-namespace `unshare -m` mount a tmpfs (root in a
/// container usually may). The full-disk and read-only tests need it to get a small or
/// read-only file system without touching the host's.
fn private_mounts_available() -> bool {
    Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c"])
        .arg("d=$(mktemp -d) && mount -t tmpfs -o size=1m tmpfs \"$d\"")
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `c` as one shell command line.
fn shell_line(c: &Command) -> String {
    let quote = |s: &std::ffi::OsStr| format!("'{}'", s.to_string_lossy().replace('\'', r"'\''"));
    let mut words = vec![quote(c.get_program())];
    words.extend(c.get_args().map(quote));
    // `env` takes its `-u` options before any assignment.
    let mut envs: Vec<String> = c
        .get_envs()
        .filter(|(_, v)| v.is_none())
        .map(|(k, _)| format!("-u {}", k.to_string_lossy()))
        .collect();
    envs.extend(
        c.get_envs()
            .filter_map(|(k, v)| Some(format!("{}={}", k.to_string_lossy(), quote(v?)))),
    );
    format!("env {} {}", envs.join(" "), words.join(" "))
}

/// Run `script` in a private mount namespace; its mounts vanish with it.
fn in_private_mounts(script: &str) -> Output {
    run({
        let mut c = Command::new("unshare");
        c.args(["-m", "--propagation", "private", "sh", "-c", script]);
        c
    })
}

/// Bytes of the files under `dir`.
fn tree_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .map(|e| {
            let m = e.metadata().unwrap();
            if m.is_dir() {
                tree_bytes(&e.path())
            } else {
                m.len()
            }
        })
        .sum()
}

fn exit_code(file: &Path) -> i32 {
    std::fs::read_to_string(file)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn full_disk_keeps_the_newest_complete_checkpoint_and_the_rerun_resumes_bit_identical() {
    if !private_mounts_available() {
        eprintln!("skipped: this machine does not allow `unshare -m` to mount a tmpfs");
        return;
    }
    let (reference_dir, reference_sha) = reference();
    // Room for about half of what a whole run writes: the disk fills after a few checkpoints.
    let size_kib = tree_bytes(reference_dir.path()) / 2 / 1024;
    let dir = tempfile::tempdir().unwrap();
    let (mnt, saved) = (dir.path().join("mnt"), dir.path().join("saved"));
    std::fs::create_dir_all(&mnt).unwrap();
    std::fs::create_dir_all(&saved).unwrap();
    let script = format!(
        "mount -t tmpfs -o size={size_kib}k tmpfs '{m}' || exit 99; {train}; echo $? > '{d}/exit'; cp -a '{m}/.' '{s}/'",
        m = mnt.display(),
        d = dir.path().display(),
        s = saved.display(),
        train = shell_line(&train_cmd(&mnt, &[])),
    );
    let out = in_private_mounts(&script);
    assert!(out.status.success(), "the namespace script failed");
    let code = exit_code(&dir.path().join("exit"));
    assert!(
        code != 0,
        "training fitted in {size_kib} KiB; the test needs a full disk"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("No space left on device"), "{stderr}");
    let kept = complete_checkpoints(&saved);
    assert!(
        !kept.is_empty(),
        "no complete checkpoint survived the full disk"
    );

    let rerun = run(train_cmd(&saved, &[]));
    assert_eq!(rerun.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&rerun.stderr);
    assert!(
        stderr.contains(&format!("at step {}", kept.last().unwrap())),
        "did not resume from the newest complete checkpoint {kept:?}: {stderr}"
    );
    assert_eq!(model_sha(&saved), *reference_sha);
}

#[test]
fn read_only_output_fails_clearly_keeps_checkpoints_and_the_rerun_resumes_bit_identical() {
    if !private_mounts_available() {
        eprintln!("skipped: this machine does not allow `unshare -m` to mount a tmpfs");
        return;
    }
    let (_, reference_sha) = reference();
    let dir = tempfile::tempdir().unwrap();
    let (mnt, saved) = (dir.path().join("mnt"), dir.path().join("saved"));
    std::fs::create_dir_all(&mnt).unwrap();
    std::fs::create_dir_all(&saved).unwrap();
    let m = mnt.display();
    let script = format!(
        "mount -t tmpfs -o size=256m tmpfs '{m}' || exit 99; \
         {first}; echo $? > '{d}/first'; \
         mount -o remount,ro '{m}' || exit 98; \
         {second}; echo $? > '{d}/second'; \
         cp -a '{m}/.' '{s}/'",
        d = dir.path().display(),
        s = saved.display(),
        first = shell_line(&train_cmd(&mnt, &["--stop-at-step", "20"])),
        second = shell_line(&train_cmd(&mnt, &[])),
    );
    let out = in_private_mounts(&script);
    assert!(out.status.success(), "the namespace script failed");
    assert_eq!(exit_code(&dir.path().join("first")), 75);
    let second = exit_code(&dir.path().join("second"));
    assert!(
        second != 0 && second != 75,
        "read-only output: exit {second}"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("Read-only file system"), "{stderr}");
    assert_eq!(complete_checkpoints(&saved).last(), Some(&20));

    let rerun = run(train_cmd(&saved, &[]));
    assert_eq!(rerun.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&rerun.stderr).contains("at step 20"));
    assert_eq!(model_sha(&saved), *reference_sha);
}
