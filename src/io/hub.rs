//! The Hugging Face hub client for models and datasets alike: a file of a repository comes from
//! the local hub cache when it is there, else it is downloaded into the cache (never when
//! offline).

use std::fmt;
use std::path::PathBuf;

use anyhow::{Context, Result};
use hf_hub::{Cache, Repo, RepoType};

/// Where hub files are cached, whether the network may be used, and from where.
#[derive(Clone, Debug)]
pub struct Hub {
    cache: Cache,
    offline: bool,
    /// The hub's address when not the default (HF_ENDPOINT).
    endpoint: Option<String>,
}

/// Why a hub file could not be had.
#[derive(Debug)]
pub enum HubError {
    /// Not in the cache, and downloads are off.
    Offline { file: String, cache: PathBuf },
    /// Not in the cache, and the download failed for `cause`.
    Download { file: String, cause: String },
}

impl fmt::Display for HubError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HubError::Offline { file, cache } => write!(
                f,
                "{file} is not in the hub cache ({}) and HF_HUB_OFFLINE is set",
                cache.display()
            ),
            HubError::Download { file, cause } => {
                write!(f, "{file} cannot be downloaded from the hub: {cause}")
            }
        }
    }
}

impl std::error::Error for HubError {}

impl Hub {
    /// The settings Hugging Face's own tools read: HF_HOME (the cache), HF_HUB_OFFLINE and
    /// HF_ENDPOINT.
    pub fn from_env() -> Self {
        Self {
            cache: Cache::from_env(),
            offline: std::env::var("HF_HUB_OFFLINE")
                .is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true")),
            endpoint: std::env::var("HF_ENDPOINT").ok(),
        }
    }

    /// The cache at `cache_dir` only, never the network.
    pub fn offline(cache_dir: PathBuf) -> Self {
        Self {
            cache: Cache::new(cache_dir),
            offline: true,
            endpoint: None,
        }
    }

    /// `file` of model `repo` at `revision`.
    pub fn model_file(&self, repo: &str, revision: &str, file: &str) -> Result<PathBuf> {
        let repo = Repo::with_revision(repo.to_string(), RepoType::Model, revision.to_string());
        self.get(repo, file)
    }

    /// `file` of dataset `repo` at `revision` (None: main).
    pub fn dataset_file(&self, repo: &str, revision: Option<&str>, file: &str) -> Result<PathBuf> {
        let repo = match revision {
            Some(r) => Repo::with_revision(repo.to_string(), RepoType::Dataset, r.to_string()),
            None => Repo::new(repo.to_string(), RepoType::Dataset),
        };
        self.get(repo, file)
    }

    /// The error is a [`HubError`] when the file is neither cached nor downloadable.
    fn get(&self, repo: Repo, file: &str) -> Result<PathBuf> {
        if let Some(path) = self.cache.repo(repo.clone()).get(file) {
            return Ok(path);
        }
        if self.offline {
            return Err(HubError::Offline {
                file: file.to_string(),
                cache: self.cache.path().clone(),
            }
            .into());
        }
        let mut builder = hf_hub::api::sync::ApiBuilder::from_cache(self.cache.clone());
        if let Some(endpoint) = &self.endpoint {
            builder = builder.with_endpoint(endpoint.clone());
        }
        let api = builder
            .build()
            .context("cannot start the Hugging Face hub client")?;
        api.repo(repo).get(file).map_err(|err| {
            // The hub client's error repeats its cause down the chain; the root says it once.
            let err = anyhow::Error::from(err);
            HubError::Download {
                file: file.to_string(),
                cause: err.root_cause().to_string(),
            }
            .into()
        })
    }
}
