//! A parsed multiple-choice document and the text requests lm-eval makes of it.

/// lm-eval's `target_delimiter`: what separates a context from its answer.
const TARGET_DELIMITER: &str = " ";

/// How a doc's prompt relates to its choices.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Prompt {
    /// One context for all choices; each choice is a continuation.
    Context(String),
    /// lm-eval's "multiple inputs" (winogrande's partial evaluation): each choice completes the
    /// context and all choices share this continuation.
    SharedContinuation(String),
}

/// One multiple-choice document. Built only by [`parse_doc`], so `gold` indexes `choices`.
#[derive(Clone, Debug, PartialEq)]
pub struct Doc {
    pub(super) prompt: Prompt,
    pub(super) choices: Vec<String>,
    pub(super) gold: usize,
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
    pub(super) fn labeled_example(&self) -> String {
        let gold = &self.choices[self.gold];
        match &self.prompt {
            Prompt::Context(context) => format!("{context}{TARGET_DELIMITER}{gold}"),
            // The sampler writes nothing after an empty target (a blank at the sentence's end).
            Prompt::SharedContinuation(rest) if rest.is_empty() => gold.clone(),
            Prompt::SharedContinuation(rest) => format!("{gold}{TARGET_DELIMITER}{rest}"),
        }
    }
}
