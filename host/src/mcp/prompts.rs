//! Prompts: `analyze_data` (how to explore a workspace file with code_interpreter) and
//! `commit_message` (a conventional commit message for a diff).

use rmcp::ErrorData as McpError;
use rmcp::model::{GetPromptResult, Prompt, PromptArgument, PromptMessage, Role};
use serde_json::{Map, Value};

pub fn list() -> Vec<Prompt> {
    vec![
        Prompt::new(
            "analyze_data",
            Some(
                "Explore a data file in the workspace with code_interpreter: its shape, types, gaps, distributions and what stands out.",
            ),
            Some(vec![
                PromptArgument::new("path")
                    .with_description(
                        "The file, relative to the workspace (e.g. data/sales.csv); CSV, Excel, JSON or Parquet.",
                    )
                    .with_required(true),
                PromptArgument::new("question")
                    .with_description("What you want to find out (optional).")
                    .with_required(false),
            ]),
        ),
        Prompt::new(
            "commit_message",
            Some("Write a Conventional Commits message for a diff."),
            Some(vec![PromptArgument::new("diff").with_description("The output of `git diff`.").with_required(true)]),
        ),
    ]
}

pub fn get(name: &str, arguments: Option<&Map<String, Value>>) -> Result<GetPromptResult, McpError> {
    let argument = |key: &str, required: bool| -> Result<Option<String>, McpError> {
        match arguments.and_then(|a| a.get(key)) {
            Some(Value::String(text)) if !text.trim().is_empty() => Ok(Some(text.clone())),
            Some(Value::String(_)) | None if !required => Ok(None),
            Some(other) if !other.is_string() => {
                Err(McpError::invalid_params(format!("prompt {name}: argument `{key}` must be a string"), None))
            }
            _ => Err(McpError::invalid_params(format!("prompt {name}: argument `{key}` is required"), None)),
        }
    };
    match name {
        "analyze_data" => {
            let path = argument("path", true)?.unwrap_or_default();
            let question = argument("question", false)?;
            Ok(GetPromptResult::new(vec![PromptMessage::new_text(
                Role::User,
                analyze_data(&path, question.as_deref()),
            )])
            .with_description(format!("Explore /workspace/{path}")))
        }
        "commit_message" => {
            let diff = argument("diff", true)?.unwrap_or_default();
            Ok(GetPromptResult::new(vec![PromptMessage::new_text(Role::User, commit_message(&diff))])
                .with_description("A Conventional Commits message for the diff"))
        }
        _ => Err(McpError::invalid_params(
            format!("unknown prompt {name:?}; this server has: analyze_data, commit_message"),
            None,
        )),
    }
}

fn analyze_data(path: &str, question: Option<&str>) -> String {
    let goal = question.map_or(String::new(), |q| format!("\nThe question to answer: {q}\n"));
    format!(
        "Explore the data file /workspace/{path} with the code_interpreter tool.{goal}\n\
         Work in small steps, one code_interpreter call each; variables do not persist between calls, so load \
         the file again in each one (or save intermediate results to /workspace).\n\
         1. Load it with pandas (read_csv, read_excel, read_json or read_parquet, by its extension) and print its \
         shape, dtypes and the first rows.\n\
         2. Count missing values and duplicates per column; note columns whose type looks wrong (numbers or \
         dates stored as text).\n\
         3. Summarize numeric columns with describe() and categorical ones with value_counts() of the top values.\n\
         4. Plot the distributions and relationships that matter with matplotlib; plt.show() saves each figure \
         into /workspace/outputs/.\n\
         5. Report what you found in plain language: the data's shape and quality, notable patterns and \
         outliers, and what to look at next. Quote the numbers you computed."
    )
}

fn commit_message(diff: &str) -> String {
    format!(
        "Write a commit message for the diff below, following Conventional Commits:\n\
         - a subject line `type(scope): summary` of at most 72 characters, in the imperative mood, where type is \
         one of feat, fix, docs, style, refactor, perf, test, build, ci, chore or revert, and scope names the \
         part of the code it touches (omit it if there is none);\n\
         - a blank line, then a body wrapped at 72 columns that says why the change is made and what it changes, \
         not how;\n\
         - a `BREAKING CHANGE:` footer if it breaks an interface.\n\
         Answer with the message only.\n\n```diff\n{diff}\n```"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn prompts_need_their_required_arguments() {
        let missing = get("commit_message", None).expect_err("diff is required");
        assert!(missing.message.contains("`diff` is required"), "{}", missing.message);
        let args = json!({"diff": "+fn main() {}"});
        let prompt = get("commit_message", args.as_object()).expect("prompt");
        let text = serde_json::to_string(&prompt).expect("json");
        assert!(text.contains("Conventional Commits") && text.contains("+fn main() {}"), "{text}");
        let args = json!({"path": "data/sales.csv"});
        let analyze = serde_json::to_string(&get("analyze_data", args.as_object()).expect("prompt")).expect("json");
        assert!(analyze.contains("/workspace/data/sales.csv") && analyze.contains("code_interpreter"));
        assert!(get("nope", None).is_err());
    }
}
