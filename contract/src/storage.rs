//! Storage addressed by URL (`file://`, `s3://`, `gs://`, `az://`, or a bare path), through the
//! `object_store` crate so that the same code runs on EKS, GKE and a laptop.
//!
//! Credentials come from the environment, as each cloud's SDK reads them (`AWS_*` including
//! IRSA's web identity, `GOOGLE_*` including Workload Identity, `AZURE_*`). For S3-compatible
//! servers set `AWS_ENDPOINT_URL` (and `AWS_ALLOW_HTTP=true` for plain HTTP).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{anyhow, Context, Result};
use bytes::Bytes;
use futures::TryStreamExt;
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, PutPayload};
use url::Url;

use crate::manifest::FileDigest;

/// A folder in some object store: a store plus a prefix inside it.
#[derive(Clone)]
pub struct Store {
    inner: Arc<dyn ObjectStore>,
    prefix: ObjPath,
    url: Url,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("url", &self.url.as_str())
            .finish()
    }
}

/// Turn what a user typed into a URL: bare paths (absolute or relative) become `file://` URLs.
pub fn normalize_url(location: &str) -> Result<Url> {
    if let Ok(u) = Url::parse(location) {
        // A Windows-style drive letter parses as a scheme; only accept real schemes.
        if u.scheme().len() > 1 {
            return Ok(u);
        }
    }
    let path = PathBuf::from(location);
    let abs = if path.is_absolute() {
        path
    } else {
        std::env::current_dir()
            .context("cannot read the current directory")?
            .join(path)
    };
    Url::from_directory_path(&abs).map_err(|_| anyhow!("not a usable path: {}", abs.display()))
}

/// One object found by [`Store::list_recursive`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// Path relative to the listed folder, `/`-separated.
    pub rel: String,
    /// Size in bytes.
    pub size: u64,
    /// What the store says identifies this version: entity tag and modification time. A
    /// cached copy is reused only while both are unchanged.
    pub version: String,
}

impl Store {
    /// A store over any `object_store` implementation (tests use `InMemory`; embedders can
    /// pass a configured client). `url` names it in messages and must end in `/`.
    pub fn from_object_store(inner: Arc<dyn ObjectStore>, url: &str) -> Result<Self> {
        let url = Url::parse(url).with_context(|| format!("not a URL: {url}"))?;
        Ok(Self {
            inner,
            prefix: ObjPath::from_url_path(url.path())?,
            url,
        })
    }

    /// Open the folder at `location` (a URL or a bare path) without creating it: for reading
    /// data that must already exist.
    pub fn open_existing(location: &str) -> Result<Self> {
        let url = normalize_url(location)?;
        if url.scheme() == "file" {
            let dir = url
                .to_file_path()
                .map_err(|_| anyhow!("{url}: not a local path"))?;
            if !dir.is_dir() {
                return Err(anyhow!(
                    "{} does not exist or is not a folder",
                    dir.display()
                ));
            }
        }
        Self::open(location)
    }

    /// Open the folder at `location` (a URL or a bare path). Local folders are created.
    pub fn open(location: &str) -> Result<Self> {
        let url = normalize_url(location)?;
        let (inner, prefix): (Arc<dyn ObjectStore>, ObjPath) = match url.scheme() {
            "file" => {
                let dir = url
                    .to_file_path()
                    .map_err(|_| anyhow!("{url}: not a local path"))?;
                std::fs::create_dir_all(&dir)
                    .with_context(|| format!("cannot create folder {}", dir.display()))?;
                let fs = object_store::local::LocalFileSystem::new_with_prefix(&dir)
                    .with_context(|| format!("cannot open folder {}", dir.display()))?;
                (Arc::new(fs), ObjPath::default())
            }
            "s3" | "s3a" => {
                let s = object_store::aws::AmazonS3Builder::from_env()
                    .with_url(url.as_str())
                    .build()
                    .with_context(|| format!("cannot configure S3 for {url}"))?;
                (Arc::new(s), ObjPath::from_url_path(url.path())?)
            }
            "gs" => {
                let s = object_store::gcp::GoogleCloudStorageBuilder::from_env()
                    .with_url(url.as_str())
                    .build()
                    .with_context(|| format!("cannot configure GCS for {url}"))?;
                (Arc::new(s), ObjPath::from_url_path(url.path())?)
            }
            "az" | "abfs" | "abfss" | "azure" => {
                let s = object_store::azure::MicrosoftAzureBuilder::from_env()
                    .with_url(url.as_str())
                    .build()
                    .with_context(|| format!("cannot configure Azure for {url}"))?;
                (Arc::new(s), ObjPath::from_url_path(url.path())?)
            }
            other => {
                return Err(anyhow!(
                    "unsupported storage scheme `{other}://` in {url} (use file://, s3://, gs:// or az://, or a plain path)"
                ))
            }
        };
        let mut url = url;
        if !url.path().ends_with('/') {
            url.set_path(&format!("{}/", url.path()));
        }
        Ok(Self { inner, prefix, url })
    }

    /// The folder's URL, ending in `/`.
    pub fn url(&self) -> &str {
        self.url.as_str()
    }

    /// URL of `rel` inside this folder.
    pub fn url_of(&self, rel: &str) -> String {
        format!("{}{}", self.url, rel.trim_start_matches('/'))
    }

    /// The sub-folder `rel`.
    pub fn child(&self, rel: &str) -> Self {
        let rel = rel.trim_matches('/');
        let mut prefix = self.prefix.clone();
        for part in rel.split('/').filter(|p| !p.is_empty()) {
            prefix = prefix.child(part);
        }
        let url = self
            .url
            .join(&format!("{rel}/"))
            .unwrap_or_else(|_| self.url.clone());
        Self {
            inner: self.inner.clone(),
            prefix,
            url,
        }
    }

    /// The local folder behind a `file://` store, if it is one.
    pub fn local_path(&self) -> Option<PathBuf> {
        (self.url.scheme() == "file")
            .then(|| self.url.to_file_path().ok())
            .flatten()
    }

    fn path(&self, rel: &str) -> ObjPath {
        let mut p = self.prefix.clone();
        for part in rel.split('/').filter(|p| !p.is_empty()) {
            p = p.child(part);
        }
        p
    }

    /// Write `rel` in one piece: readers see the old content or the new, never a mix.
    pub async fn put(&self, rel: &str, data: Bytes) -> Result<()> {
        self.inner
            .put(&self.path(rel), PutPayload::from(data))
            .await
            .with_context(|| format!("cannot write {}", self.url_of(rel)))?;
        Ok(())
    }

    /// Read `rel`.
    pub async fn get(&self, rel: &str) -> Result<Bytes> {
        let r = self
            .inner
            .get(&self.path(rel))
            .await
            .with_context(|| format!("cannot read {}", self.url_of(rel)))?;
        r.bytes()
            .await
            .with_context(|| format!("cannot read {}", self.url_of(rel)))
    }

    /// Read `rel`, or `None` when it does not exist.
    pub async fn get_opt(&self, rel: &str) -> Result<Option<Bytes>> {
        match self.inner.get(&self.path(rel)).await {
            Ok(r) => {
                Ok(Some(r.bytes().await.with_context(|| {
                    format!("cannot read {}", self.url_of(rel))
                })?))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", self.url_of(rel))),
        }
    }

    /// Size and entity tag of `rel` (a cheap metadata request, no content), or `None` when it
    /// does not exist. Readers use them to tell whether a file changed since they last read it.
    pub async fn head(&self, rel: &str) -> Result<Option<(u64, Option<String>)>> {
        match self.inner.head(&self.path(rel)).await {
            Ok(m) => Ok(Some((m.size, m.e_tag))),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", self.url_of(rel))),
        }
    }

    /// Names of the immediate sub-folders of `rel`, sorted.
    pub async fn list_dirs(&self, rel: &str) -> Result<Vec<String>> {
        let base = self.path(rel);
        let res = self
            .inner
            .list_with_delimiter(Some(&base))
            .await
            .with_context(|| format!("cannot list {}", self.url_of(rel)))?;
        let mut names: Vec<String> = res
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename().map(str::to_string))
            .collect();
        names.sort();
        Ok(names)
    }

    /// Names of the files directly in `rel`, sorted.
    pub async fn list_files(&self, rel: &str) -> Result<Vec<String>> {
        let base = self.path(rel);
        let res = self
            .inner
            .list_with_delimiter(Some(&base))
            .await
            .with_context(|| format!("cannot list {}", self.url_of(rel)))?;
        let mut names: Vec<String> = res
            .objects
            .iter()
            .filter_map(|o| o.location.filename().map(str::to_string))
            .collect();
        names.sort();
        Ok(names)
    }

    /// Every object under `rel`, at any depth, sorted by path. An absent folder lists empty
    /// (object stores have no folders to be missing); an error means the store could not be
    /// asked (unreachable endpoint, refused credentials).
    pub async fn list_recursive(&self, rel: &str) -> Result<Vec<Listed>> {
        let base = self.path(rel);
        let objects: Vec<_> = self
            .inner
            .list(Some(&base))
            .try_collect()
            .await
            .with_context(|| format!("cannot list {}", self.url_of(rel)))?;
        let skip = base.parts().count();
        let mut out: Vec<Listed> = objects
            .into_iter()
            .map(|o| Listed {
                rel: o
                    .location
                    .parts()
                    .skip(skip)
                    .map(|p| p.as_ref().to_string())
                    .collect::<Vec<_>>()
                    .join("/"),
                size: o.size,
                version: format!(
                    "{}|{}",
                    o.e_tag.unwrap_or_default(),
                    o.last_modified.to_rfc3339()
                ),
            })
            .collect();
        out.sort_by(|a, b| a.rel.cmp(&b.rel));
        Ok(out)
    }

    /// Delete one object; one that does not exist is not an error.
    pub async fn delete(&self, rel: &str) -> Result<()> {
        match self.inner.delete(&self.path(rel)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e).with_context(|| format!("cannot delete {}", self.url_of(rel))),
        }
    }

    /// Delete every object under `rel`.
    pub async fn delete_prefix(&self, rel: &str) -> Result<()> {
        let base = self.path(rel);
        let objects: Vec<_> = self
            .inner
            .list(Some(&base))
            .try_collect()
            .await
            .with_context(|| format!("cannot list {}", self.url_of(rel)))?;
        for o in objects {
            match self.inner.delete(&o.location).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(e).with_context(|| format!("cannot delete {}", o.location)),
            }
        }
        if let Some(dir) = self.local_path().map(|p| p.join(rel)) {
            // The local store leaves empty folders behind; tidy them so listings stay clean.
            let _ = std::fs::remove_dir_all(dir);
        }
        Ok(())
    }

    /// Fail early, with the URL in the message, when this folder cannot be written
    /// (wrong credentials, missing bucket, read-only mount, dead endpoint), or when the store
    /// has not answered within `timeout`: an endpoint that accepts connections and never
    /// answers would otherwise hold the caller for the client's retries, minutes.
    pub async fn probe_writable(&self, timeout: std::time::Duration) -> Result<()> {
        tokio::time::timeout(timeout, self.probe_write_and_delete())
            .await
            .map_err(|_| {
                anyhow!(
                    "output location {}: the storage did not answer within {} s \
                     (check the endpoint, and that the network lets this pod reach it)",
                    self.url,
                    timeout.as_secs_f64()
                )
            })?
    }

    async fn probe_write_and_delete(&self) -> Result<()> {
        let name = format!(".textrec-write-probe-{}", std::process::id());
        self.put(&name, Bytes::from_static(b"probe"))
            .await
            .with_context(|| format!("output location {} is not writable", self.url))?;
        self.inner
            .delete(&self.path(&name))
            .await
            .with_context(|| format!("output location {} does not allow deletes", self.url))?;
        Ok(())
    }

    /// Write a complete folder: every file first, then `manifest.json` built from their digests.
    /// A reader that finds the manifest can trust the files are all there.
    pub async fn write_folder(
        &self,
        rel: &str,
        files: Vec<(String, Bytes)>,
        manifest: impl FnOnce(Vec<FileDigest>) -> Result<Vec<u8>>,
    ) -> Result<Vec<u8>> {
        let dir = self.child(rel);
        let mut digests = Vec::with_capacity(files.len());
        for (name, data) in files {
            digests.push(FileDigest::of(name.clone(), &data));
            dir.put(&name, data).await?;
        }
        let bytes = manifest(digests)?;
        dir.put(crate::layout::MANIFEST, Bytes::from(bytes.clone()))
            .await?;
        Ok(bytes)
    }

    /// Read the files `digests` names from folder `rel` and check each against its sha256.
    pub async fn read_verified(
        &self,
        rel: &str,
        digests: &[FileDigest],
    ) -> Result<Vec<(String, Bytes)>> {
        let dir = self.child(rel);
        let mut out = Vec::with_capacity(digests.len());
        for d in digests {
            let data = dir.get(&d.path).await?;
            d.verify(&data).map_err(|e| anyhow!("{}: {e}", dir.url()))?;
            out.push((d.path.clone(), data));
        }
        Ok(out)
    }
}

/// Stores for tests of code that reads or writes through a [`Store`].
#[cfg(any(test, feature = "testing"))]
pub mod testing {
    use super::*;

    /// A store at `url` (`s3://…`) whose S3 endpoint accepts connections and never answers,
    /// as a hung or blackholed endpoint does: `object_store` alone waits 30 s for each answer
    /// and then retries, so only a caller's own timeout ends a request.
    pub fn silent_s3(url: &str) -> Store {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a local port");
        let port = listener.local_addr().expect("a bound port").port();
        std::thread::spawn(move || {
            // Hold every connection open, unanswered.
            let held: Vec<_> = listener.incoming().collect();
            drop(held);
        });
        let bucket = Url::parse(url)
            .ok()
            .and_then(|u| u.host_str().map(str::to_string))
            .expect("an s3://BUCKET/… URL");
        let s3 = object_store::aws::AmazonS3Builder::new()
            .with_bucket_name(bucket)
            .with_region("us-east-1")
            .with_endpoint(format!("http://127.0.0.1:{port}"))
            .with_allow_http(true)
            .with_access_key_id("key")
            .with_secret_access_key("secret")
            .build()
            .expect("an S3 client");
        Store::from_object_store(Arc::new(s3), url).expect("a store URL")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn local_store_round_trips_and_lists() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path().to_str().unwrap()).unwrap();
        assert!(store.url().starts_with("file:///") && store.url().ends_with('/'));
        store
            .put("a/b/one.txt", Bytes::from_static(b"1"))
            .await
            .unwrap();
        store
            .put("a/c/two.txt", Bytes::from_static(b"2"))
            .await
            .unwrap();
        assert_eq!(store.list_dirs("a").await.unwrap(), vec!["b", "c"]);
        assert_eq!(
            store.child("a/b").list_files("").await.unwrap(),
            vec!["one.txt"]
        );
        assert_eq!(&store.get("a/b/one.txt").await.unwrap()[..], b"1");
        assert!(store.get_opt("nope").await.unwrap().is_none());
        store.delete_prefix("a/b").await.unwrap();
        assert_eq!(store.list_dirs("a").await.unwrap(), vec!["c"]);
        store
            .probe_writable(std::time::Duration::from_secs(10))
            .await
            .unwrap();
    }

    /// An S3 endpoint that accepts connections and never answers: the probe names the
    /// location and gives up at its timeout, not after the client's minutes of retries.
    #[tokio::test]
    async fn a_probe_of_a_store_that_never_answers_ends_at_its_timeout() {
        let store = testing::silent_s3("s3://runs/trial/");
        let started = std::time::Instant::now();
        let e = store
            .probe_writable(std::time::Duration::from_millis(300))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("s3://runs/trial/") && e.contains("did not answer within 0.3 s"),
            "{e}"
        );
        // object_store alone waits 30 s for one answer before it even retries.
        assert!(started.elapsed() < std::time::Duration::from_secs(10));
    }

    #[tokio::test]
    async fn write_folder_puts_manifest_last_and_verifies() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path().to_str().unwrap()).unwrap();
        let manifest = store
            .write_folder(
                "m",
                vec![("w.bin".into(), Bytes::from_static(b"weights"))],
                |d| Ok(serde_json::to_vec(&d)?),
            )
            .await
            .unwrap();
        let digests: Vec<FileDigest> = serde_json::from_slice(&manifest).unwrap();
        store.read_verified("m", &digests).await.unwrap();
        std::fs::write(tmp.path().join("m/w.bin"), b"tampered").unwrap();
        let err = store.read_verified("m", &digests).await.unwrap_err();
        assert!(format!("{err:#}").contains("w.bin"));
    }

    #[tokio::test]
    async fn recursive_listing_is_relative_sorted_and_empty_when_absent() {
        let mem: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        let store = Store::from_object_store(mem.clone(), "mem://bucket/data/").unwrap();
        for name in ["b/2.png", "a.png", "b/c/3.gt.txt"] {
            store.put(name, Bytes::from_static(b"xy")).await.unwrap();
        }
        // A sibling whose name extends the prefix is not inside it.
        let sibling = Store::from_object_store(mem, "mem://bucket/data2/").unwrap();
        sibling
            .put("x.png", Bytes::from_static(b"1"))
            .await
            .unwrap();
        let listed = store.list_recursive("").await.unwrap();
        let names: Vec<&str> = listed.iter().map(|l| l.rel.as_str()).collect();
        assert_eq!(names, ["a.png", "b/2.png", "b/c/3.gt.txt"]);
        assert!(listed.iter().all(|l| l.size == 2 && !l.version.is_empty()));
        assert_eq!(
            store.list_recursive("b/c").await.unwrap()[0].rel,
            "3.gt.txt"
        );
        assert!(store.list_recursive("nothing").await.unwrap().is_empty());
        let tmp = tempfile::tempdir().unwrap();
        let missing = tmp.path().join("missing");
        assert!(Store::open_existing(missing.to_str().unwrap()).is_err());
        assert!(!missing.exists(), "reading must not create the folder");
    }

    #[test]
    fn unknown_scheme_is_rejected_with_the_alternatives() {
        let err = Store::open("ftp://host/x").unwrap_err();
        assert!(err.to_string().contains("s3://"));
    }

    #[test]
    fn child_urls_nest() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path().to_str().unwrap()).unwrap();
        let c = store.child("run/trial-0");
        assert!(c.url().ends_with("/run/trial-0/"));
        assert!(c.url_of("model").ends_with("/run/trial-0/model"));
    }
}
