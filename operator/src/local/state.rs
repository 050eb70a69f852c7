//! The local runner's state: what the API server holds in a cluster (the objects with their
//! status) plus what the Job and Deployment controllers know (the trial processes and their
//! attempts, the serving processes), in one JSON file under the storage root.
//!
//! The file is `<storage>/.textrec-local/state.json`, written whole through `object_store`,
//! whose `put` is atomic on every backend (the local file system writes a temporary file and
//! renames it): a reader, or a runner killed mid-write, sees the old state or the new one.
//!
//! Files that must be local (the pid file, logs, the serving model pointers, the workers'
//! termination logs) live in [`LocalPaths`]: next to the state when the storage is a local
//! folder, else in `./.textrec-local/<hash of the storage URL>/`.
//!
//! The state and the inbox hold the runs' `spec.env` values, which may be credentials, so the
//! local folder is private to the user (0700) and the files written here are too (0600).

use std::collections::BTreeMap;
use std::fs::{DirBuilder, OpenOptions, Permissions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use textrec_contract::Store;

use crate::crd::{ModelDeployment, TrainingRun};
use crate::local::trials::TrialRecord;

/// Format version of the state file; bumped on incompatible changes.
pub const STATE_VERSION: u32 = 1;
/// Folder of the local runner's own files under the storage root.
pub const LOCAL_DIR: &str = ".textrec-local";
/// Name of the state file inside [`LOCAL_DIR`].
pub const STATE_FILE: &str = "state.json";

/// Everything the local runner knows.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LocalState {
    /// [`STATE_VERSION`].
    pub version: u32,
    /// TrainingRuns by name.
    #[serde(default)]
    pub runs: BTreeMap<String, RunRecord>,
    /// ModelDeployments by name.
    #[serde(default)]
    pub deployments: BTreeMap<String, DeploymentRecord>,
}

impl Default for LocalState {
    fn default() -> Self {
        Self {
            version: STATE_VERSION,
            runs: BTreeMap::new(),
            deployments: BTreeMap::new(),
        }
    }
}

/// One TrainingRun: the object as a cluster would hold it (spec, metadata, status) and its
/// trials' processes.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunRecord {
    /// The TrainingRun, with the status [`crate::run_plan::plan`] computed.
    pub run: TrainingRun,
    /// The local "Jobs": one record per started trial.
    #[serde(default)]
    pub trials: BTreeMap<String, TrialRecord>,
}

/// One ModelDeployment and its server process.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentRecord {
    /// The ModelDeployment, with its status.
    pub deployment: ModelDeployment,
    /// The local server, once one was started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<ServerRecord>,
}

/// A local `textrec-worker serve` process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerRecord {
    /// Process id while it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// gRPC `host:port`.
    pub grpc: String,
    /// HTTP `host:port` (REST, demo page, metrics).
    pub http: String,
    /// Model version the server reported last (sha256 of the model's manifest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serving: Option<String>,
    /// Times the server process was restarted after it died.
    #[serde(default)]
    pub restarts: u32,
}

/// Where the local runner's local files live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalPaths {
    /// The folder.
    pub dir: PathBuf,
}

impl LocalPaths {
    /// The local folder for a storage root URL (see the module docs).
    pub fn for_store(store: &Store) -> Self {
        let dir = match store.local_path() {
            Some(p) => p.join(LOCAL_DIR),
            None => {
                let hash = hex::encode(&Sha256::digest(store.url().as_bytes())[..6]);
                std::env::current_dir()
                    .unwrap_or_else(|_| PathBuf::from("."))
                    .join(LOCAL_DIR)
                    .join(hash)
            }
        };
        Self { dir }
    }

    /// The pid file of a running `local run`.
    pub fn pid_file(&self) -> PathBuf {
        self.dir.join("runner.pid")
    }

    /// Log file of a trial or server.
    pub fn log(&self, name: &str) -> PathBuf {
        self.dir.join("logs").join(format!("{name}.log"))
    }

    /// Termination log of a trial (the worker's final progress, as in a pod).
    pub fn termination_log(&self, trial: &str) -> PathBuf {
        self.dir.join("termination").join(format!("{trial}.json"))
    }

    /// The model pointer file a ModelDeployment's server watches.
    pub fn pointer(&self, deployment: &str) -> PathBuf {
        self.dir
            .join("serving")
            .join(deployment)
            .join(crate::serving::POINTER_URL_KEY)
    }

    /// Requests to a running `local run` (manifests to apply, rollbacks), one file each.
    pub fn inbox(&self) -> PathBuf {
        self.dir.join("inbox")
    }
}

/// The state file of a storage root.
#[derive(Debug, Clone)]
pub struct StateFile {
    store: Store,
}

impl StateFile {
    /// The state file under `root`.
    pub fn new(root: &Store) -> Self {
        Self {
            store: root.child(LOCAL_DIR),
        }
    }

    /// Its URL, for messages.
    pub fn url(&self) -> String {
        self.store.url_of(STATE_FILE)
    }

    /// Read the state; a missing file is an empty state.
    pub async fn load(&self) -> Result<LocalState> {
        match self.store.get_opt(STATE_FILE).await? {
            None => Ok(LocalState::default()),
            Some(bytes) => parse(&bytes).with_context(|| format!("in {}", self.url())),
        }
    }

    /// Write the state in one piece; in a local folder, readable by this user only.
    pub async fn save(&self, state: &LocalState) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(state).context("state serializes")?;
        match self.store.local_path() {
            // object_store would create the file with the umask's mode, readable by everyone.
            Some(dir) => write_atomic(&dir.join(STATE_FILE), &bytes),
            None => self.store.put(STATE_FILE, Bytes::from(bytes)).await,
        }
    }
}

/// Parse a state file's content, refusing versions this build does not know.
pub fn parse(bytes: &[u8]) -> Result<LocalState> {
    let v: serde_json::Value =
        serde_json::from_slice(bytes).context("the local state is not JSON")?;
    let version = v.get("version").and_then(|v| v.as_u64()).unwrap_or(0);
    if version != u64::from(STATE_VERSION) {
        anyhow::bail!(
            "local state version {version} is not supported by this textrec-operator (expects {STATE_VERSION})"
        );
    }
    serde_path_to_error::deserialize(v).context("the local state is malformed")
}

/// Create `dir` (and its parents) private to this user (0700), or make it so if it exists.
pub fn create_private_dir(dir: &Path) -> Result<()> {
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .and_then(|()| std::fs::set_permissions(dir, Permissions::from_mode(0o700)))
        .with_context(|| format!("cannot create {}", dir.display()))
}

/// Write `content` to `path` atomically (temporary file in the same folder, then rename), so
/// a reader polling the file never sees half of it. The file is readable by this user only
/// (0600) from its first byte, and a missing folder is created private (0700).
pub fn write_atomic(path: &Path, content: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .with_context(|| format!("{} has no parent folder", path.display()))?;
    if !dir.is_dir() {
        create_private_dir(dir)?;
    }
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        std::process::id()
    ));
    // A leftover of a killed runner with the same pid may have another mode: start afresh.
    let _ = std::fs::remove_file(&tmp);
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| f.write_all(content))
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot replace {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::local::trials::{Attempt, AttemptOutcome, Exit};
    use serde_json::json;

    fn sample() -> LocalState {
        let run: TrainingRun = serde_json::from_value(json!({
            "apiVersion": "textrec.dev/v1alpha1", "kind": "TrainingRun",
            "metadata": {"name": "r", "namespace": "default", "uid": "u", "generation": 1},
            "spec": {"image": "local", "storage": {"url": "file:///tmp/x"}},
            "status": {"phase": "Running", "trialsDone": "0/2",
                "trials": [{"name": "r-t0", "phase": "Running", "step": 5, "preemptions": 1}]}
        }))
        .unwrap();
        let md: ModelDeployment = serde_json::from_value(json!({
            "apiVersion": "textrec.dev/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": "m", "namespace": "default"},
            "spec": {"image": "local", "model": {"fromTrainingRun": "r"}},
            "status": {"phase": "Pending"}
        }))
        .unwrap();
        let mut trial = TrialRecord::new(vec!["train".into(), "--output".into(), "x".into()]);
        trial.pid = Some(42);
        trial.attempts.push(Attempt {
            exit: Exit::Signal(9),
            outcome: AttemptOutcome::Preempted,
            step: 3,
            message: None,
        });
        let mut s = LocalState::default();
        s.runs.insert(
            "r".into(),
            RunRecord {
                run,
                trials: BTreeMap::from([("r-t0".into(), trial)]),
            },
        );
        s.deployments.insert(
            "m".into(),
            DeploymentRecord {
                deployment: md,
                server: Some(ServerRecord {
                    pid: Some(7),
                    grpc: "127.0.0.1:1".into(),
                    http: "127.0.0.1:2".into(),
                    serving: None,
                    restarts: 0,
                }),
            },
        );
        s
    }

    #[tokio::test]
    async fn state_round_trips_through_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let root = Store::open(dir.path().to_str().unwrap()).unwrap();
        let file = StateFile::new(&root);
        let json = |s: &LocalState| serde_json::to_value(s).unwrap();
        assert_eq!(
            json(&file.load().await.unwrap()),
            json(&LocalState::default())
        );
        let s = sample();
        file.save(&s).await.unwrap();
        let back = file.load().await.unwrap();
        assert_eq!(json(&back), json(&s));
        assert_eq!(
            back.runs["r"].trials["r-t0"].attempts[0].exit,
            Exit::Signal(9)
        );
        assert!(dir.path().join(".textrec-local/state.json").exists());
        // Local files sit next to the state for a local root.
        assert_eq!(
            LocalPaths::for_store(&root).dir,
            dir.path().join(".textrec-local")
        );
    }

    #[test]
    fn unknown_versions_and_bad_fields_are_refused_with_the_path() {
        let e = parse(br#"{"version": 99}"#).unwrap_err();
        assert!(format!("{e:#}").contains("version 99"), "{e:#}");
        let e = parse(br#"{"version": 1, "runs": {"r": {"run": 5}}}"#).unwrap_err();
        assert!(format!("{e:#}").contains("runs.r.run"), "{e:#}");
    }

    #[test]
    fn atomic_writes_replace_the_whole_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a/b/pointer");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert_eq!(std::fs::read_dir(p.parent().unwrap()).unwrap().count(), 1);
    }

    #[tokio::test]
    async fn local_state_files_are_private_to_the_user() {
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let dir = tempfile::tempdir().unwrap();
        let root = Store::open(dir.path().to_str().unwrap()).unwrap();
        // An existing state file from before, readable by everyone, is replaced by a private one.
        let state_dir = dir.path().join(LOCAL_DIR);
        std::fs::create_dir_all(&state_dir).unwrap();
        std::fs::set_permissions(&state_dir, Permissions::from_mode(0o755)).unwrap();
        std::fs::write(state_dir.join(STATE_FILE), br#"{"version": 1}"#).unwrap();
        let paths = LocalPaths::for_store(&root);
        create_private_dir(&paths.dir).unwrap();
        assert_eq!(mode(&paths.dir), 0o700);
        StateFile::new(&root).save(&sample()).await.unwrap();
        assert_eq!(mode(&state_dir.join(STATE_FILE)), 0o600);
        // Inbox requests and other local files, and the folders made for them.
        let req = paths.inbox().join("r.json");
        write_atomic(&req, b"{}").unwrap();
        assert_eq!((mode(&req), mode(&paths.inbox())), (0o600, 0o700));
    }
}
