//! Data sets at storage URLs: where `train` and `eval` turn a data set's `path` (and IAM's
//! `split_file`) into a local folder before the openers of `textrec_model::data` read it.
//!
//! A plain path or a `file://` URL is read in place. Any other URL (`s3://`, `gs://`, `az://`)
//! is listed, and each file the data set kind uses is downloaded into a cache addressed by
//! content: `$TEXTREC_DATA_CACHE` (default `<tmp>/textrec-data-cache`) holds
//!
//! - `sha256/<hex>`: file contents, named by their sha256, written to a temporary name and
//!   renamed into place, so a crash never leaves a half file under a valid name;
//! - `index/<key>`: the sha256 of an object as last listed (URL, size, entity tag and
//!   modification time), so an unchanged object is not downloaded again;
//! - `trees/<digest>/`: the data set as a folder (hard links into `sha256/`), named by its
//!   [`dataset_digest`]; a second run, or another trial on the same node, reuses it whole.
//!
//! Every download is checked against the size the listing gave, every reused file against its
//! sha256. Counts (files listed, downloaded, reused, skipped and why, pairs found) are logged.
//! A URL that holds nothing usable is a configuration error naming the field; a store that
//! cannot be reached is an ordinary (retryable) error.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{anyhow, bail, Context, Result};
use futures::{StreamExt, TryStreamExt};
use sha2::{Digest, Sha256};
use textrec_contract::config::{DataConfig, DatasetKind, DatasetSpec};
use textrec_contract::exit::ConfigError;
use textrec_contract::storage::{normalize_url, Listed};
use textrec_contract::Store;
use textrec_model::data::tesstrain::IMAGE_EXTENSIONS;

/// Environment variable naming the data cache folder.
pub const CACHE_ENV: &str = "TEXTREC_DATA_CACHE";

/// Downloads in flight at once.
const PARALLEL_DOWNLOADS: usize = 16;

/// The content-addressed cache of downloaded data (see the module docs).
#[derive(Debug, Clone)]
pub struct DataCache {
    root: PathBuf,
}

impl DataCache {
    /// The cache at `$TEXTREC_DATA_CACHE`, or `<tmp>/textrec-data-cache`.
    pub fn from_env() -> Self {
        let root = std::env::var_os(CACHE_ENV)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| std::env::temp_dir().join("textrec-data-cache"));
        Self::at(root)
    }

    /// The cache at `root`.
    pub fn at(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The cache folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn blob(&self, sha: &str) -> PathBuf {
        self.root.join("sha256").join(sha)
    }

    fn index(&self, key: &str) -> PathBuf {
        self.root.join("index").join(key)
    }

    fn tree(&self, digest: &str) -> PathBuf {
        self.root.join("trees").join(digest)
    }

    /// A fresh name under `tmp/` (same file system as the rest, so renames are atomic).
    fn scratch(&self) -> Result<PathBuf> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let dir = self.root.join("tmp");
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create the data cache {}", dir.display()))?;
        Ok(dir.join(format!(
            "{}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed),
            chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default()
        )))
    }

    /// Store `data` under its sha256 and return the hex digest.
    fn put_blob(&self, data: &[u8]) -> Result<String> {
        let sha = hex::encode(Sha256::digest(data));
        let dest = self.blob(&sha);
        if !dest.exists() {
            write_atomically(&self.scratch()?, &dest, data)?;
        }
        Ok(sha)
    }

    /// The sha256 of a cached blob, if it is there and intact (a damaged one is removed).
    fn check_blob(&self, sha: &str) -> Option<()> {
        let path = self.blob(sha);
        let data = std::fs::read(&path).ok()?;
        if hex::encode(Sha256::digest(&data)) == sha {
            Some(())
        } else {
            tracing::warn!("data cache: {} is damaged; fetching again", path.display());
            let _ = std::fs::remove_file(path);
            None
        }
    }
}

/// Write `data` to `tmp`, flush it to disk, then rename it to `dest`.
fn write_atomically(tmp: &Path, dest: &Path, data: &[u8]) -> Result<()> {
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    let mut f =
        std::fs::File::create(tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
    f.write_all(data)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(tmp, dest).with_context(|| format!("cannot write {}", dest.display()))
}

/// What fetching a data set did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FetchReport {
    /// Objects under the URL.
    pub listed: usize,
    /// Files downloaded now.
    pub downloaded: usize,
    /// Files found intact in the cache.
    pub reused: usize,
    /// Objects not fetched, with the reason.
    pub skipped: Vec<(String, String)>,
    /// Image/transcription pairs (tesstrain) or lines of `ascii/lines.txt` with an image (IAM)
    /// among the fetched files, before the opener checks charset and decodability.
    pub pairs: usize,
}

/// A data set folder ready to open.
#[derive(Debug, Clone)]
pub struct LocalSet {
    /// The local folder.
    pub dir: PathBuf,
    /// Its [`dataset_digest`].
    pub digest: String,
    /// What fetching it did (`None` when it was read in place).
    pub report: Option<FetchReport>,
}

/// The digest that names a data set's content: sha256 over its files sorted by relative path,
/// one `"<relative path>\0<sha256 hex>\n"` record each, as lowercase hex. It depends on nothing
/// but names and contents (not where the set is stored, its timestamps, or the listing order),
/// so two copies of one set share it and any change to a file or its name changes it. Use it
/// to key anything derived from a data set (cached evaluation results, say).
pub fn dataset_digest<'a>(files: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let sorted: BTreeMap<&str, &str> = files.into_iter().collect();
    let mut h = Sha256::new();
    for (name, sha) in sorted {
        h.update(name.as_bytes());
        h.update([0]);
        h.update(sha.as_bytes());
        h.update([b'\n']);
    }
    hex::encode(h.finalize())
}

/// [`dataset_digest`] of a local folder: every file under it, at any depth (symbolic links
/// followed), with `/`-separated relative paths.
pub fn folder_digest(dir: &Path) -> Result<String> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in
            std::fs::read_dir(&d).with_context(|| format!("cannot read {}", d.display()))?
        {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let data = std::fs::read(&path)
                    .with_context(|| format!("cannot read {}", path.display()))?;
                let rel = path
                    .strip_prefix(dir)
                    .expect("walked under dir")
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy())
                    .collect::<Vec<_>>()
                    .join("/");
                files.push((rel, hex::encode(Sha256::digest(&data))));
            }
        }
    }
    Ok(dataset_digest(
        files.iter().map(|(n, s)| (n.as_str(), s.as_str())),
    ))
}

/// Whether `location` is a URL that must be downloaded (not a plain path or `file://`).
pub fn is_remote(location: &str) -> bool {
    url::Url::parse(location).is_ok_and(|u| u.scheme().len() > 1 && u.scheme() != "file")
}

/// A local path for a plain path or `file://` URL.
fn local_path(location: &str) -> Result<PathBuf> {
    let url = normalize_url(location)?;
    url.to_file_path()
        .map_err(|_| anyhow!("{location}: not a local path"))
}

/// Whether a data set of `kind` reads the file at `rel`; `Err(reason)` when it does not.
fn wanted(kind: DatasetKind, rel: &str) -> Result<(), String> {
    let lower = rel.to_lowercase();
    let is_image = lower
        .rsplit_once('.')
        .is_some_and(|(_, ext)| IMAGE_EXTENSIONS.contains(&ext));
    match kind {
        DatasetKind::Tesstrain if is_image || lower.ends_with(".gt.txt") => Ok(()),
        DatasetKind::Tesstrain => Err("neither a line image nor a .gt.txt transcription".into()),
        DatasetKind::Iam if rel == "ascii/lines.txt" => Ok(()),
        DatasetKind::Iam if rel.starts_with("lines/") && lower.ends_with(".png") => Ok(()),
        DatasetKind::Iam => Err("not ascii/lines.txt or a line image under lines/".into()),
        DatasetKind::Synthetic => Err("synthetic sets read no files".into()),
    }
}

/// Image/transcription pairs among tesstrain files (by stem, extension case ignored).
fn tesstrain_pairs(names: &[&str]) -> usize {
    let mut images = BTreeSet::new();
    let mut texts = BTreeSet::new();
    for n in names {
        let lower = n.to_lowercase();
        if let Some(stem) = lower.strip_suffix(".gt.txt") {
            texts.insert(n[..stem.len()].to_string());
        } else if let Some((stem, _)) = n.rsplit_once('.') {
            images.insert(stem.to_string());
        }
    }
    images.intersection(&texts).count()
}

/// Download the data set of `kind` at `store` into `cache` (see the module docs). `field`
/// (`data.train.path`) names the config field in errors.
pub async fn fetch_folder(
    store: &Store,
    kind: DatasetKind,
    field: &str,
    cache: &DataCache,
) -> Result<LocalSet> {
    let listed = store
        .list_recursive("")
        .await
        .with_context(|| format!("{field}: cannot list {} (retryable)", store.url()))?;
    let mut report = FetchReport {
        listed: listed.len(),
        ..FetchReport::default()
    };
    let mut keep: Vec<Listed> = Vec::new();
    for l in listed {
        match wanted(kind, &l.rel) {
            Ok(()) => keep.push(l),
            Err(reason) => report.skipped.push((l.rel, reason)),
        }
    }
    let names: Vec<&str> = keep.iter().map(|l| l.rel.as_str()).collect();
    report.pairs = match kind {
        DatasetKind::Iam => {
            if !names.contains(&"ascii/lines.txt") {
                bail!(ConfigError::new(format!(
                    "{field}: {} holds no IAM ascii/lines.txt ({} files listed)",
                    store.url(),
                    report.listed
                )));
            }
            names.len() - 1
        }
        _ => tesstrain_pairs(&names),
    };
    if report.pairs == 0 {
        bail!(ConfigError::new(format!(
            "{field}: {} holds no image/transcription pairs ({} files listed{})",
            store.url(),
            report.listed,
            if report.listed == 0 {
                ": the location is empty or does not exist"
            } else {
                ""
            }
        )));
    }

    let fetched: Vec<(String, String, bool)> = futures::stream::iter(keep)
        .map(|l| fetch_one(store, cache, l))
        .buffer_unordered(PARALLEL_DOWNLOADS)
        .try_collect()
        .await
        .with_context(|| format!("{field}: downloading {}", store.url()))?;
    let mut files: Vec<(String, String)> = Vec::with_capacity(fetched.len());
    for (rel, sha, downloaded) in fetched {
        if downloaded {
            report.downloaded += 1;
        } else {
            report.reused += 1;
        }
        files.push((rel, sha));
    }
    files.sort();
    let digest = dataset_digest(files.iter().map(|(n, s)| (n.as_str(), s.as_str())));
    let dir = build_tree(cache, &digest, &files)?;
    tracing::info!(
        listed = report.listed,
        downloaded = report.downloaded,
        reused = report.reused,
        skipped = report.skipped.len(),
        pairs = report.pairs,
        digest = %digest,
        "{field}: {}: {} files listed, {} downloaded, {} reused from the cache, {} skipped{}; {} pairs; data set {digest} in {}",
        store.url(),
        report.listed,
        report.downloaded,
        report.reused,
        report.skipped.len(),
        skipped_summary(&report.skipped),
        report.pairs,
        dir.display()
    );
    Ok(LocalSet {
        dir,
        digest,
        report: Some(report),
    })
}

fn skipped_summary(skipped: &[(String, String)]) -> String {
    if skipped.is_empty() {
        return String::new();
    }
    let shown: Vec<String> = skipped
        .iter()
        .take(5)
        .map(|(n, why)| format!("{n}: {why}"))
        .collect();
    format!(
        " ({}{})",
        shown.join("; "),
        if skipped.len() > 5 { "; ..." } else { "" }
    )
}

/// One object into the cache: `(rel, sha256, downloaded)`.
async fn fetch_one(store: &Store, cache: &DataCache, l: Listed) -> Result<(String, String, bool)> {
    let key_src = format!("{}\n{}\n{}", store.url_of(&l.rel), l.size, l.version);
    let key = hex::encode(Sha256::digest(key_src.as_bytes()));
    if let Ok(sha) = std::fs::read_to_string(cache.index(&key)) {
        let sha = sha.trim().to_string();
        if cache.check_blob(&sha).is_some() {
            return Ok((l.rel, sha, false));
        }
    }
    let data = store.get(&l.rel).await?;
    if data.len() as u64 != l.size {
        bail!(
            "{}: read {} bytes, the listing said {} (changed or truncated while reading)",
            store.url_of(&l.rel),
            data.len(),
            l.size
        );
    }
    let sha = cache.put_blob(&data)?;
    write_atomically(&cache.scratch()?, &cache.index(&key), sha.as_bytes())?;
    Ok((l.rel, sha, true))
}

/// The folder `trees/<digest>` holding `files`, built under a scratch name and renamed into
/// place, so a folder under a digest's name is always complete.
fn build_tree(cache: &DataCache, digest: &str, files: &[(String, String)]) -> Result<PathBuf> {
    let dest = cache.tree(digest);
    if dest.is_dir() {
        return Ok(dest);
    }
    let tmp = cache.scratch()?;
    for (rel, sha) in files {
        let path = tmp.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        // Cached blobs are never modified, so sharing them is safe; a copy where the cache's
        // file system cannot link.
        let blob = cache.blob(sha);
        if std::fs::hard_link(&blob, &path).is_err() {
            std::fs::copy(&blob, &path)
                .with_context(|| format!("cannot copy {} to {}", blob.display(), path.display()))?;
        }
    }
    std::fs::create_dir_all(dest.parent().expect("trees/ has a parent"))?;
    if let Err(e) = std::fs::rename(&tmp, &dest) {
        let _ = std::fs::remove_dir_all(&tmp);
        // Another process built the same tree meanwhile: theirs is as good as ours.
        if !dest.is_dir() {
            return Err(e).with_context(|| format!("cannot create {}", dest.display()));
        }
    }
    Ok(dest)
}

/// Fetch one file (an IAM split file) into the cache; its local path.
async fn fetch_file(location: &str, field: &str, cache: &DataCache) -> Result<PathBuf> {
    let url = url::Url::parse(location)?;
    let name = url
        .path_segments()
        .and_then(|mut s| s.next_back())
        .filter(|n| !n.is_empty())
        .ok_or_else(|| ConfigError::new(format!("{field}: {location} names no file")))?
        .to_string();
    let parent = url.join(".")?;
    let store =
        Store::open(parent.as_str()).map_err(|e| ConfigError::new(format!("{field}: {e:#}")))?;
    let data = store
        .get_opt(&name)
        .await
        .with_context(|| format!("{field}: cannot read {location} (retryable)"))?
        .ok_or_else(|| ConfigError::new(format!("{field}: {location} does not exist")))?;
    let sha = cache.put_blob(&data)?;
    tracing::info!("{field}: {location}: {} bytes, sha256 {sha}", data.len());
    Ok(cache.blob(&sha))
}

/// The local folder of the data set of `kind` at `location` (a path or URL; `field` names it
/// in errors), with what fetching did when it was a remote URL.
pub async fn resolve_folder(
    location: &str,
    kind: DatasetKind,
    field: &str,
    cache: &DataCache,
) -> Result<(PathBuf, Option<LocalSet>)> {
    if is_remote(location) {
        let store =
            Store::open(location).map_err(|e| ConfigError::new(format!("{field}: {e:#}")))?;
        let set = fetch_folder(&store, kind, field, cache).await?;
        Ok((set.dir.clone(), Some(set)))
    } else {
        let local =
            local_path(location).map_err(|e| ConfigError::new(format!("{field}: {e:#}")))?;
        Ok((local, None))
    }
}

/// Where data set `spec` (config field `field`, e.g. `data.train[1]`) can be read locally:
/// its URLs fetched into `cache`, `file://` URLs turned into paths. Synthetic sets and sets
/// already local come back unchanged but for that.
pub async fn resolve_spec(
    spec: &DatasetSpec,
    field: &str,
    cache: &DataCache,
) -> Result<(DatasetSpec, Option<LocalSet>)> {
    if spec.kind == DatasetKind::Synthetic {
        return Ok((spec.clone(), None));
    }
    let mut out = spec.clone();
    let mut fetched = None;
    if let Some(path) = &spec.path {
        let (local, set) = resolve_folder(path, spec.kind, &format!("{field}.path"), cache).await?;
        out.path = Some(local.to_string_lossy().into_owned());
        fetched = set;
    }
    if let Some(split) = &spec.split_file {
        let f = format!("{field}.split_file");
        let local = if is_remote(split) {
            fetch_file(split, &f, cache).await?
        } else {
            local_path(split).map_err(|e| ConfigError::new(format!("{f}: {e:#}")))?
        };
        out.split_file = Some(local.to_string_lossy().into_owned());
    }
    Ok((out, fetched))
}

/// `data` with every data set's locations made local (see [`resolve_spec`]), the one step
/// both `train` and `eval` take before opening data sets.
pub async fn resolve_data(data: &DataConfig, cache: &DataCache) -> Result<DataConfig> {
    let mut out = data.clone();
    for i in 0..data.train.sources().len() {
        let field = data.train.field(i);
        let (spec, _) = resolve_spec(&data.train.sources()[i], &field, cache).await?;
        out.train.sources_mut()[i] = spec;
    }
    out.validation = resolve_spec(&data.validation, "data.validation", cache)
        .await?
        .0;
    for (name, spec) in out.extra_validation.iter_mut() {
        if let Some(s) = spec {
            *s = resolve_spec(s, &format!("data.extra_validation.{name}"), cache)
                .await?
                .0;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use object_store::memory::InMemory;
    use std::sync::Arc;
    use textrec_contract::exit;

    fn png() -> Vec<u8> {
        let img = image::GrayImage::from_fn(30, 10, |x, _| image::Luma([(x * 8) as u8]));
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Png).unwrap();
        out.into_inner()
    }

    async fn flags_store() -> (Arc<InMemory>, Store) {
        let mem = Arc::new(InMemory::new());
        let store = Store::from_object_store(mem.clone(), "s3://bucket/flags/").unwrap();
        for (name, data) in [
            ("a.png", png()),
            ("a.gt.txt", b"hello\n".to_vec()),
            ("sub/b.png", png()),
            ("sub/b.gt.txt", b"world\n".to_vec()),
            ("lonely.png", png()),
            ("flags.jsonl", b"{}\n".to_vec()),
        ] {
            store.put(name, Bytes::from(data)).await.unwrap();
        }
        (mem, store)
    }

    #[tokio::test]
    async fn downloads_once_verifies_and_reuses_the_cache() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = DataCache::at(tmp.path());
        let (mem, store) = flags_store().await;
        let first = fetch_folder(&store, DatasetKind::Tesstrain, "data.train.path", &cache)
            .await
            .unwrap();
        let r = first.report.clone().unwrap();
        assert_eq!((r.listed, r.downloaded, r.reused, r.pairs), (6, 5, 0, 2));
        assert_eq!(r.skipped.len(), 1, "{:?}", r.skipped);
        assert_eq!(r.skipped[0].0, "flags.jsonl");
        assert_eq!(
            std::fs::read_to_string(first.dir.join("sub/b.gt.txt")).unwrap(),
            "world\n"
        );
        // The folder opens as a tesstrain set: two pairs, the lonely image skipped.
        let ds = textrec_model::data::tesstrain::open(
            first.dir.to_str().unwrap(),
            "abcdefghijklmnopqrstuvwxyz",
            None,
        )
        .unwrap();
        use textrec_model::data::Dataset;
        assert_eq!(ds.len(), Some(2));

        // A second run reuses everything and lands on the same digest and folder.
        let second = fetch_folder(&store, DatasetKind::Tesstrain, "f", &cache)
            .await
            .unwrap();
        let r = second.report.unwrap();
        assert_eq!((r.downloaded, r.reused), (0, 5));
        assert_eq!((&second.digest, &second.dir), (&first.digest, &first.dir));
        // The digest is the content's: the same files read in place give the same value.
        assert_eq!(folder_digest(&first.dir).unwrap(), first.digest);

        // A damaged cache entry is noticed and fetched again.
        let blob = std::fs::read_dir(tmp.path().join("sha256"))
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        std::fs::remove_file(&blob).unwrap();
        std::fs::write(&blob, b"garbage").unwrap();
        let third = fetch_folder(&store, DatasetKind::Tesstrain, "f", &cache)
            .await
            .unwrap();
        assert_eq!(third.report.unwrap().downloaded, 1);

        // Changing a transcription changes the digest.
        store
            .put("a.gt.txt", Bytes::from_static(b"jello\n"))
            .await
            .unwrap();
        let changed = fetch_folder(&store, DatasetKind::Tesstrain, "f", &cache)
            .await
            .unwrap();
        assert_ne!(changed.digest, first.digest);
        assert_eq!(changed.report.unwrap().downloaded, 1);
        drop(mem);
        // Nothing half-written is left behind.
        let leftovers = std::fs::read_dir(tmp.path().join("tmp")).unwrap().count();
        assert_eq!(leftovers, 0);
    }

    #[tokio::test]
    async fn empty_or_pairless_locations_are_config_errors_naming_the_field() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = DataCache::at(tmp.path());
        let (mem, _) = flags_store().await;
        let missing = Store::from_object_store(mem.clone(), "s3://bucket/nope/").unwrap();
        let err = fetch_folder(
            &missing,
            DatasetKind::Tesstrain,
            "data.train[1].path",
            &cache,
        )
        .await
        .unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.contains(
                "data.train[1].path: s3://bucket/nope/ holds no image/transcription pairs"
            ),
            "{msg}"
        );
        assert_eq!(exit::code_for(&err), exit::CONFIG_ERROR);
        let only_images = Store::from_object_store(mem.clone(), "s3://bucket/imgs/").unwrap();
        only_images.put("x.png", Bytes::from(png())).await.unwrap();
        let err = fetch_folder(&only_images, DatasetKind::Tesstrain, "f", &cache)
            .await
            .unwrap_err();
        assert!(format!("{err:#}").contains("holds no image/transcription pairs (1 files"));
        let err = fetch_folder(
            &only_images,
            DatasetKind::Iam,
            "data.validation.path",
            &cache,
        )
        .await
        .unwrap_err();
        assert!(
            format!("{err:#}").contains("no IAM ascii/lines.txt"),
            "{err:#}"
        );
        assert_eq!(exit::code_for(&err), exit::CONFIG_ERROR);
    }

    #[tokio::test]
    async fn an_unreachable_store_is_a_retryable_error() {
        let tmp = tempfile::tempdir().unwrap();
        // A port nothing listens on, and no retries: the error must come at once.
        let s3 = object_store::aws::AmazonS3Builder::new()
            .with_bucket_name("bucket")
            .with_region("us-east-1")
            .with_endpoint("http://127.0.0.1:9")
            .with_allow_http(true)
            .with_access_key_id("k")
            .with_secret_access_key("s")
            .with_retry(object_store::RetryConfig {
                max_retries: 0,
                retry_timeout: std::time::Duration::from_secs(1),
                ..Default::default()
            })
            .build()
            .unwrap();
        let store = Store::from_object_store(Arc::new(s3), "s3://bucket/flags/").unwrap();
        let err = fetch_folder(
            &store,
            DatasetKind::Tesstrain,
            "data.train.path",
            &DataCache::at(tmp.path()),
        )
        .await
        .unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.contains("data.train.path: cannot list s3://bucket/flags/"),
            "{msg}"
        );
        assert_eq!(exit::code_for(&err), exit::FAILURE, "{msg}");
    }

    #[test]
    fn digest_depends_on_names_and_contents_only() {
        let a = dataset_digest([("x.png", "11"), ("x.gt.txt", "22")]);
        assert_eq!(a, dataset_digest([("x.gt.txt", "22"), ("x.png", "11")]));
        assert_ne!(a, dataset_digest([("y.png", "11"), ("x.gt.txt", "22")]));
        assert_ne!(a, dataset_digest([("x.png", "12"), ("x.gt.txt", "22")]));
        // Pinned: evaluation caches are keyed by it, so it must not drift between versions.
        assert_eq!(
            dataset_digest(std::iter::empty()),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            dataset_digest([("a", "b")]),
            hex::encode(Sha256::digest(b"a\0b\n"))
        );
    }

    #[tokio::test]
    async fn plain_paths_and_file_urls_are_read_in_place() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = DataCache::at(tmp.path().join("cache"));
        let dir = tmp.path().join("lines");
        std::fs::create_dir_all(&dir).unwrap();
        for location in [
            dir.to_string_lossy().into_owned(),
            url::Url::from_directory_path(&dir).unwrap().to_string(),
        ] {
            let spec = DatasetSpec {
                kind: DatasetKind::Tesstrain,
                path: Some(location),
                ..DatasetSpec::default()
            };
            let (out, fetched) = resolve_spec(&spec, "data.train", &cache).await.unwrap();
            assert!(fetched.is_none());
            assert_eq!(
                PathBuf::from(out.path.unwrap()).canonicalize().unwrap(),
                dir.canonicalize().unwrap()
            );
        }
        assert!(!tmp.path().join("cache").exists(), "nothing was cached");
        assert!(is_remote("s3://b/x") && is_remote("gs://b/x") && is_remote("az://c/x"));
        assert!(!is_remote("/data/x") && !is_remote("file:///data/x") && !is_remote("rel/x"));
    }
}
