//! `--config FILE.toml`: a preset whose keys are the long flags of the subcommand.
//!
//! The file's entries are turned into flags placed before the ones typed, and every flag is
//! declared to override itself, so a flag on the command line wins over the file. `--config`
//! itself stays among the typed flags, so that the subcommand's report can name the file.

use std::ffi::OsString;
use std::path::Path;

use anyhow::{bail, Context, Result};

/// `args` with the entries of `--config FILE` put in as flags; `cli` tells each
/// subcommand's flags, so that a key no flag has is refused naming the file.
pub fn expand(args: Vec<OsString>, cli: &clap::Command) -> Result<Vec<OsString>> {
    let position = args.iter().position(|a| a == "--config");
    let inline = args
        .iter()
        .position(|a| a.to_string_lossy().starts_with("--config="));
    let path = match (position, inline) {
        (Some(i), _) => match args.get(i + 1) {
            Some(p) => p.clone(),
            None => return Ok(args),
        },
        (None, Some(i)) => {
            let text = args[i].to_string_lossy().into_owned();
            OsString::from(&text["--config=".len()..])
        }
        (None, None) => return Ok(args),
    };
    let subcommand = args.get(1).and_then(|a| a.to_str()).unwrap_or_default();
    let known: Vec<String> = cli
        .find_subcommand(subcommand)
        .map(|c| {
            c.get_arguments()
                .filter_map(|a| a.get_long())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    let flags = flags_from_file(Path::new(&path), subcommand, &known)?;
    let mut out: Vec<OsString> = Vec::with_capacity(args.len() + flags.len());
    // Subcommand first (argv[0], subcommand), then the file's flags, then the typed ones.
    out.extend(args.iter().take(2).cloned());
    out.extend(flags.into_iter().map(OsString::from));
    out.extend(args.iter().skip(2).cloned());
    Ok(out)
}

fn flags_from_file(path: &Path, subcommand: &str, known: &[String]) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read --config {}", path.display()))?;
    let table: toml::Table = text
        .parse()
        .with_context(|| format!("--config {} is not valid TOML", path.display()))?;
    let mut flags = Vec::new();
    for (key, value) in table {
        let long = key.replace('_', "-");
        if !known.contains(&long) || long == "config" {
            bail!(
                "--config {}: unknown key `{key}` (grasp {subcommand} has no flag --{long})",
                path.display()
            );
        }
        let flag = format!("--{long}");
        match value {
            toml::Value::Boolean(true) => flags.push(flag),
            toml::Value::Boolean(false) => {}
            toml::Value::String(s) => flags.extend([flag, s]),
            toml::Value::Integer(i) => flags.extend([flag, i.to_string()]),
            toml::Value::Float(f) => flags.extend([flag, f.to_string()]),
            toml::Value::Array(items) => {
                let parts: Vec<String> = items
                    .iter()
                    .map(|v| match v {
                        toml::Value::String(s) => Ok(s.clone()),
                        toml::Value::Integer(i) => Ok(i.to_string()),
                        other => bail!(
                            "--config {}: unsupported list item {other} for `{key}`",
                            path.display()
                        ),
                    })
                    .collect::<Result<_>>()?;
                flags.extend([flag, parts.join(",")]);
            }
            other => bail!(
                "--config {}: unsupported value {other} for `{key}`",
                path.display()
            ),
        }
    }
    Ok(flags)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_flags_go_before_typed_flags_and_the_config_stays() {
        let dir = std::env::temp_dir().join(format!("grasp-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("c.toml");
        std::fs::write(&file, "ratio = 0.7\nmerge = true\nangular = false\nmlp_targets = [\"up_proj\", \"down_proj\"]\nnum_prune_layers = 8\n").unwrap();
        let args: Vec<OsString> = [
            "grasp",
            "compress",
            "--config",
            file.to_str().unwrap(),
            "--ratio",
            "0.5",
        ]
        .iter()
        .map(OsString::from)
        .collect();
        let cli = clap::Command::new("grasp").subcommand(
            clap::Command::new("compress").args(
                [
                    "ratio",
                    "merge",
                    "angular",
                    "mlp-targets",
                    "num-prune-layers",
                ]
                .map(|name| clap::Arg::new(name).long(name)),
            ),
        );
        let out: Vec<String> = expand(args, &cli)
            .unwrap()
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect();
        assert_eq!(&out[..2], &["grasp", "compress"]);
        assert_eq!(&out[out.len() - 2..], &["--ratio", "0.5"]);
        assert!(out
            .windows(2)
            .any(|w| w == ["--mlp-targets", "up_proj,down_proj"]));
        assert!(out.contains(&"--merge".to_string()) && !out.contains(&"--angular".to_string()));
        assert!(out
            .windows(2)
            .any(|w| w == ["--config", file.to_str().unwrap()]));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
