//! Text corpora as rows of text: WikiText-2, PTB and C4 from a local data directory (or the
//! Hugging Face hub when the local file is missing), and any local text, JSONL or parquet file.

use std::fmt;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use parquet::file::reader::SerializedFileReader;
use parquet::record::{Field, Row};

/// A text corpus: one of the papers' named datasets or a local file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Corpus {
    Wikitext2,
    Ptb,
    C4,
    File(PathBuf),
}

/// Which part of a corpus to read: calibration text (a train split when there is one) or the
/// held-out test text perplexity is measured on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    Calibration,
    Test,
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

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Split::Calibration => "calibration",
            Split::Test => "test",
        })
    }
}

/// `../shared/data` relative to the working directory, when it exists.
pub fn default_data_dir() -> Option<PathBuf> {
    let dir = PathBuf::from("../shared/data");
    dir.is_dir().then_some(dir)
}

/// Reads one split of a corpus.
///
/// Named corpora are looked up under `data_dir` (default [`default_data_dir`]); when no local
/// file is there, the split is fetched from the Hugging Face hub (cache first; nothing is
/// downloaded when HF_HUB_OFFLINE=1).
pub fn load_rows(corpus: &Corpus, split: Split, data_dir: Option<&Path>) -> Result<Rows> {
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
    layout.read_from_hub().map_err(|err| {
        anyhow!(
            "{corpus} {split} text not found: expected {} (pass --data-dir to point at the data \
             directory); the hub copy {}/{} could not be used either: {err:#}",
            layout.expected_local(dir.as_deref()),
            layout.hub.repo,
            layout.hub.file
        )
    })
}

/// The rows of a local file, chosen by its name: `.jsonl` (the `text` field of each line),
/// `.json.gz`/`.jsonl.gz` (the same, gzip-compressed), `.parquet` (the `text` column) or plain
/// text (its lines without the newline).
pub fn read_rows(path: &Path) -> Result<Vec<String>> {
    RowFormat::of(path).read(path)
}

/// How a file's bytes become rows.
#[derive(Clone, Copy, Debug)]
enum RowFormat {
    Lines,
    Jsonl,
    JsonlGz,
    Parquet { column: &'static str },
}

impl RowFormat {
    fn of(path: &Path) -> Self {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().to_ascii_lowercase())
            .unwrap_or_default();
        if name.ends_with(".jsonl") {
            RowFormat::Jsonl
        } else if name.ends_with(".json.gz") || name.ends_with(".jsonl.gz") {
            RowFormat::JsonlGz
        } else if name.ends_with(".parquet") {
            RowFormat::Parquet { column: "text" }
        } else {
            RowFormat::Lines
        }
    }

    fn read(self, path: &Path) -> Result<Vec<String>> {
        match self {
            RowFormat::Lines => Ok(read_text(path)?.lines().map(str::to_string).collect()),
            RowFormat::Jsonl => jsonl_texts(&read_text(path)?, path),
            RowFormat::JsonlGz => jsonl_texts(&read_gzip_text(path)?, path),
            RowFormat::Parquet { column } => parquet_column(path, column),
        }
    }
}

fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path)
        .with_context(|| format!("cannot read {} as UTF-8 text", path.display()))
}

fn read_gzip_text(path: &Path) -> Result<String> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut text = String::new();
    flate2::read::MultiGzDecoder::new(BufReader::new(file))
        .read_to_string(&mut text)
        .with_context(|| format!("cannot decompress {} as gzipped UTF-8", path.display()))?;
    Ok(text)
}

/// The `text` field of every non-blank line of a JSONL document.
fn jsonl_texts(content: &str, path: &Path) -> Result<Vec<String>> {
    content
        .lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(index, line)| {
            let at = || format!("{}:{}", path.display(), index + 1);
            let record: serde_json::Value =
                serde_json::from_str(line).with_context(|| format!("{}: invalid JSON", at()))?;
            match record.get("text").and_then(|t| t.as_str()) {
                Some(text) => Ok(text.to_string()),
                None => bail!("{}: no string field `text`", at()),
            }
        })
        .collect()
}

/// Every value of one string column of a parquet file, in row order.
fn parquet_column(path: &Path, column: &str) -> Result<Vec<String>> {
    parquet_rows(path)?
        .map(|row| {
            let (index, row) = row?;
            match row
                .get_column_iter()
                .find(|(name, _)| name.as_str() == column)
            {
                Some((_, Field::Str(text))) => Ok(text.clone()),
                Some((_, Field::Null)) => Ok(String::new()),
                _ => bail!(
                    "{}: row {index} has no string column `{column}`",
                    path.display()
                ),
            }
        })
        .collect()
}

/// The rows of a parquet file with their indices; errors name the file.
fn parquet_rows(path: &Path) -> Result<impl Iterator<Item = Result<(usize, Row)>> + '_> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let reader = SerializedFileReader::new(file)
        .with_context(|| format!("{} is not a readable parquet file", path.display()))?;
    Ok(reader.into_iter().enumerate().map(move |(index, row)| {
        row.map(|row| (index, row))
            .with_context(|| format!("{}: bad row {index}", path.display()))
    }))
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
        Split::Calibration => "train",
        Split::Test => "test",
    }
}

// Calibration prefers the train split, as the papers do; the shared data directory lacks the
// train files, so the validation split stands in (`Rows::source` says which was read).
impl Layout {
    fn wikitext2(split: Split) -> Self {
        let local = match split {
            Split::Test => vec![LocalFile::Exact("wikitext2_raw/wiki.test.raw")],
            Split::Calibration => vec![
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
            Split::Test => vec![LocalFile::Exact("ptb/ptb.test.txt")],
            Split::Calibration => vec![
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

    fn read_from_hub(&self) -> Result<Rows> {
        let path = fetch_from_hub(&self.hub)?;
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

fn hub_offline() -> bool {
    std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"))
}

/// The local path of a hub dataset file: from the cache (HF_HOME), else downloaded.
fn fetch_from_hub(hub: &HubFile) -> Result<PathBuf> {
    fetch_dataset_file(hub.repo, None, &hub.file)
}

/// The local path of `file` in dataset `repo` at `revision` (None: main), from the hub cache
/// (HF_HOME) or else downloaded into it; an error when it is in neither and HF_HUB_OFFLINE is
/// set or the download fails.
pub fn fetch_dataset_file(repo: &str, revision: Option<&str>, file: &str) -> Result<PathBuf> {
    let repo = match revision {
        Some(r) => {
            hf_hub::Repo::with_revision(repo.to_string(), hf_hub::RepoType::Dataset, r.to_string())
        }
        None => hf_hub::Repo::new(repo.to_string(), hf_hub::RepoType::Dataset),
    };
    let cache = hf_hub::Cache::from_env();
    if let Some(path) = cache.repo(repo.clone()).get(file) {
        return Ok(path);
    }
    if hub_offline() {
        bail!(
            "not in the hub cache ({}) and HF_HUB_OFFLINE is set",
            cache.path().display()
        );
    }
    let api = hf_hub::api::sync::ApiBuilder::from_env()
        .build()
        .context("cannot set up the Hugging Face hub client")?;
    // ureq repeats its whole chain at every level; the innermost cause is the informative part.
    api.repo(repo).get(file).map_err(|err| {
        let err = anyhow::Error::from(err);
        anyhow!("download failed: {}", err.root_cause())
    })
}

/// Every row of a parquet file as a JSON object (nested groups and lists as JSON objects and
/// arrays), the form the hub's JSONL exports have.
pub fn parquet_records(path: &Path) -> Result<Vec<serde_json::Value>> {
    parquet_rows(path)?
        .map(|row| Ok(row?.1.to_json_value()))
        .collect()
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
    fn jsonl_errors_name_file_and_line() {
        let path = Path::new("docs.jsonl");
        let texts = jsonl_texts("{\"text\": \"a\"}\n\n{\"text\": \"b\", \"x\": 1}\n", path);
        assert_eq!(texts.unwrap(), ["a", "b"]);
        let bad = jsonl_texts("{\"text\": \"a\"}\n{\"text\": oops}\n", path).unwrap_err();
        assert!(bad.to_string().contains("docs.jsonl:2"), "{bad}");
        let missing = jsonl_texts("{\"body\": \"a\"}\n", path).unwrap_err();
        assert!(missing.to_string().contains("docs.jsonl:1"), "{missing}");
        assert!(missing.to_string().contains("`text`"), "{missing}");
    }

    #[test]
    fn formats_follow_file_names() {
        assert!(matches!(
            RowFormat::of(Path::new("a.JSONL")),
            RowFormat::Jsonl
        ));
        assert!(matches!(
            RowFormat::of(Path::new("en/c4-validation.00000-of-00008.json.gz")),
            RowFormat::JsonlGz
        ));
        assert!(matches!(
            RowFormat::of(Path::new("t.parquet")),
            RowFormat::Parquet { column: "text" }
        ));
        assert!(matches!(
            RowFormat::of(Path::new("wiki.test.raw")),
            RowFormat::Lines
        ));
    }

    /// Writes a snappy-compressed parquet file with an optional string column, as the hub's
    /// dataset files are.
    fn write_parquet(path: &Path, column: &str, values: &[Option<&str>]) {
        use std::sync::Arc;

        use parquet::basic::Compression;
        use parquet::data_type::{ByteArray, ByteArrayType};
        use parquet::file::properties::WriterProperties;
        use parquet::file::writer::SerializedFileWriter;
        use parquet::schema::parser::parse_message_type;

        let message = format!("message rows {{ OPTIONAL BYTE_ARRAY {column} (UTF8); }}");
        let schema = Arc::new(parse_message_type(&message).unwrap());
        let properties = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .build();
        let file = File::create(path).unwrap();
        let mut writer = SerializedFileWriter::new(file, schema, Arc::new(properties)).unwrap();
        let mut row_group = writer.next_row_group().unwrap();
        let mut column_writer = row_group.next_column().unwrap().unwrap();
        let present: Vec<ByteArray> = values.iter().flatten().map(|v| (*v).into()).collect();
        let definition: Vec<i16> = values.iter().map(|v| i16::from(v.is_some())).collect();
        column_writer
            .typed::<ByteArrayType>()
            .write_batch(&present, Some(&definition), None)
            .unwrap();
        column_writer.close().unwrap();
        row_group.close().unwrap();
        writer.close().unwrap();
    }

    #[test]
    fn parquet_columns_are_read_in_order() {
        let path =
            std::env::temp_dir().join(format!("grasp-corpus-{}.parquet", std::process::id()));
        write_parquet(
            &path,
            "sentence",
            &[Some(" = Valkyria = \n"), None, Some("é")],
        );
        let rows = parquet_column(&path, "sentence");
        let missing = parquet_column(&path, "text").unwrap_err().to_string();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(rows.unwrap(), [" = Valkyria = \n", "", "é"]);
        assert!(missing.contains("no string column `text`"), "{missing}");
    }

    #[test]
    fn expected_local_lists_candidates() {
        let layout = Layout::ptb(Split::Calibration);
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
