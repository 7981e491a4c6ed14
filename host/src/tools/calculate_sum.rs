//! `calculate_sum`: adds two numbers. The text is JavaScript's `String(a + b)`, so `1 + 2` is
//! `3`, not `3.0`.

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::{Hints, Tool, ToolContext, ToolDefinition, ToolError, ToolOutput, object_schema, parse};

pub struct CalculateSum {
    definition: ToolDefinition,
}

#[derive(Deserialize)]
struct Args {
    a: f64,
    b: f64,
}

impl CalculateSum {
    pub fn new() -> Self {
        CalculateSum {
            definition: ToolDefinition {
                name: "calculate_sum".into(),
                title: "Add two numbers".into(),
                description: "Add two numbers exactly as a 64-bit float does and return the sum. Use it for a \
                              quick, reliable addition; use code_interpreter for anything longer."
                    .into(),
                input_schema: object_schema(
                    json!({
                        "a": {"type": "number", "description": "The first addend."},
                        "b": {"type": "number", "description": "The second addend."},
                    }),
                    &["a", "b"],
                ),
                output_schema: Some(json!({
                    "type": "object",
                    "properties": {"sum": {"type": "number"}},
                    "required": ["sum"],
                })),
                hints: Hints { read_only: true, destructive: false, idempotent: true, open_world: false },
                workspace: super::Access::None,
            },
        }
    }
}

#[async_trait]
impl Tool for CalculateSum {
    fn definition(&self) -> &ToolDefinition {
        &self.definition
    }

    async fn call(&self, args: Map<String, Value>, _ctx: &ToolContext<'_>) -> Result<ToolOutput, ToolError> {
        let Args { a, b } = parse(args)?;
        let sum = a + b;
        if !sum.is_finite() {
            return Ok(ToolOutput {
                text: format!("the sum of {} and {} overflows a 64-bit float", js_string(a), js_string(b)),
                is_error: true,
                ..ToolOutput::default()
            });
        }
        Ok(ToolOutput { text: js_string(sum), structured: Some(json!({ "sum": sum })), ..ToolOutput::default() })
    }
}

/// JavaScript's `String(x)` for a finite number: integers without a fraction, exponents past
/// 1e21 and below 1e-6 (`1e+21`, `1.5e-7`), the shortest digits that round-trip otherwise.
pub fn js_string(x: f64) -> String {
    if x == 0.0 {
        return "0".into();
    }
    let magnitude = x.abs();
    if (1e-6..1e21).contains(&magnitude) {
        return format!("{x}");
    }
    let exponential = format!("{x:e}");
    match exponential.split_once('e') {
        Some((mantissa, exponent)) if !exponent.starts_with('-') => format!("{mantissa}e+{exponent}"),
        _ => exponential,
    }
}

#[cfg(test)]
mod tests {
    use super::js_string;

    #[test]
    fn numbers_print_as_javascript_prints_them() {
        for (x, text) in [
            (3.0, "3"),
            (-0.0, "0"),
            (0.1 + 0.2, "0.30000000000000004"),
            (1e20, "100000000000000000000"),
            (1e21, "1e+21"),
            (1.5e-7, "1.5e-7"),
            (0.000001, "0.000001"),
            (-2.5, "-2.5"),
            (123456789.125, "123456789.125"),
        ] {
            assert_eq!(js_string(x), text, "{x}");
        }
    }
}
