//! The eight zero-shot tasks of the GRASP paper, read from local JSONL files and rendered into
//! (context, continuation) text pairs exactly as lm-evaluation-harness v0.4 builds its
//! `multiple_choice` requests (task YAMLs and `utils.py` of arc, piqa, hellaswag, winogrande,
//! openbookqa, boolq and mathqa).

use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};

use crate::data::corpus::{fetch_dataset_file, parquet_records};
use serde::de::DeserializeOwned;
use serde::Deserialize;

/// lm-eval's `target_delimiter`: what separates a context from its answer.
const TARGET_DELIMITER: &str = " ";
/// lm-eval's `fewshot_delimiter`: what separates few-shot examples from each other and the doc.
const FEWSHOT_DELIMITER: &str = "\n\n";
/// lm-eval's default `fewshot_random_seed`.
pub const FEWSHOT_SEED: u32 = 1234;

/// A zero-shot task, named as in lm-evaluation-harness.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Task {
    ArcEasy,
    ArcChallenge,
    Piqa,
    Hellaswag,
    Winogrande,
    OpenBookQa,
    BoolQ,
    MathQa,
}

/// Which split of a task to read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    /// The split lm-eval scores (test for arc, openbookqa and mathqa; validation otherwise).
    Eval,
    /// The training split few-shot examples are drawn from.
    Train,
}

impl Task {
    pub const ALL: [Task; 8] = [
        Task::ArcEasy,
        Task::ArcChallenge,
        Task::Piqa,
        Task::Hellaswag,
        Task::Winogrande,
        Task::OpenBookQa,
        Task::BoolQ,
        Task::MathQa,
    ];

    /// The lm-eval task name.
    pub fn name(self) -> &'static str {
        match self {
            Task::ArcEasy => "arc_easy",
            Task::ArcChallenge => "arc_challenge",
            Task::Piqa => "piqa",
            Task::Hellaswag => "hellaswag",
            Task::Winogrande => "winogrande",
            Task::OpenBookQa => "openbookqa",
            Task::BoolQ => "boolq",
            Task::MathQa => "mathqa",
        }
    }

    /// Parses an lm-eval task name or its short form (`arc_e`, `arc_c`).
    pub fn parse(name: &str) -> Result<Task> {
        let name = name.trim();
        match name {
            "arc_e" => return Ok(Task::ArcEasy),
            "arc_c" => return Ok(Task::ArcChallenge),
            _ => {}
        }
        Task::ALL
            .into_iter()
            .find(|t| t.name() == name)
            .with_context(|| {
                let known: Vec<_> = Task::ALL.iter().map(|t| t.name()).collect();
                format!(
                    "--tasks: unknown task `{name}` (expected {}, arc_e, arc_c or all)",
                    known.join(", ")
                )
            })
    }

    /// Parses a comma-separated `--tasks` list; `all` stands for every task. Repeats are dropped.
    pub fn parse_list(list: &str) -> Result<Vec<Task>> {
        let mut tasks = Vec::new();
        for name in list.split(',').filter(|n| !n.trim().is_empty()) {
            let parsed = if name.trim() == "all" {
                Task::ALL.to_vec()
            } else {
                vec![Task::parse(name)?]
            };
            for task in parsed {
                if !tasks.contains(&task) {
                    tasks.push(task);
                }
            }
        }
        Ok(tasks)
    }

    /// Whether lm-eval reports `acc_norm` for this task (winogrande and boolq report `acc` only).
    pub fn reports_acc_norm(self) -> bool {
        !matches!(self, Task::Winogrande | Task::BoolQ)
    }

    /// The file of `split` relative to the data directory (the layout of `../shared/data`).
    pub fn relative_path(self, split: Split) -> &'static str {
        match (self, split) {
            (Task::ArcEasy, Split::Eval) => "arc/ARC-Easy-test.jsonl",
            (Task::ArcEasy, Split::Train) => "arc/ARC-Easy-train.jsonl",
            (Task::ArcChallenge, Split::Eval) => "arc/ARC-Challenge-test.jsonl",
            (Task::ArcChallenge, Split::Train) => "arc/ARC-Challenge-train.jsonl",
            (Task::Piqa, Split::Eval) => "piqa/piqa_validation.jsonl",
            (Task::Piqa, Split::Train) => "piqa/piqa_train.jsonl",
            (Task::Hellaswag, Split::Eval) => "hellaswag/hellaswag_validation.jsonl",
            (Task::Hellaswag, Split::Train) => "hellaswag/hellaswag_train.jsonl",
            (Task::Winogrande, Split::Eval) => "winogrande/winogrande_xl_validation.jsonl",
            (Task::Winogrande, Split::Train) => "winogrande/winogrande_xl_train.jsonl",
            (Task::OpenBookQa, Split::Eval) => "openbookqa/openbookqa_main_test_hf_schema.jsonl",
            (Task::OpenBookQa, Split::Train) => "openbookqa/train.jsonl",
            (Task::BoolQ, Split::Eval) => "boolq/boolq_validation.jsonl",
            (Task::BoolQ, Split::Train) => "boolq/boolq_train.jsonl",
            (Task::MathQa, Split::Eval) => "mathqa/test.jsonl",
            (Task::MathQa, Split::Train) => "mathqa/train.jsonl",
        }
    }
}

impl Task {
    /// The dataset repository lm-evaluation-harness reads and the split's file in the hub's
    /// parquet conversion ([`HUB_PARQUET_REVISION`]), in the schema of the JSONL files.
    pub fn hub_file(self, split: Split) -> (&'static str, String) {
        let (repo, config, eval) = match self {
            Task::ArcEasy => ("allenai/ai2_arc", "ARC-Easy", "test"),
            Task::ArcChallenge => ("allenai/ai2_arc", "ARC-Challenge", "test"),
            Task::Piqa => ("ybisk/piqa", "plain_text", "validation"),
            Task::Hellaswag => ("Rowan/hellaswag", "default", "validation"),
            Task::Winogrande => ("allenai/winogrande", "winogrande_xl", "validation"),
            Task::OpenBookQa => ("allenai/openbookqa", "main", "test"),
            Task::BoolQ => ("google/boolq", "default", "validation"),
            Task::MathQa => ("allenai/math_qa", "default", "test"),
        };
        let split = match split {
            Split::Eval => eval,
            Split::Train => "train",
        };
        (repo, format!("{config}/{split}/0000.parquet"))
    }
}

impl fmt::Display for Task {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How a doc's prompt relates to its choices.
#[derive(Clone, Debug, PartialEq)]
enum Prompt {
    /// One context for all choices; each choice is a continuation.
    Context(String),
    /// lm-eval's "multiple inputs" (winogrande's partial evaluation): each choice completes the
    /// context and all choices share this continuation.
    SharedContinuation(String),
}

/// One multiple-choice document. Built only by [`parse_doc`], so `gold` indexes `choices`.
#[derive(Clone, Debug, PartialEq)]
pub struct Doc {
    prompt: Prompt,
    choices: Vec<String>,
    gold: usize,
}

/// One loglikelihood request in text form, before tokenization.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TextPair {
    pub context: String,
    pub continuation: String,
}

impl Doc {
    /// lm-eval's `doc_to_choice`: the answer texts, whose lengths in characters normalise
    /// `acc_norm`.
    pub fn choices(&self) -> &[String] {
        &self.choices
    }

    pub fn gold(&self) -> usize {
        self.gold
    }

    /// One request per choice, each context preceded by `fewshot_prefix` (empty zero-shot).
    pub fn requests(&self, fewshot_prefix: &str) -> Vec<TextPair> {
        self.choices
            .iter()
            .map(|choice| match &self.prompt {
                Prompt::Context(context) => TextPair {
                    context: format!("{fewshot_prefix}{context}"),
                    continuation: format!("{TARGET_DELIMITER}{choice}"),
                },
                Prompt::SharedContinuation(continuation) => TextPair {
                    context: format!("{fewshot_prefix}{choice}"),
                    continuation: format!("{TARGET_DELIMITER}{continuation}"),
                },
            })
            .collect()
    }

    /// The doc answered with its gold choice, as lm-eval's sampler writes a few-shot example.
    fn labeled_example(&self) -> String {
        let gold = &self.choices[self.gold];
        match &self.prompt {
            Prompt::Context(context) => format!("{context}{TARGET_DELIMITER}{gold}"),
            // The sampler writes nothing after an empty target (a blank at the sentence's end).
            Prompt::SharedContinuation(rest) if rest.is_empty() => gold.clone(),
            Prompt::SharedContinuation(rest) => format!("{gold}{TARGET_DELIMITER}{rest}"),
        }
    }
}

/// Reads every doc of `task`'s `split`: the JSONL file under `data_dir`, else the hub's copy.
pub fn load_docs(task: Task, split: Split, data_dir: Option<&Path>) -> Result<Vec<Doc>> {
    match task_file(task, split, data_dir)? {
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
pub fn task_file(task: Task, split: Split, data_dir: Option<&Path>) -> Result<TaskFile> {
    let local = data_dir.map(|dir| dir.join(task.relative_path(split)));
    if let Some(path) = local.as_ref().filter(|p| p.is_file()) {
        return Ok(TaskFile::Local(path.clone()));
    }
    let (repo, file) = task.hub_file(split);
    let hub_err = match fetch_dataset_file(repo, Some(HUB_PARQUET_REVISION), &file) {
        Ok(path) => return Ok(TaskFile::Hub(path)),
        Err(err) => err,
    };
    let local = match &local {
        Some(path) => format!("{} not found", path.display()),
        None => "no --data-dir (and ../shared/data does not exist)".to_string(),
    };
    let hub =
        format!("the hub copy hf://datasets/{repo}/{file} could not be used either: {hub_err:#}");
    match split {
        Split::Eval => bail!(
            "{task}: {local}; {hub}; point --data-dir at a directory laid out like ../shared/data"
        ),
        Split::Train => bail!(
            "{task} has no training split to draw few-shot examples from: {local}; {hub} \
             (use --num-fewshot 0 or add the file under --data-dir)"
        ),
    }
}

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

/// The few-shot prefix of each of the first `n_docs` eval docs: `k` examples drawn from `pool`
/// with lm-eval's sampler (`random.Random(1234).sample`, one shared generator in doc order),
/// each written as `context + " " + gold`, joined and ended by a blank line.
pub fn fewshot_prefixes(pool: &[Doc], k: usize, n_docs: usize) -> Result<Vec<String>> {
    if k == 0 {
        return Ok(vec![String::new(); n_docs]);
    }
    ensure!(
        k <= pool.len(),
        "--num-fewshot {k} is larger than the training split ({} docs)",
        pool.len()
    );
    let mut rng = PyRandom::new(FEWSHOT_SEED);
    Ok((0..n_docs)
        .map(|_| {
            let examples: Vec<String> = rng
                .sample_indices(pool.len(), k)
                .into_iter()
                .map(|i| pool[i].labeled_example())
                .collect();
            format!("{}{FEWSHOT_DELIMITER}", examples.join(FEWSHOT_DELIMITER))
        })
        .collect())
}

/// CPython's `random.Random` (MT19937 seeded through `init_by_array`), just enough of it to
/// draw the same few-shot examples as lm-eval.
pub struct PyRandom {
    state: [u32; MT_N],
    index: usize,
}

const MT_N: usize = 624;
const MT_M: usize = 397;

impl PyRandom {
    /// `random.Random(seed)` for a seed below 2^32.
    pub fn new(seed: u32) -> Self {
        let mut rng = PyRandom {
            state: [0; MT_N],
            index: MT_N,
        };
        rng.init_by_array(&[seed]);
        rng
    }

    fn init_genrand(&mut self, seed: u32) {
        self.state[0] = seed;
        for i in 1..MT_N {
            let prev = self.state[i - 1];
            self.state[i] = 1_812_433_253u32
                .wrapping_mul(prev ^ (prev >> 30))
                .wrapping_add(i as u32);
        }
        self.index = MT_N;
    }

    fn init_by_array(&mut self, key: &[u32]) {
        self.init_genrand(19_650_218);
        let mt = &mut self.state;
        let (mut i, mut j) = (1, 0);
        for _ in 0..MT_N.max(key.len()) {
            let prev = mt[i - 1];
            mt[i] = (mt[i] ^ (prev ^ (prev >> 30)).wrapping_mul(1_664_525))
                .wrapping_add(key[j])
                .wrapping_add(j as u32);
            i += 1;
            j += 1;
            if i >= MT_N {
                mt[0] = mt[MT_N - 1];
                i = 1;
            }
            if j >= key.len() {
                j = 0;
            }
        }
        for _ in 0..MT_N - 1 {
            let prev = mt[i - 1];
            mt[i] =
                (mt[i] ^ (prev ^ (prev >> 30)).wrapping_mul(1_566_083_941)).wrapping_sub(i as u32);
            i += 1;
            if i >= MT_N {
                mt[0] = mt[MT_N - 1];
                i = 1;
            }
        }
        mt[0] = 0x8000_0000;
    }

    fn twist(&mut self) {
        let mt = &mut self.state;
        for k in 0..MT_N {
            let y = (mt[k] & 0x8000_0000) | (mt[(k + 1) % MT_N] & 0x7fff_ffff);
            let mag = if y & 1 == 1 { 0x9908_b0df } else { 0 };
            mt[k] = mt[(k + MT_M) % MT_N] ^ (y >> 1) ^ mag;
        }
        self.index = 0;
    }

    /// The next 32 random bits (`genrand_uint32`).
    pub fn next_u32(&mut self) -> u32 {
        if self.index >= MT_N {
            self.twist();
        }
        let mut y = self.state[self.index];
        self.index += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }

    /// `_randbelow_with_getrandbits(n)` for n < 2^32: rejection sampling on `n.bit_length()`
    /// bits.
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            return 0;
        }
        let bits = usize::BITS - n.leading_zeros();
        loop {
            let r = (self.next_u32() >> (32 - bits)) as usize;
            if r < n {
                return r;
            }
        }
    }

    /// The indices `random.sample(range(n), k)` returns, in order (k <= n).
    pub fn sample_indices(&mut self, n: usize, k: usize) -> Vec<usize> {
        // CPython keeps a pool list when it is smaller than the hash set it would need.
        let mut set_size = 21;
        if k > 5 {
            let exponent = ((k * 3) as f64).ln() / 4f64.ln();
            set_size += 4usize.pow(exponent.ceil() as u32);
        }
        if n <= set_size {
            let mut pool: Vec<usize> = (0..n).collect();
            (0..k)
                .map(|i| {
                    let j = self.below(n - i);
                    let picked = pool[j];
                    pool[j] = pool[n - i - 1];
                    picked
                })
                .collect()
        } else {
            let mut picked = Vec::with_capacity(k);
            while picked.len() < k {
                let j = self.below(n);
                if !picked.contains(&j) {
                    picked.push(j);
                }
            }
            picked
        }
    }
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

    /// Expected values printed by CPython 3 (`random.Random(1234)`).
    #[test]
    fn py_random_matches_cpython() {
        let mut rng = PyRandom::new(1234);
        assert_eq!(
            [rng.next_u32(), rng.next_u32()],
            [4_150_886_329, 3_342_196_574]
        );
        let mut rng = PyRandom::new(1234);
        assert_eq!(rng.sample_indices(2251, 5), [1805, 478, 30, 371, 143]);
        assert_eq!(rng.sample_indices(2251, 5), [343, 403, 1452, 969, 71]);
        let mut rng = PyRandom::new(1234);
        assert_eq!(rng.sample_indices(10, 7), [7, 1, 0, 9, 4, 6, 5]);
        let mut rng = PyRandom::new(1234);
        let expected = [
            99, 56, 14, 0, 11, 74, 4, 85, 88, 10, 12, 45, 30, 2, 3, 86, 44, 82, 79, 61, 78, 59, 19,
            95, 23,
        ];
        assert_eq!(rng.sample_indices(100, 25), expected);
    }

    #[test]
    fn capitalize_lowers_the_rest_like_python() {
        assert_eq!(python_capitalize("the LADY"), "The lady");
        assert_eq!(python_capitalize(""), "");
    }
}
