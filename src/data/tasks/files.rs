//! Where a task's docs are read from: the JSONL file under the data directory, else the hub's
//! parquet conversion of the dataset.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::{parse_doc, Doc, Split, Task};
use crate::data::rows::parquet_records;
use crate::io::hub::Hub;

/// Reads every doc of `task`'s `split`: the JSONL file under `data_dir`, else the hub's copy.
pub fn load_docs(task: Task, split: Split, data_dir: Option<&Path>, hub: &Hub) -> Result<Vec<Doc>> {
    match task_file(task, split, data_dir, hub)? {
        TaskFile::Local(path) => {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            text.lines()
                .enumerate()
                .filter(|(_, line)| !line.trim().is_empty())
                .map(|(i, line)| {
                    parse_doc(task, line).with_context(|| format!("{}:{}", path.display(), i + 1))
                })
                .collect()
        }
        TaskFile::Hub(path) => parquet_records(&path)?
            .iter()
            .enumerate()
            .map(|(i, record)| {
                parse_doc(task, &record.to_string())
                    .with_context(|| format!("{} row {i}", path.display()))
            })
            .collect(),
    }
}

/// Where a task split is read from.
pub enum TaskFile {
    /// JSONL under the data directory.
    Local(PathBuf),
    /// The hub's parquet file, in the hub cache.
    Hub(PathBuf),
}

/// The hub's own parquet conversion of every dataset: `{config}/{split}/0000.parquet`.
const HUB_PARQUET_REVISION: &str = "refs/convert/parquet";

/// The file of `task`'s `split`: under `data_dir` when it is there, else from the hub
/// (cache first); an error naming both and `--data-dir` when neither can be had.
pub fn task_file(task: Task, split: Split, data_dir: Option<&Path>, hub: &Hub) -> Result<TaskFile> {
    let local = data_dir.map(|dir| dir.join(task.relative_path(split)));
    if let Some(path) = local.as_ref().filter(|p| p.is_file()) {
        return Ok(TaskFile::Local(path.clone()));
    }
    let (repo, file) = task.hub_file(split);
    let hub_err = match hub.dataset_file(repo, Some(HUB_PARQUET_REVISION), &file) {
        Ok(path) => return Ok(TaskFile::Hub(path)),
        Err(err) => err,
    };
    let local = match &local {
        Some(path) => format!("{} not found", path.display()),
        None => "no --data-dir (and ../shared/data does not exist)".to_string(),
    };
    let hub_copy =
        format!("the hub copy hf://datasets/{repo}/{file} could not be used either: {hub_err:#}");
    match split {
        Split::Eval => bail!(
            "{task}: {local}; {hub_copy}; point --data-dir at a directory laid out like ../shared/data"
        ),
        Split::Train => bail!(
            "{task} has no training split to draw few-shot examples from: {local}; {hub_copy} \
             (use --num-fewshot 0 or add the file under --data-dir)"
        ),
    }
}
