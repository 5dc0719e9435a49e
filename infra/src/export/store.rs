//! The object store export jobs write to and query-api serves files from: `APP_JOBS__STORE`, a
//! URL (`file:///abs/folder`, `s3://bucket/prefix`, `gs://bucket/prefix`, `az://container/prefix`)
//! opened with `object_store`'s `parse_url_opts`. Cloud credentials and options come from the
//! usual `AWS_…`, `GOOGLE_…`, `AZURE_…` variables, then from `jobs.store_options`.
//!
//! Layout: `<prefix>/<tenant>/<job id>/part-00000.parquet` … and `…/manifest.json`.

use std::sync::Arc;

use anyhow::{bail, Context};
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, PutPayload};
use uuid::Uuid;

use crate::settings::Jobs;

/// The name of an export's manifest beside its part files.
pub const MANIFEST: &str = "manifest.json";

/// Whether `name` is a file name an export writes: `manifest.json` or `part-NNNNN.jsonl|parquet`.
pub fn is_export_file_name(name: &str) -> bool {
    if name == MANIFEST {
        return true;
    }
    let Some(rest) = name.strip_prefix("part-") else {
        return false;
    };
    let Some((digits, ext)) = rest.split_once('.') else {
        return false;
    };
    digits.len() >= 5
        && digits.len() <= 9
        && digits.bytes().all(|b| b.is_ascii_digit())
        && (ext == "jsonl" || ext == "parquet")
}

/// An opened export store.
#[derive(Clone)]
pub struct ExportStore {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    url: String,
}

impl std::fmt::Debug for ExportStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExportStore")
            .field("url", &self.url)
            .finish()
    }
}

impl ExportStore {
    /// Open `settings.store`; an error when it is empty or does not parse.
    pub fn open(settings: &Jobs) -> anyhow::Result<Self> {
        if settings.store.trim().is_empty() {
            bail!("no export store configured (APP_JOBS__STORE, e.g. file:///var/lib/exports or s3://bucket/exports)");
        }
        let url = url::Url::parse(settings.store.trim())
            .with_context(|| format!("APP_JOBS__STORE {:?} is not a URL", settings.store))?;
        if url.scheme() == "file" {
            let folder = url
                .to_file_path()
                .map_err(|()| anyhow::anyhow!("{url} is not an absolute folder"))?;
            std::fs::create_dir_all(&folder)
                .with_context(|| format!("creating {}", folder.display()))?;
        }
        let mut options: Vec<(String, String)> = std::env::vars()
            .filter(|(k, _)| {
                k.starts_with("AWS_") || k.starts_with("GOOGLE_") || k.starts_with("AZURE_")
            })
            .map(|(k, v)| (k.to_ascii_lowercase(), v))
            .collect();
        options.extend(
            settings
                .store_options
                .iter()
                .map(|(k, v)| (k.clone(), v.clone())),
        );
        let (store, prefix) = object_store::parse_url_opts(&url, options)
            .with_context(|| format!("opening the export store {url}"))?;
        Ok(Self {
            store: Arc::from(store),
            prefix,
            url: url.to_string(),
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// The path of one file of one job.
    pub fn path(&self, tenant: &str, job: Uuid, name: &str) -> Path {
        self.job_folder(tenant, job).child(name)
    }

    fn job_folder(&self, tenant: &str, job: Uuid) -> Path {
        self.prefix.child(tenant).child(job.to_string())
    }

    /// Write a whole file (replacing it): when this returns, the file is stored.
    pub async fn put(
        &self,
        tenant: &str,
        job: Uuid,
        name: &str,
        bytes: Vec<u8>,
    ) -> anyhow::Result<()> {
        let path = self.path(tenant, job, name);
        self.store
            .put(&path, PutPayload::from(bytes))
            .await
            .with_context(|| format!("writing {path}"))?;
        Ok(())
    }

    /// A whole file.
    pub async fn get_bytes(&self, tenant: &str, job: Uuid, name: &str) -> anyhow::Result<Vec<u8>> {
        let path = self.path(tenant, job, name);
        let result = self
            .store
            .get(&path)
            .await
            .with_context(|| format!("reading {path}"))?;
        Ok(result.bytes().await?.to_vec())
    }

    /// A file as a stream of chunks, with its size; `None` when there is no such file.
    pub async fn get_stream(
        &self,
        tenant: &str,
        job: Uuid,
        name: &str,
    ) -> anyhow::Result<
        Option<(
            u64,
            futures::stream::BoxStream<'static, Result<bytes::Bytes, object_store::Error>>,
        )>,
    > {
        let path = self.path(tenant, job, name);
        match self.store.get(&path).await {
            Ok(result) => {
                let size = result.meta.size;
                Ok(Some((size, result.into_stream())))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {path}")),
        }
    }

    /// Delete every file of a job (a cancelled job's parts).
    pub async fn delete_job(&self, tenant: &str, job: Uuid) -> anyhow::Result<usize> {
        let folder = self.job_folder(tenant, job);
        let files: Vec<Path> = self
            .store
            .list(Some(&folder))
            .map_ok(|meta| meta.location)
            .try_collect()
            .await
            .with_context(|| format!("listing {folder}"))?;
        for path in &files {
            match self.store.delete(path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(e).with_context(|| format!("deleting {path}")),
            }
        }
        Ok(files.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_export_file_names_are_served() {
        for ok in [
            "manifest.json",
            "part-00000.parquet",
            "part-00042.jsonl",
            "part-123456.jsonl",
        ] {
            assert!(is_export_file_name(ok), "{ok}");
        }
        for bad in [
            "",
            "part-1.jsonl",
            "part-00000.csv",
            "../manifest.json",
            "part-0000a.jsonl",
            "part-00000.parquet/x",
            "manifest.json.bak",
        ] {
            assert!(!is_export_file_name(bad), "{bad}");
        }
    }

    #[tokio::test]
    async fn a_local_folder_stores_reads_and_deletes_a_jobs_files() {
        let dir = std::env::temp_dir().join(format!("export-store-{}", Uuid::now_v7()));
        let settings = Jobs {
            store: format!("file://{}", dir.display()),
            ..Jobs::default()
        };
        let store = ExportStore::open(&settings).unwrap();
        let job = Uuid::now_v7();
        store
            .put("te.nant:1", job, "part-00000.jsonl", b"{}\n".to_vec())
            .await
            .unwrap();
        assert_eq!(
            store
                .get_bytes("te.nant:1", job, "part-00000.jsonl")
                .await
                .unwrap(),
            b"{}\n"
        );
        let (size, _) = store
            .get_stream("te.nant:1", job, "part-00000.jsonl")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(size, 3);
        assert!(store
            .get_stream("te.nant:1", job, MANIFEST)
            .await
            .unwrap()
            .is_none());
        assert!(store
            .get_stream("other", job, "part-00000.jsonl")
            .await
            .unwrap()
            .is_none());
        assert_eq!(store.delete_job("te.nant:1", job).await.unwrap(), 1);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn an_empty_or_relative_store_is_refused() {
        assert!(ExportStore::open(&Jobs::default()).is_err());
        let relative = Jobs {
            store: "exports".into(),
            ..Jobs::default()
        };
        assert!(ExportStore::open(&relative).is_err());
    }
}
