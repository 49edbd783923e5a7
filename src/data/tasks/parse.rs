//! The seven record schemas (arc covers two tasks) parsed into [`Doc`]s as lm-eval's task
//! definitions build them.

use anyhow::{bail, ensure, Context, Result};
use serde::de::DeserializeOwned;
use serde::Deserialize;

use super::doc::{Doc, Prompt};
use super::Task;

/// Parses one JSONL record of `task` (Hugging Face schema; openbookqa also AI2's).
pub fn parse_doc(task: Task, line: &str) -> Result<Doc> {
    match task {
        Task::ArcEasy | Task::ArcChallenge => arc_doc(record(line)?),
        Task::Piqa => piqa_doc(record(line)?),
        Task::Hellaswag => hellaswag_doc(record(line)?),
        Task::Winogrande => winogrande_doc(record(line)?),
        Task::OpenBookQa => openbookqa_doc(record(line)?),
        Task::BoolQ => Ok(boolq_doc(record(line)?)),
        Task::MathQa => mathqa_doc(record(line)?),
    }
}

fn record<T: DeserializeOwned>(line: &str) -> Result<T> {
    serde_json::from_str(line).context("record does not have the expected fields")
}

fn doc(prompt: Prompt, choices: Vec<String>, gold: usize) -> Result<Doc> {
    ensure!(
        gold < choices.len(),
        "gold answer {gold} is out of range of its {} choices",
        choices.len()
    );
    Ok(Doc {
        prompt,
        choices,
        gold,
    })
}

/// `choices.text` with `choices.label`, as ARC and OpenBookQA store them.
#[derive(Deserialize)]
struct LabeledChoices {
    text: Vec<String>,
    label: Vec<String>,
}

fn label_index(labels: &[String], key: &str) -> Result<usize> {
    labels
        .iter()
        .position(|l| l == key)
        .with_context(|| format!("answer key `{key}` is not one of the labels {labels:?}"))
}

#[derive(Deserialize)]
struct ArcRecord {
    question: String,
    choices: LabeledChoices,
    #[serde(rename = "answerKey")]
    answer_key: String,
}

fn arc_doc(r: ArcRecord) -> Result<Doc> {
    let gold = label_index(&r.choices.label, &r.answer_key)?;
    let context = format!("Question: {}\nAnswer:", r.question);
    doc(Prompt::Context(context), r.choices.text, gold)
}

#[derive(Deserialize)]
struct PiqaRecord {
    goal: String,
    sol1: String,
    sol2: String,
    label: usize,
}

fn piqa_doc(r: PiqaRecord) -> Result<Doc> {
    let context = format!("Question: {}\nAnswer:", r.goal);
    doc(Prompt::Context(context), vec![r.sol1, r.sol2], r.label)
}

#[derive(Deserialize)]
struct HellaswagRecord {
    activity_label: String,
    ctx_a: String,
    ctx_b: String,
    endings: Vec<String>,
    label: String,
}

fn hellaswag_doc(r: HellaswagRecord) -> Result<Doc> {
    let gold = r
        .label
        .parse()
        .with_context(|| format!("label `{}` is not an index", r.label))?;
    let context = hellaswag_preprocess(&format!(
        "{}: {} {}",
        r.activity_label,
        r.ctx_a,
        python_capitalize(&r.ctx_b)
    ));
    let endings = r.endings.iter().map(|e| hellaswag_preprocess(e)).collect();
    doc(Prompt::Context(context), endings, gold)
}

/// Python's `str.capitalize`: first character upper case, the rest lower case.
fn python_capitalize(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(first) => first
            .to_uppercase()
            .chain(chars.as_str().to_lowercase().chars())
            .collect(),
        None => String::new(),
    }
}

/// lm-eval's hellaswag `preprocess`: removes the WikiHow bracket artifacts.
fn hellaswag_preprocess(text: &str) -> String {
    let text = text.trim().replace(" [title]", ". ");
    remove_bracketed(&text).replace("  ", " ")
}

/// Python's `re.sub(r"\[.*?\]", "", text)`: each `[` up to the nearest `]` on the same line.
fn remove_bracketed(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(open) = rest.find('[') {
        let after = &rest[open + 1..];
        let line = &after[..after.find('\n').unwrap_or(after.len())];
        match line.find(']') {
            Some(close) => {
                out.push_str(&rest[..open]);
                rest = &after[close + 1..];
            }
            None => {
                out.push_str(&rest[..=open]);
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

#[derive(Deserialize)]
struct WinograndeRecord {
    sentence: String,
    option1: String,
    option2: String,
    answer: String,
}

/// Partial evaluation: the blank is filled with each option and the model scores the rest of
/// the sentence after it.
fn winogrande_doc(r: WinograndeRecord) -> Result<Doc> {
    let blank = r.sentence.find('_').context("sentence has no `_` blank")?;
    let gold = match r.answer.as_str() {
        "1" => 0,
        "2" => 1,
        other => bail!("answer `{other}` is neither \"1\" nor \"2\""),
    };
    let before = &r.sentence[..blank];
    let after = r.sentence[blank + 1..].trim().to_string();
    let choices = vec![
        format!("{before}{}", r.option1),
        format!("{before}{}", r.option2),
    ];
    doc(Prompt::SharedContinuation(after), choices, gold)
}

/// OpenBookQA in the Hugging Face schema (`question_stem`) or AI2's original (`question.stem`).
#[derive(Deserialize)]
#[serde(untagged)]
enum OpenBookQaRecord {
    HuggingFace {
        question_stem: String,
        choices: LabeledChoices,
        #[serde(rename = "answerKey")]
        answer_key: String,
    },
    Ai2 {
        question: Ai2Question,
        #[serde(rename = "answerKey")]
        answer_key: String,
    },
}

#[derive(Deserialize)]
struct Ai2Question {
    stem: String,
    choices: Vec<Ai2Choice>,
}

#[derive(Deserialize)]
struct Ai2Choice {
    text: String,
    label: String,
}

fn openbookqa_doc(r: OpenBookQaRecord) -> Result<Doc> {
    let (stem, texts, labels, key) = match r {
        OpenBookQaRecord::HuggingFace {
            question_stem,
            choices,
            answer_key,
        } => (question_stem, choices.text, choices.label, answer_key),
        OpenBookQaRecord::Ai2 {
            question,
            answer_key,
        } => {
            let (texts, labels) = question
                .choices
                .into_iter()
                .map(|c| (c.text, c.label))
                .unzip();
            (question.stem, texts, labels, answer_key)
        }
    };
    let gold = label_index(&labels, key.trim_start())?;
    doc(Prompt::Context(stem), texts, gold)
}

#[derive(Deserialize)]
struct BoolQRecord {
    passage: String,
    question: String,
    answer: bool,
}

fn boolq_doc(r: BoolQRecord) -> Doc {
    let context = format!("{}\nQuestion: {}?\nAnswer:", r.passage, r.question);
    Doc {
        prompt: Prompt::Context(context),
        choices: vec!["no".to_string(), "yes".to_string()],
        gold: usize::from(r.answer),
    }
}

#[derive(Deserialize)]
struct MathQaRecord {
    #[serde(rename = "Problem")]
    problem: String,
    options: String,
    correct: String,
}

fn mathqa_doc(r: MathQaRecord) -> Result<Doc> {
    let gold = ["a", "b", "c", "d", "e"]
        .iter()
        .position(|l| *l == r.correct)
        .with_context(|| format!("correct answer `{}` is not a..e", r.correct))?;
    let context = format!("Question: {}\nAnswer:", r.problem);
    doc(Prompt::Context(context), mathqa_options(&r.options), gold)
}

/// lm-eval's mathqa choices: every match of `[abcd] \) .*?, |e \) .*?$` in `options`, minus
/// its 4-character `x ) ` head and trailing spaces and commas.
pub fn mathqa_options(options: &str) -> Vec<String> {
    let mut choices = Vec::new();
    let mut at = 0;
    while at < options.len() {
        match mathqa_option_at(options, at) {
            Some(end) => {
                let option = options[at..end].chars().skip(4).collect::<String>();
                choices.push(option.trim_end_matches([' ', ',']).to_string());
                at = end;
            }
            None => at += options[at..].chars().next().map_or(1, char::len_utf8),
        }
    }
    choices
}

/// End of the regex match starting at byte `at`, if one does. `.` stops at a newline, and `$`
/// matches at the end of the text or before a final newline.
fn mathqa_option_at(options: &str, at: usize) -> Option<usize> {
    let rest = &options[at..];
    let letter = rest.chars().next()?;
    let body = rest.strip_prefix(letter)?.strip_prefix(" ) ")?;
    let body_start = at + letter.len_utf8() + " ) ".len();
    let line = &body[..body.find('\n').unwrap_or(body.len())];
    if matches!(letter, 'a'..='d') {
        if let Some(comma) = line.find(", ") {
            return Some(body_start + comma + ", ".len());
        }
    }
    let line_end = body_start + line.len();
    let at_end = line_end == options.len() || &options[line_end..] == "\n";
    (letter == 'e' && at_end).then_some(line_end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remove_bracketed_is_lazy_and_line_bound() {
        assert_eq!(remove_bracketed("a [x] b [y] c"), "a  b  c");
        assert_eq!(remove_bracketed("a [x\n] b"), "a [x\n] b");
        assert_eq!(remove_bracketed("a [ [x] b ]"), "a  b ]");
    }

    #[test]
    fn capitalize_lowers_the_rest_like_python() {
        assert_eq!(python_capitalize("the LADY"), "The lady");
        assert_eq!(python_capitalize(""), "");
    }
}
