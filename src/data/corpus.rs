//! Text corpora as rows of text: WikiText-2, PTB and C4 from a local data directory (or the
//! Hugging Face hub when the local file is missing), and any local text, JSONL or parquet file.

use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};

use super::rows::read_rows;
use super::rows::RowFormat;
use super::Split;
use crate::io::hub::Hub;

/// A text corpus: one of the papers' named datasets or a local file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Corpus {
    Wikitext2,
    Ptb,
    C4,
    File(PathBuf),
}

/// The rows of a corpus split and where they came from.
#[derive(Clone, Debug)]
pub struct Rows {
    pub rows: Vec<String>,
    /// The file(s) read, or the hub repository and file downloaded.
    pub source: String,
}

impl Corpus {
    /// Parses `wikitext2`, `ptb`, `c4` (any case) or the path of an existing file.
    pub fn parse(spec: &str) -> Result<Self> {
        match spec.to_ascii_lowercase().as_str() {
            "wikitext2" => return Ok(Corpus::Wikitext2),
            "ptb" => return Ok(Corpus::Ptb),
            "c4" => return Ok(Corpus::C4),
            _ => {}
        }
        let path = Path::new(spec);
        if path.is_file() {
            Ok(Corpus::File(path.to_path_buf()))
        } else if path.exists() {
            bail!("corpus `{spec}` is a directory, expected a text, .jsonl or .parquet file")
        } else {
            bail!("unknown corpus `{spec}` (expected wikitext2, ptb, c4 or an existing file)")
        }
    }

    /// Short name for reports: the dataset name or the file path.
    pub fn name(&self) -> String {
        match self {
            Corpus::Wikitext2 => "wikitext2".to_string(),
            Corpus::Ptb => "ptb".to_string(),
            Corpus::C4 => "c4".to_string(),
            Corpus::File(path) => path.display().to_string(),
        }
    }
}

impl fmt::Display for Corpus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

/// `../shared/data` relative to the working directory, when it exists.
pub fn default_data_dir() -> Option<PathBuf> {
    let dir = PathBuf::from("../shared/data");
    dir.is_dir().then_some(dir)
}

/// Reads one split of a corpus: [`Split::Train`] is the calibration text (the train split, or
/// validation where the data directory lacks it), [`Split::Eval`] the test text.
///
/// Named corpora are looked up under `data_dir` (default [`default_data_dir`]); when no local
/// file is there, the split is fetched through `hub`.
pub fn load_rows(
    corpus: &Corpus,
    split: Split,
    data_dir: Option<&Path>,
    hub: &Hub,
) -> Result<Rows> {
    let layout = match corpus {
        Corpus::File(path) => {
            return Ok(Rows {
                rows: read_rows(path)?,
                source: path.display().to_string(),
            })
        }
        Corpus::Wikitext2 => Layout::wikitext2(split),
        Corpus::Ptb => Layout::ptb(split),
        Corpus::C4 => Layout::c4(),
    };
    let dir = data_dir.map(Path::to_path_buf).or_else(default_data_dir);
    if let Some(dir) = &dir {
        if let Some(rows) = layout.read_local(dir)? {
            return Ok(rows);
        }
    }
    layout.read_from_hub(hub).map_err(|err| {
        let split = match split {
            Split::Train => "calibration",
            Split::Eval => "test",
        };
        anyhow!(
            "{corpus} {split} text not found: expected {} (pass --data-dir to point at the data \
             directory); the hub copy {}/{} could not be used either: {err:#}",
            layout.expected_local(dir.as_deref()),
            layout.hub.repo,
            layout.hub.file
        )
    })
}

/// A file in a Hugging Face dataset repository.
struct HubFile {
    repo: &'static str,
    file: String,
    format: RowFormat,
}

/// Where one split of a named corpus lives: local candidates (relative to the data
/// directory, most wanted first) and the hub copy.
struct Layout {
    local: Vec<LocalFile>,
    hub: HubFile,
}

enum LocalFile {
    Exact(&'static str),
    /// Every file in `dir` whose name starts with `prefix` and ends with `suffix`, read in
    /// name order (a set of shards).
    Shards {
        dir: &'static str,
        prefix: &'static str,
        suffix: &'static str,
    },
}

/// The hub's name for a split.
fn hub_split(split: Split) -> &'static str {
    match split {
        Split::Train => "train",
        Split::Eval => "test",
    }
}

// Calibration prefers the train split, as the papers do; the shared data directory lacks the
// train files, so the validation split stands in (`Rows::source` says which was read).
impl Layout {
    fn wikitext2(split: Split) -> Self {
        let local = match split {
            Split::Eval => vec![LocalFile::Exact("wikitext2_raw/wiki.test.raw")],
            Split::Train => vec![
                LocalFile::Exact("wikitext2_raw/wiki.train.raw"),
                LocalFile::Exact("wikitext2_raw/wiki.valid.raw"),
            ],
        };
        let hub = HubFile {
            repo: "Salesforce/wikitext",
            file: format!(
                "wikitext-2-raw-v1/{}-00000-of-00001.parquet",
                hub_split(split)
            ),
            format: RowFormat::Parquet { column: "text" },
        };
        Layout { local, hub }
    }

    fn ptb(split: Split) -> Self {
        let local = match split {
            Split::Eval => vec![LocalFile::Exact("ptb/ptb.test.txt")],
            Split::Train => vec![
                LocalFile::Exact("ptb/ptb.train.txt"),
                LocalFile::Exact("ptb/ptb.valid.txt"),
            ],
        };
        let hub = HubFile {
            repo: "ptb-text-only/ptb_text_only",
            file: format!("penn_treebank/{}-00000-of-00001.parquet", hub_split(split)),
            format: RowFormat::Parquet { column: "sentence" },
        };
        Layout { local, hub }
    }

    /// C4 has no test split: both uses read validation shards, as the papers do for
    /// perplexity (the shared directory only holds a train sample, used as a stand-in).
    fn c4() -> Self {
        Layout {
            local: vec![
                LocalFile::Shards {
                    dir: "c4",
                    prefix: "c4-validation",
                    suffix: ".jsonl",
                },
                LocalFile::Exact("c4/c4_en_train_first1000.jsonl"),
            ],
            hub: HubFile {
                repo: "allenai/c4",
                file: "en/c4-validation.00000-of-00008.json.gz".to_string(),
                format: RowFormat::JsonlGz,
            },
        }
    }

    /// The rows of the first local candidate present under `data_dir`, if any.
    fn read_local(&self, data_dir: &Path) -> Result<Option<Rows>> {
        for candidate in &self.local {
            let files = candidate.present_in(data_dir)?;
            if files.is_empty() {
                continue;
            }
            let mut rows = Vec::new();
            for file in &files {
                rows.extend(read_rows(file)?);
            }
            let source = files
                .iter()
                .map(|f| f.display().to_string())
                .collect::<Vec<_>>()
                .join(", ");
            return Ok(Some(Rows { rows, source }));
        }
        Ok(None)
    }

    fn read_from_hub(&self, hub: &Hub) -> Result<Rows> {
        let path = hub.dataset_file(self.hub.repo, None, &self.hub.file)?;
        Ok(Rows {
            rows: self.hub.format.read(&path)?,
            source: format!("hf://datasets/{}/{}", self.hub.repo, self.hub.file),
        })
    }

    /// The local file(s) a user should provide, for error messages.
    fn expected_local(&self, data_dir: Option<&Path>) -> String {
        let dir = data_dir.map_or_else(|| "<data-dir>".to_string(), |d| d.display().to_string());
        self.local
            .iter()
            .map(|candidate| format!("{dir}/{}", candidate.pattern()))
            .collect::<Vec<_>>()
            .join(" or ")
    }
}

impl LocalFile {
    fn present_in(&self, data_dir: &Path) -> Result<Vec<PathBuf>> {
        match self {
            LocalFile::Exact(relative) => {
                let path = data_dir.join(relative);
                Ok(if path.is_file() { vec![path] } else { vec![] })
            }
            LocalFile::Shards {
                dir,
                prefix,
                suffix,
            } => {
                let dir = data_dir.join(dir);
                if !dir.is_dir() {
                    return Ok(vec![]);
                }
                let entries = std::fs::read_dir(&dir)
                    .with_context(|| format!("cannot list {}", dir.display()))?;
                let mut shards = Vec::new();
                for entry in entries {
                    let entry = entry.with_context(|| format!("cannot list {}", dir.display()))?;
                    let name = entry.file_name().to_string_lossy().into_owned();
                    if name.starts_with(prefix) && name.ends_with(suffix) {
                        shards.push(entry.path());
                    }
                }
                shards.sort();
                Ok(shards)
            }
        }
    }

    fn pattern(&self) -> String {
        match self {
            LocalFile::Exact(relative) => relative.to_string(),
            LocalFile::Shards {
                dir,
                prefix,
                suffix,
            } => format!("{dir}/{prefix}*{suffix}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_names_any_case() {
        assert_eq!(Corpus::parse("WikiText2").unwrap(), Corpus::Wikitext2);
        assert_eq!(Corpus::parse("ptb").unwrap(), Corpus::Ptb);
        assert_eq!(Corpus::parse("C4").unwrap(), Corpus::C4);
    }

    #[test]
    fn expected_local_lists_candidates() {
        let layout = Layout::ptb(Split::Train);
        assert_eq!(
            layout.expected_local(Some(Path::new("/d"))),
            "/d/ptb/ptb.train.txt or /d/ptb/ptb.valid.txt"
        );
        let c4 = Layout::c4();
        assert!(c4
            .expected_local(None)
            .starts_with("<data-dir>/c4/c4-validation*.jsonl"));
    }
}
