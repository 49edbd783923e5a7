//! Files as rows of text (plain lines, JSONL, gzipped JSONL, a parquet column) or as JSON
//! records (every row of a parquet file): the formats local datasets and the hub's copies come in.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use anyhow::{bail, Context, Result};
use parquet::file::reader::SerializedFileReader;
use parquet::record::{Field, Row};

/// The rows of a local file, chosen by its name: `.jsonl` (the `text` field of each line),
/// `.json.gz`/`.jsonl.gz` (the same, gzip-compressed), `.parquet` (the `text` column) or plain
/// text (its lines without the newline).
pub fn read_rows(path: &Path) -> Result<Vec<String>> {
    RowFormat::of(path).read(path)
}

/// How a file's bytes become rows.
#[derive(Clone, Copy, Debug)]
pub(crate) enum RowFormat {
    Lines,
    Jsonl,
    JsonlGz,
    Parquet { column: &'static str },
}

impl RowFormat {
    pub(crate) fn of(path: &Path) -> Self {
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

    pub(crate) fn read(self, path: &Path) -> Result<Vec<String>> {
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
}
