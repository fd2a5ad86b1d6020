//! Wire formats: request bodies built from OpenAI-shaped messages, and answers parsed into one [`Completion`]
//! shape, for OpenAI chat completions (and every OpenAI-compatible server) and Anthropic messages.

use serde_json::{json, Map, Value};

use super::TransportError;

/// Which HTTP API the endpoint speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireFormat {
    /// `POST {api_base}/chat/completions` (OpenAI, Azure, vLLM, Ollama, llama.cpp server, Together, ...).
    OpenAi,
    /// `POST {api_base}/messages` (Anthropic).
    Anthropic,
}

impl WireFormat {
    /// `"openai"` or `"anthropic"`.
    pub fn name(self) -> &'static str {
        match self {
            WireFormat::OpenAi => "openai",
            WireFormat::Anthropic => "anthropic",
        }
    }

    /// Parse `"openai"` / `"anthropic"` (case-insensitive).
    pub fn parse(name: &str) -> Result<WireFormat, TransportError> {
        match name.to_ascii_lowercase().as_str() {
            "openai" | "openai-compatible" | "chat" => Ok(WireFormat::OpenAi),
            "anthropic" | "messages" => Ok(WireFormat::Anthropic),
            other => Err(TransportError::Config {
                message: format!("unknown wire format {other:?}; use \"openai\" (chat completions) or \"anthropic\" (messages)"),
            }),
        }
    }

    /// The path appended to `api_base`.
    pub fn path(self) -> &'static str {
        match self {
            WireFormat::OpenAi => "/chat/completions",
            WireFormat::Anthropic => "/messages",
        }
    }
}

/// Token counts reported by the server.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Prompt (input) tokens.
    pub prompt_tokens: u64,
    /// Completion (output) tokens.
    pub completion_tokens: u64,
    /// Total tokens.
    pub total_tokens: u64,
}

impl Usage {
    /// Counts as a server reported them; a missing `total` is `prompt + completion`.
    ///
    /// The numbers come from the server, so absurd ones are clamped rather than trusted: a sum past `u64::MAX`
    /// saturates at `u64::MAX` (never wraps, never panics), and the answer itself is still delivered.
    pub fn new(prompt: u64, completion: u64, total: Option<u64>) -> Usage {
        Usage {
            prompt_tokens: prompt,
            completion_tokens: completion,
            total_tokens: total.unwrap_or_else(|| prompt.saturating_add(completion)),
        }
    }

    pub(crate) fn from_openai(value: Option<&Value>) -> Usage {
        let count = |key: &str| value.and_then(|u| u.get(key)).and_then(Value::as_u64);
        Usage::new(count("prompt_tokens").unwrap_or(0), count("completion_tokens").unwrap_or(0), count("total_tokens"))
    }
}

/// One generated candidate.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Choice {
    /// Assistant text (`None` when the model only called tools).
    pub content: Option<String>,
    /// Reasoning text, when the server returns it separately (`reasoning_content`, Anthropic thinking blocks).
    pub reasoning: Option<String>,
    /// Tool calls in OpenAI's shape (`[{"id", "type": "function", "function": {"name", "arguments"}}]`).
    pub tool_calls: Option<Value>,
    /// `stop`, `length`, `tool_calls`, `content_filter`, ... (Anthropic stop reasons mapped to these).
    pub finish_reason: Option<String>,
}

/// A parsed answer.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Completion {
    /// Response id.
    pub id: Option<String>,
    /// Model that answered.
    pub model: Option<String>,
    /// Candidates (one, unless `n` > 1 on an OpenAI endpoint).
    pub choices: Vec<Choice>,
    /// Token counts (zeros when absent).
    pub usage: Usage,
}

/// Build the request body. `messages` is an OpenAI-style array (`{"role", "content"}` with string or parts
/// content); `params` are request options (`temperature`, `max_tokens`, `stop`, `tools`, ...), passed through for
/// OpenAI and mapped to their Anthropic names for Anthropic.
pub fn request_body(
    wire: WireFormat,
    model: &str,
    messages: &[Value],
    params: &Map<String, Value>,
    stream: bool,
) -> Result<Vec<u8>, TransportError> {
    let body = match wire {
        WireFormat::OpenAi => openai_body(model, messages, params, stream),
        WireFormat::Anthropic => anthropic_body(model, messages, params, stream)?,
    };
    Ok(serde_json::to_vec(&body).expect("JSON values serialize"))
}

fn openai_body(model: &str, messages: &[Value], params: &Map<String, Value>, stream: bool) -> Value {
    let mut body = Map::with_capacity(params.len() + 4);
    body.insert("model".into(), Value::from(model));
    body.insert("messages".into(), Value::Array(messages.to_vec()));
    for (key, value) in params {
        if !value.is_null() {
            body.insert(key.clone(), value.clone());
        }
    }
    if stream {
        body.insert("stream".into(), Value::Bool(true));
        body.insert("stream_options".into(), json!({"include_usage": true}));
    }
    Value::Object(body)
}

/// Anthropic's default `max_tokens` (the field is required there); DSPy usually sets it.
pub const ANTHROPIC_DEFAULT_MAX_TOKENS: u64 = 4096;

fn text_of(content: &Value) -> String {
    match content {
        Value::String(text) => text.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

/// OpenAI content parts -> Anthropic content blocks (text and base64 / URL images).
fn anthropic_content(content: &Value) -> Result<Value, TransportError> {
    let Value::Array(parts) = content else { return Ok(Value::from(text_of(content))) };
    let mut blocks = Vec::with_capacity(parts.len());
    for part in parts {
        match part.get("type").and_then(Value::as_str) {
            Some("text") => blocks.push(json!({"type": "text", "text": part.get("text").cloned().unwrap_or_default()})),
            Some("image_url") => {
                let url = part.get("image_url").and_then(|u| u.get("url").or(Some(u))).and_then(Value::as_str).unwrap_or("");
                if let Some(rest) = url.strip_prefix("data:") {
                    let (media_type, data) = rest.split_once(";base64,").ok_or_else(|| TransportError::Config {
                        message: "an image data URL must be base64 (data:<type>;base64,<data>)".into(),
                    })?;
                    blocks.push(json!({"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}));
                } else {
                    blocks.push(json!({"type": "image", "source": {"type": "url", "url": url}}));
                }
            }
            other => {
                return Err(TransportError::Config {
                    message: format!(
                        "message part type {other:?} cannot be sent in Anthropic's messages format; send text or images"
                    ),
                })
            }
        }
    }
    Ok(Value::Array(blocks))
}

fn anthropic_body(model: &str, messages: &[Value], params: &Map<String, Value>, stream: bool) -> Result<Value, TransportError> {
    let mut system: Vec<String> = Vec::new();
    let mut turns: Vec<Value> = Vec::with_capacity(messages.len());
    for message in messages {
        let role = message.get("role").and_then(Value::as_str).unwrap_or("user");
        let content = message.get("content").unwrap_or(&Value::Null);
        match role {
            "system" | "developer" => system.push(text_of(content)),
            "assistant" if message.get("tool_calls").and_then(Value::as_array).is_some_and(|c| !c.is_empty()) => {
                // OpenAI assistant tool calls -> Anthropic tool_use blocks (after any text)
                let mut blocks = Vec::new();
                let text = text_of(content);
                if !text.is_empty() {
                    blocks.push(json!({"type": "text", "text": text}));
                }
                for call in message["tool_calls"].as_array().into_iter().flatten() {
                    let function = call.get("function").cloned().unwrap_or_default();
                    let input = match function.get("arguments") {
                        Some(Value::String(text)) if !text.trim().is_empty() => {
                            serde_json::from_str(text).map_err(|e| TransportError::Config {
                                message: format!("tool call arguments are not JSON ({e}): {text:?}"),
                            })?
                        }
                        Some(Value::Object(object)) => Value::Object(object.clone()),
                        _ => json!({}), // no arguments (a streamed call with no input deltas sends "")
                    };
                    blocks.push(json!({
                        "type": "tool_use",
                        "id": call.get("id").cloned().unwrap_or_default(),
                        "name": function.get("name").cloned().unwrap_or_default(),
                        "input": input,
                    }));
                }
                turns.push(json!({"role": "assistant", "content": blocks}));
            }
            "user" | "assistant" => turns.push(json!({"role": role, "content": anthropic_content(content)?})),
            "tool" => turns.push(json!({"role": "user", "content": [{
                "type": "tool_result",
                "tool_use_id": message.get("tool_call_id").cloned().unwrap_or_default(),
                "content": text_of(content),
            }]})),
            other => {
                return Err(TransportError::Config {
                    message: format!("message role {other:?} has no Anthropic equivalent; use system, user, assistant or tool"),
                })
            }
        }
    }
    let mut body = Map::new();
    body.insert("model".into(), Value::from(model));
    let max_tokens = params
        .get("max_tokens")
        .or_else(|| params.get("max_completion_tokens"))
        .and_then(Value::as_u64)
        .unwrap_or(ANTHROPIC_DEFAULT_MAX_TOKENS);
    body.insert("max_tokens".into(), Value::from(max_tokens));
    if !system.is_empty() {
        body.insert("system".into(), Value::from(system.join("\n\n")));
    }
    body.insert("messages".into(), Value::Array(turns));
    for (key, value) in params {
        if value.is_null() {
            continue;
        }
        match key.as_str() {
            "max_tokens" | "max_completion_tokens" | "n" | "response_format" | "parallel_tool_calls" => {}
            "temperature" | "top_p" | "top_k" | "metadata" | "thinking" | "stop_sequences" | "service_tier" => {
                body.insert(key.clone(), value.clone());
            }
            "stop" => {
                let stops = match value {
                    Value::String(s) => Value::Array(vec![Value::from(s.as_str())]),
                    other => other.clone(),
                };
                body.insert("stop_sequences".into(), stops);
            }
            "tools" => {
                let tools = value.as_array().cloned().unwrap_or_default().into_iter().map(|tool| {
                    let function = tool.get("function").cloned().unwrap_or(tool);
                    json!({
                        "name": function.get("name").cloned().unwrap_or_default(),
                        "description": function.get("description").cloned().unwrap_or_default(),
                        "input_schema": function.get("parameters").cloned().unwrap_or_else(|| json!({"type": "object"})),
                    })
                });
                body.insert("tools".into(), Value::Array(tools.collect()));
            }
            "tool_choice" => {
                let choice = match value {
                    Value::String(s) if s == "required" => json!({"type": "any"}),
                    Value::String(s) => json!({"type": s}),
                    Value::Object(o) => match o.get("function").and_then(|f| f.get("name")) {
                        Some(name) => json!({"type": "tool", "name": name}),
                        None => value.clone(),
                    },
                    other => other.clone(),
                };
                body.insert("tool_choice".into(), choice);
            }
            other => {
                return Err(TransportError::Config {
                    message: format!(
                        "request option {other:?} is not supported by Anthropic's messages API; remove it from the LM kwargs"
                    ),
                })
            }
        }
    }
    // always said, as DSPy's lm15 engine says it, so both send the same body
    body.insert("stream".into(), Value::Bool(stream));
    Ok(Value::Object(body))
}

fn protocol(message: impl Into<String>) -> TransportError {
    TransportError::Protocol { message: message.into() }
}

fn string_at(value: &Value, key: &str) -> Option<String> {
    value.get(key).and_then(Value::as_str).map(str::to_string)
}

/// Parse a 200 answer.
pub fn parse_completion(wire: WireFormat, body: &[u8]) -> Result<Completion, TransportError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        let shown = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
        protocol(format!("the body is not JSON ({e}): {shown:?}"))
    })?;
    match wire {
        WireFormat::OpenAi => parse_openai(&value),
        WireFormat::Anthropic => parse_anthropic(&value),
    }
}

fn parse_openai(value: &Value) -> Result<Completion, TransportError> {
    let choices = value
        .get("choices")
        .and_then(Value::as_array)
        .filter(|c| !c.is_empty())
        .ok_or_else(|| protocol("no choices in the chat completion"))?;
    let mut parsed = Vec::with_capacity(choices.len());
    for choice in choices {
        let message = choice.get("message").ok_or_else(|| protocol("a choice has no message"))?;
        let content = match message.get("content") {
            Some(Value::String(text)) => Some(text.clone()),
            Some(Value::Null) | None => None,
            Some(other) => return Err(protocol(format!("message.content is {other}, not a string"))),
        };
        let tool_calls = message.get("tool_calls").filter(|t| t.as_array().is_some_and(|a| !a.is_empty())).cloned();
        if content.is_none() && tool_calls.is_none() {
            return Err(protocol("a choice has neither content nor tool_calls"));
        }
        parsed.push(Choice {
            content,
            reasoning: string_at(message, "reasoning_content").or_else(|| string_at(message, "reasoning")),
            tool_calls,
            finish_reason: string_at(choice, "finish_reason"),
        });
    }
    Ok(Completion {
        id: string_at(value, "id"),
        model: string_at(value, "model"),
        choices: parsed,
        usage: Usage::from_openai(value.get("usage")),
    })
}

/// Anthropic `stop_reason` -> OpenAI `finish_reason`.
pub fn anthropic_finish(reason: &str) -> String {
    match reason {
        "end_turn" | "stop_sequence" => "stop",
        "max_tokens" => "length",
        "tool_use" => "tool_calls",
        "refusal" => "content_filter",
        other => other,
    }
    .to_string()
}

fn parse_anthropic(value: &Value) -> Result<Completion, TransportError> {
    let blocks = value.get("content").and_then(Value::as_array).ok_or_else(|| protocol("no content in the message"))?;
    let (mut text, mut reasoning, mut calls) = (String::new(), String::new(), Vec::new());
    let mut has_text = false;
    for block in blocks {
        match block.get("type").and_then(Value::as_str) {
            Some("text") => {
                has_text = true;
                text.push_str(block.get("text").and_then(Value::as_str).unwrap_or(""));
            }
            Some("thinking") => reasoning.push_str(block.get("thinking").and_then(Value::as_str).unwrap_or("")),
            Some("tool_use") => calls.push(json!({
                "id": block.get("id").cloned().unwrap_or_default(),
                "type": "function",
                "function": {
                    "name": block.get("name").cloned().unwrap_or_default(),
                    "arguments": block.get("input").map(Value::to_string).unwrap_or_else(|| "{}".into()),
                },
            })),
            _ => {}
        }
    }
    if !has_text && calls.is_empty() {
        return Err(protocol("the message has neither text nor tool_use blocks"));
    }
    let usage = value.get("usage");
    let count = |key: &str| usage.and_then(|u| u.get(key)).and_then(Value::as_u64).unwrap_or(0);
    let (prompt, completion) = (count("input_tokens"), count("output_tokens"));
    Ok(Completion {
        id: string_at(value, "id"),
        model: string_at(value, "model"),
        choices: vec![Choice {
            content: has_text.then_some(text),
            reasoning: (!reasoning.is_empty()).then_some(reasoning),
            tool_calls: (!calls.is_empty()).then_some(Value::Array(calls)),
            finish_reason: value.get("stop_reason").and_then(Value::as_str).map(anthropic_finish),
        }],
        usage: Usage::new(prompt, completion, None),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(text: &str) -> Value {
        json!({"role": "user", "content": text})
    }

    #[test]
    fn openai_body_passes_params_and_asks_for_stream_usage() {
        let mut params = Map::new();
        params.insert("temperature".into(), json!(0.5));
        params.insert("max_tokens".into(), Value::Null);
        let body: Value = serde_json::from_slice(&request_body(WireFormat::OpenAi, "m", &[user("x")], &params, true).unwrap()).unwrap();
        assert_eq!(body["temperature"], 0.5);
        assert!(body.get("max_tokens").is_none(), "null options are left out");
        assert_eq!(body["stream_options"]["include_usage"], true);
        assert_eq!(body["messages"][0]["content"], "x");
    }

    #[test]
    fn anthropic_body_moves_system_and_maps_options() {
        let messages = [json!({"role": "system", "content": "be brief"}), user("hi")];
        let mut params = Map::new();
        params.insert("stop".into(), json!("END"));
        params.insert("temperature".into(), json!(0.0));
        let body: Value = serde_json::from_slice(&request_body(WireFormat::Anthropic, "claude", &messages, &params, false).unwrap()).unwrap();
        assert_eq!(body["system"], "be brief");
        assert_eq!(body["messages"].as_array().unwrap().len(), 1);
        assert_eq!(body["stop_sequences"], json!(["END"]));
        assert_eq!(body["max_tokens"], ANTHROPIC_DEFAULT_MAX_TOKENS);
        params.insert("logit_bias".into(), json!({}));
        let err = request_body(WireFormat::Anthropic, "claude", &messages, &params, false).unwrap_err();
        assert!(err.to_string().contains("logit_bias"), "{err}");
    }

    #[test]
    fn anthropic_body_carries_tool_turns() {
        let messages = [
            user("weather?"),
            json!({"role": "assistant", "content": null, "tool_calls": [
                {"id": "t1", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Paris\"}"}}]}),
            json!({"role": "tool", "tool_call_id": "t1", "content": "sunny"}),
        ];
        let body: Value = serde_json::from_slice(&request_body(WireFormat::Anthropic, "c", &messages, &Map::new(), false).unwrap()).unwrap();
        let turns = body["messages"].as_array().unwrap();
        assert_eq!(turns[1]["content"][0], json!({"type": "tool_use", "id": "t1", "name": "weather", "input": {"city": "Paris"}}));
        assert_eq!(turns[2]["content"][0]["tool_use_id"], "t1");
    }

    #[test]
    fn parses_both_formats() {
        let openai = br#"{"id":"c1","model":"m","choices":[{"message":{"role":"assistant","content":"Paris"},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}"#;
        let out = parse_completion(WireFormat::OpenAi, openai).unwrap();
        assert_eq!(out.choices[0].content.as_deref(), Some("Paris"));
        assert_eq!(out.usage, Usage { prompt_tokens: 3, completion_tokens: 1, total_tokens: 4 });
        let anthropic = br#"{"id":"msg_1","model":"claude","content":[{"type":"text","text":"Par"},{"type":"text","text":"is"}],"stop_reason":"end_turn","usage":{"input_tokens":5,"output_tokens":2}}"#;
        let out = parse_completion(WireFormat::Anthropic, anthropic).unwrap();
        assert_eq!(out.choices[0].content.as_deref(), Some("Paris"));
        assert_eq!(out.choices[0].finish_reason.as_deref(), Some("stop"));
        assert_eq!(out.usage.total_tokens, 7);
        let tool = br#"{"content":[{"type":"tool_use","id":"t1","name":"search","input":{"q":"x"}}],"stop_reason":"tool_use"}"#;
        let out = parse_completion(WireFormat::Anthropic, tool).unwrap();
        assert_eq!(out.choices[0].tool_calls.as_ref().unwrap()[0]["function"]["arguments"], r#"{"q":"x"}"#);
    }

    #[test]
    fn absurd_usage_counts_saturate_instead_of_wrapping() {
        let max = u64::MAX;
        let openai = format!(
            r#"{{"choices":[{{"message":{{"content":"x"}},"finish_reason":"stop"}}],"usage":{{"prompt_tokens":{max},"completion_tokens":{max}}}}}"#
        );
        let out = parse_completion(WireFormat::OpenAi, openai.as_bytes()).unwrap();
        assert_eq!(out.usage, Usage { prompt_tokens: max, completion_tokens: max, total_tokens: max });
        let anthropic = format!(
            r#"{{"content":[{{"type":"text","text":"x"}}],"stop_reason":"end_turn","usage":{{"input_tokens":{max},"output_tokens":2}}}}"#
        );
        let out = parse_completion(WireFormat::Anthropic, anthropic.as_bytes()).unwrap();
        assert_eq!(out.usage, Usage { prompt_tokens: max, completion_tokens: 2, total_tokens: max });
        // a total the server gives is kept as given
        assert_eq!(Usage::new(max, 1, Some(7)).total_tokens, 7);
        assert_eq!(Usage::new(3, 4, None).total_tokens, 7);
    }

    #[test]
    fn malformed_bodies_are_protocol_errors() {
        for body in [&b"{not json"[..], br#"{"choices": []}"#, br#"{"choices": [{"message": {"content": 3}}]}"#] {
            assert_eq!(parse_completion(WireFormat::OpenAi, body).unwrap_err().kind(), "protocol");
        }
        assert_eq!(parse_completion(WireFormat::Anthropic, br#"{"content": []}"#).unwrap_err().kind(), "protocol");
    }
}
