//! End-to-end tests of driving DSPy from Rust, against the loopback LM server (no network, no API key).

mod common;

use std::collections::HashMap;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{QAInput, QAOutput, Server, QA};
use dspyo3::{ChainOfThought, ConfigError, DspyType, Error, Lm, Predict, Program, ReAct, Signature, StreamEvent, Tool};
use futures::StreamExt;
use pyo3::prelude::*;
use pyo3::types::IntoPyDict;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, DspyType)]
#[serde(rename_all = "snake_case")]
enum Sentiment {
    VeryPositive,
    Neutral,
    Negative,
}

/// A named thing in the text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, DspyType)]
struct Entity {
    /// surface form
    name: String,
    #[serde(rename = "type")]
    kind: String,
    salience: f64,
    aliases: Option<Vec<String>>,
}

/// Analyse a product review.
#[derive(Signature)]
struct Analyse {
    #[input]
    review: String,
    #[input]
    max_entities: i64,
    #[input]
    context: Option<Entity>,
    #[output]
    sentiment: Sentiment,
    /// between 0 and 1
    #[output]
    confidence: f64,
    #[output]
    entities: Vec<Entity>,
    #[output]
    counts: HashMap<String, i64>,
    #[output]
    spam: bool,
    #[output(desc = "one sentence")]
    summary: Option<String>,
}

fn analyse_input() -> AnalyseInput {
    AnalyseInput {
        review: "Acme's kettle is great".into(),
        max_entities: 3,
        context: Some(Entity { name: "Acme".into(), kind: "org".into(), salience: 1.0, aliases: None }),
    }
}

#[test]
fn typed_predict_maps_every_field_type_both_ways() {
    let server = Server::start();
    server.script(&[r#"chat_reply(sentiment="very_positive", confidence=0.9,
        entities=[{"name": "Acme", "type": "org", "salience": 0.7, "aliases": ["ACME"]}],
        counts={"great": 1}, spam=False, summary="Praise for a kettle.")"#]);
    let analyse = Predict::<Analyse>::new().unwrap().with_lm(&server.lm(), None).unwrap();
    let out = analyse.call(&analyse_input()).unwrap();
    assert_eq!(out.sentiment, Sentiment::VeryPositive);
    assert_eq!(out.confidence, 0.9);
    assert_eq!(
        out.entities,
        vec![Entity { name: "Acme".into(), kind: "org".into(), salience: 0.7, aliases: Some(vec!["ACME".into()]) }]
    );
    assert_eq!(out.counts, HashMap::from([("great".to_string(), 1)]));
    assert!(!out.spam);
    assert_eq!(out.summary.as_deref(), Some("Praise for a kettle."));

    let prompt = server.prompt(0);
    assert!(prompt.contains("Analyse a product review."), "doc comment is the instructions:\n{prompt}");
    assert!(prompt.contains("between 0 and 1") && prompt.contains("one sentence"), "{prompt}");
    assert!(prompt.contains(r#""name": "Acme""#), "nested input sent as JSON:\n{prompt}");
}

#[test]
fn rust_types_become_the_python_annotations() {
    common::init();
    let analyse = Predict::<Analyse>::new().unwrap();
    let program = analyse.module().program().unwrap();
    Python::attach(|py| {
        let sig = program.bind(py).getattr("signature").unwrap();
        let ann = |role: &str, name: &str| -> String {
            let field = sig.getattr(role).unwrap().get_item(name).unwrap();
            field.getattr("annotation").unwrap().str().unwrap().to_string()
        };
        assert_eq!(ann("output_fields", "sentiment"), "typing.Literal['very_positive', 'neutral', 'negative']");
        assert_eq!(ann("output_fields", "confidence"), "<class 'float'>");
        assert_eq!(ann("output_fields", "counts"), "dict[str, int]");
        assert_eq!(ann("output_fields", "summary"), "typing.Optional[str]");
        assert!(ann("output_fields", "entities").starts_with("list["), "{}", ann("output_fields", "entities"));
        assert_eq!(ann("input_fields", "max_entities"), "<class 'int'>");
        let model = sig.getattr("output_fields").unwrap().get_item("entities").unwrap().getattr("annotation").unwrap();
        let entity = model.getattr("__args__").unwrap().get_item(0).unwrap();
        let schema = entity.call_method0("model_json_schema").unwrap().str().unwrap().to_string();
        assert!(schema.contains("'type'") && schema.contains("surface form"), "{schema}");
        assert_eq!(entity.getattr("__doc__").unwrap().to_string(), "A named thing in the text.");
    });
}

#[test]
fn chain_of_thought_returns_reasoning() {
    let server = Server::start();
    server.script(&[r#"chat_reply(reasoning="France's capital is Paris.", answer="Paris")"#]);
    let cot = ChainOfThought::<QA>::new().unwrap().with_lm(&server.lm(), None).unwrap();
    let full = cot.call_full(&QAInput { question: "Capital of France?".into() }).unwrap();
    assert_eq!(full.output.answer, "Paris");
    assert_eq!(full.reasoning(), Some("France's capital is Paris."));
}

#[derive(Debug, Deserialize, DspyType)]
struct WeatherArgs {
    /// a city name
    city: String,
}

/// Answer questions about the weather, using the tools.
#[derive(Signature)]
struct WeatherQA {
    #[input]
    question: String,
    #[output]
    answer: String,
}

#[test]
fn react_calls_rust_tools_and_feeds_errors_back() {
    let server = Server::start();
    server.script(&[
        r#"chat_reply(next_thought="look it up", next_tool_name="weather", next_tool_args={"city": "Paris"})"#,
        r#"chat_reply(next_thought="and Atlantis", next_tool_name="weather", next_tool_args={"city": "Atlantis"})"#,
        r#"chat_reply(next_thought="done", next_tool_name="finish", next_tool_args={})"#,
        r#"chat_reply(reasoning="the tool said sunny", answer="Sunny in Paris")"#,
    ]);
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let weather = Tool::new("weather", "Current weather in a city.", move |args: WeatherArgs| {
        counter.fetch_add(1, Ordering::SeqCst);
        if args.city == "Atlantis" {
            Err(format!("no weather station in {}", args.city))
        } else {
            Ok(format!("sunny, 21C in {}", args.city))
        }
    });
    assert_eq!(weather.args_schema().unwrap()["city"]["description"], "a city name");
    let agent = ReAct::<WeatherQA>::new(vec![weather], 5).unwrap().with_lm(&server.lm(), None).unwrap();
    let full = agent.call_full(&WeatherQAInput { question: "Weather in Paris?".into() }).unwrap();
    assert_eq!(full.output.answer, "Sunny in Paris");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    let trajectory = full.get("trajectory").unwrap().to_string();
    assert!(trajectory.contains("sunny, 21C in Paris"), "{trajectory}");
    assert!(trajectory.contains("no weather station in Atlantis"), "tool error fed back: {trajectory}");
    assert!(server.prompt(0).contains("a city name"), "tool schema shown to the LM");
}

#[test]
fn streamed_react_with_rust_tools_emits_tool_status_messages() {
    let server = Server::start();
    server.script(&[
        r#"chat_reply(next_thought="look it up", next_tool_name="weather", next_tool_args={"city": "Paris"})"#,
        r#"chat_reply(next_thought="done", next_tool_name="finish", next_tool_args={})"#,
        r#"chat_reply(reasoning="the tool said sunny", answer="Sunny in Paris")"#,
    ]);
    let weather = Tool::new("weather", "Current weather in a city.", |args: WeatherArgs| {
        Ok::<_, String>(format!("sunny, 21C in {}", args.city))
    });
    let agent = ReAct::<WeatherQA>::new(vec![weather], 5).unwrap().with_lm(&server.lm(), None).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let (statuses, answer) = rt.block_on(async {
        let mut stream = agent.stream(&WeatherQAInput { question: "Weather in Paris?".into() }).unwrap();
        let (mut statuses, mut answer) = (Vec::new(), None);
        while let Some(event) = stream.next().await {
            match event.unwrap() {
                StreamEvent::Status(message) => statuses.push(message),
                StreamEvent::Prediction(p) => answer = Some(p.output.answer),
                StreamEvent::Token { .. } => {}
            }
        }
        (statuses, answer)
    });
    assert_eq!(answer.as_deref(), Some("Sunny in Paris"));
    // what DSPy's StatusMessageProvider says around a Python tool's call, in order; `finish` says nothing
    assert_eq!(
        statuses,
        ["Calling tool weather...", "Tool calling finished! Querying the LLM with tool calling results..."],
    );
}

#[test]
fn program_saved_in_python_gives_the_same_predictions_from_rust() {
    let lm_server = dspyo3::testing::LoopbackLm::start(Duration::ZERO).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/optimized");
    let status = Command::new(dspyo3::testing::venv_python())
        .arg(example.join("optimize.py"))
        .args(["--api-base", lm_server.api_base(), "--out"])
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(status.success(), "optimize.py failed");
    let recorded: HashMap<String, HashMap<String, String>> =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("predictions.json")).unwrap()).unwrap();

    common::init();
    dspyo3::add_python_path(&example).unwrap();
    let lm = lm_server.lm().build().unwrap();
    let program =
        Program::load(dir.path().join("program.json"), "qa_program:QAProgram").unwrap().with_lm(&lm, None).unwrap();
    let typed = program.clone().typed::<QA>();
    let fresh = unoptimized(&lm);
    for (question, answer) in &recorded["optimized"] {
        let from_rust = typed.call(&QAInput { question: question.clone() }).unwrap().answer;
        assert_eq!(&from_rust, answer, "{question}");
        // the saved demos are what make the answer: without them, the answer is the unoptimized one
        let unoptimized = fresh.call(&QAInput { question: question.clone() }).unwrap().answer;
        assert_eq!(&unoptimized, &recorded["unoptimized"][question]);
        assert_ne!(&unoptimized, answer);
    }
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("program.json")).unwrap()).unwrap();
    assert_eq!(saved["answer.predict"]["demos"].as_array().map(Vec::len), Some(3), "{saved}");
}

#[test]
fn a_program_with_only_forward_runs_async_and_streams() {
    // QAProgram defines `forward` and no `aforward`: DSPy's Module.acall alone raises AttributeError on it
    let lm_server = dspyo3::testing::LoopbackLm::start(Duration::ZERO).unwrap();
    common::init();
    dspyo3::add_python_path(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/optimized")).unwrap();
    let program = unoptimized(&lm_server.lm().build().unwrap());
    let input = QAInput { question: "Capital of France?".into() };
    let sync = program.call(&input).unwrap().answer;
    assert!(sync.starts_with("answer-"), "{sync}");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let (awaited, streamed) = rt.block_on(async {
        let awaited = program.acall(&input).await.unwrap().answer;
        let streamed = program.stream(&input).unwrap().prediction().await.unwrap().output.answer;
        (awaited, streamed)
    });
    assert_eq!(awaited, sync);
    assert_eq!(streamed, sync);
}

/// The same architecture with an empty state: what the program answers before optimization.
fn unoptimized(lm: &dspyo3::Lm) -> dspyo3::Typed<QA> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("empty.json");
    Python::attach(|py| {
        let program = py.import("qa_program").unwrap().getattr("QAProgram").unwrap().call0().unwrap();
        program.call_method1("save", (path.to_str().unwrap(),)).unwrap();
    });
    Program::load(&path, "qa_program:QAProgram").unwrap().with_lm(lm, None).unwrap().typed::<QA>()
}

#[test]
fn saving_from_rust_and_loading_back_keeps_demos() {
    let server = Server::start();
    server.responder(r#"field_responder(lambda inputs: {"answer": "A:" + inputs["question"]})"#);
    let predict = Predict::<QA>::new().unwrap().with_lm(&server.lm(), None).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("predict.json");
    Python::attach(|py| {
        let program = predict.module().program().unwrap();
        let example = py
            .import("dspy")
            .unwrap()
            .getattr("Example")
            .unwrap()
            .call((), Some(&[("question", "Q1"), ("answer", "A1")].into_py_dict(py).unwrap()))
            .unwrap();
        program.bind(py).setattr("demos", vec![example]).unwrap();
    });
    predict.save(&path).unwrap();
    let loaded = Predict::<QA>::load(&path).unwrap().with_lm(&server.lm(), None).unwrap();
    let out = loaded.call(&QAInput { question: "Q2".into() }).unwrap();
    assert_eq!(out.answer, "A:Q2");
    let prompt = server.prompt(0);
    assert!(prompt.contains("Q1") && prompt.contains("A1"), "the demo loaded from JSON is in the prompt");
    let err = Predict::<QA>::load(dir.path().join("x.pkl")).unwrap_err();
    assert!(err.to_string().contains("pickles"), "{err}");
    // a saved file is data: one that would point the predictor's calls at another host is refused, not applied
    let saved: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    for (key, value) in [
        ("config", serde_json::json!({"api_base": "http://127.0.0.1:9/v1"})),
        ("lm", serde_json::json!({"model": "openai/x", "api_base": "http://127.0.0.1:9/v1"})),
    ] {
        let mut hostile = saved.clone();
        hostile[key] = value;
        let hostile_path = dir.path().join(format!("hostile-{key}.json"));
        std::fs::write(&hostile_path, hostile.to_string()).unwrap();
        let err = Predict::<QA>::load(&hostile_path).unwrap_err().to_string();
        assert!(err.contains(key) && err.contains("hostile"), "{err}");
    }
}

#[test]
fn lm_errors_map_to_the_error_enum() {
    let server = Server::start();
    let predict = Predict::<QA>::new().unwrap().with_lm(&server.lm(), None).unwrap();
    let input = QAInput { question: "q".into() };

    server.script(&["Reply.rate_limited(retry_after=2)"]);
    match predict.call(&input).unwrap_err() {
        err @ Error::RateLimited { .. } => {
            assert_eq!(err.retry_after(), Some(Duration::from_secs(2)));
            assert!(err.is_retryable());
            assert_eq!(err.status(), Some(429));
            assert_python_source(&err);
        }
        other => panic!("expected RateLimited, got {other:?}"),
    }

    server.script(&[r#"Reply.server_error(status=401, message="Incorrect API key provided")"#]);
    let err = predict.call(&input).unwrap_err();
    assert!(matches!(err, Error::Auth { status: Some(401), .. }), "{err:?}");

    // a gateway that echoes the key it was sent: the key is masked in the error's message and traceback
    let key = "sk-rust-echoed-0123456789abcdef";
    let keyed = Predict::<QA>::new().unwrap().with_lm(&server.lm_builder().api_key(key).build().unwrap(), None).unwrap();
    server.script(&[&format!(r#"Reply.server_error(status=401, message="Incorrect API key provided: {key}")"#)]);
    let err = keyed.call(&input).unwrap_err();
    let shown = format!("{err} {err:?}");
    assert!(matches!(err, Error::Auth { .. }), "{shown}");
    assert!(!shown.contains(key) && shown.contains("****cdef"), "{shown}");

    // ChatAdapter retries a failed parse with JSONAdapter: two unparseable answers
    server.script(&["'I do not follow formats'", "'still no format'"]);
    match predict.call(&input).unwrap_err() {
        Error::Parse { raw, .. } => assert!(raw.contains("no format") || raw.contains("I do not follow"), "{raw}"),
        other => panic!("expected Parse, got {other:?}"),
    }

    server.script(&[r#"Reply.server_error(status=500, message="upstream exploded")"#]);
    match predict.call(&input).unwrap_err() {
        err @ Error::Lm { .. } => {
            assert!(err.to_string().contains("upstream exploded") && err.to_string().contains("HTTP 500"), "{err}");
            assert_eq!(err.status(), Some(500));
            assert_python_source(&err);
        }
        other => panic!("expected Lm, got {other:?}"),
    }

    let slow = Predict::<QA>::new()
        .unwrap()
        .with_lm(&server.lm_builder().kwarg("timeout", 0.5).build().unwrap(), None)
        .unwrap();
    server.script(&["Reply.hang_up(5)"]);
    let err = slow.call(&input).unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err:?}");
}

/// The error's source is the Python exception it was made from.
fn assert_python_source(err: &Error) {
    let source = std::error::Error::source(err).unwrap_or_else(|| panic!("no source: {err:?}"));
    let exception = source.downcast_ref::<dspyo3::PyException>().unwrap_or_else(|| panic!("not Python's: {source:?}"));
    Python::attach(|py| assert!(exception.py_err().value(py).is_instance_of::<pyo3::exceptions::PyException>()));
}

#[test]
fn errors_are_typed_and_keep_their_source() {
    common::init();
    // a kwarg that does not serialize is reported by build(), not sent as null
    let bad: std::collections::HashMap<(u8, u8), u8> = [((1, 2), 3)].into();
    match Lm::new("openai/x").kwarg("logit_bias", bad).temperature(0.0).build().unwrap_err() {
        Error::Config(ConfigError::Kwarg { key, source }) => {
            assert_eq!(key, "logit_bias");
            assert!(source.to_string().contains("key must be a string"), "{source}");
        }
        other => panic!("expected ConfigError::Kwarg, got {other:?}"),
    }
    // typed configuration errors, with the I/O error as their source
    let err = dspyo3::add_python_path("/no/such/dir/for/dspyo3").unwrap_err();
    assert!(matches!(err, Error::Config(ConfigError::PythonPath { .. })), "{err:?}");
    let io = std::error::Error::source(&err).and_then(|s| s.downcast_ref::<std::io::Error>());
    assert_eq!(io.map(std::io::Error::kind), Some(std::io::ErrorKind::NotFound), "{err:?}");
    assert!(matches!(ReAct::<QA>::new(vec![], 3).unwrap_err(), Error::Config(ConfigError::NoTools)));
    // a Python exception that is no LM error keeps it as its source too
    let err = Program::load("missing.json", "no_such_module_xyz:Program").unwrap_err();
    assert!(matches!(err, Error::Python { .. }), "{err:?}");
    assert_python_source(&err);
}

#[test]
fn python_exceptions_keep_type_and_traceback() {
    common::init();
    match Program::load("missing.json", "no_such_module_xyz:Program").unwrap_err() {
        Error::Python { type_name, traceback, .. } => {
            assert_eq!(type_name, "builtins.ModuleNotFoundError");
            assert!(traceback.contains("no_such_module_xyz"), "{traceback}");
        }
        other => panic!("expected Python, got {other:?}"),
    }
    match Program::load("missing.json", "json:loads").unwrap_err() {
        Error::Python { type_name, traceback, message, .. } => {
            assert_eq!(type_name, "builtins.TypeError");
            assert!(message.contains("missing 1 required positional argument"), "{message}");
            assert!(traceback.contains("in load_program"), "{traceback}");
        }
        other => panic!("expected Python, got {other:?}"),
    }
    let err = Program::load("missing.json", "not-a-factory").unwrap_err();
    assert!(err.to_string().contains("package.module:Class"), "{err}");
}

#[test]
fn outputs_that_do_not_fit_the_rust_type_are_conversion_errors() {
    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Wrong {
        answer: i64,
    }
    let server = Server::start();
    server.script(&[r#"chat_reply(answer="Paris")"#]);
    let predict = Predict::<QA>::new().unwrap().with_lm(&server.lm(), None).unwrap();
    let err = predict.module().call::<_, Wrong>(&QAInput { question: "q".into() }).unwrap_err();
    match err {
        Error::Conversion { what, json, source } => {
            assert_eq!(what, "program outputs");
            assert!(json.contains("Paris"));
            assert!(source.is_data(), "{source}"); // serde's own error: a value of the wrong type
        }
        other => panic!("expected Conversion, got {other:?}"),
    }
}

#[test]
fn api_key_env_must_exist_and_keys_never_print() {
    common::init();
    let err = dspyo3::Lm::new("openai/x").api_key_env("DSPYO3_TEST_NO_SUCH_KEY_VAR").build().unwrap_err();
    assert!(err.to_string().contains("DSPYO3_TEST_NO_SUCH_KEY_VAR"), "{err}");
    let builder = dspyo3::Lm::new("openai/x").api_key("sk-secret-value-123");
    assert!(!format!("{builder:?}").contains("sk-secret"), "{builder:?}");
    let lm = builder.build().unwrap();
    assert!(!format!("{lm:?}").contains("sk-secret"));
}

/// `n` tokio tasks each awaiting `acall` with question `q<i>`; the answers in task order.
fn acall_concurrently(predict: &Predict<QA>, n: usize) -> Vec<String> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let tasks: Vec<_> = (0..n)
            .map(|i| {
                let predict = predict.clone();
                tokio::spawn(async move { predict.acall(&QAInput { question: format!("q{i}") }).await })
            })
            .collect();
        let mut answers = Vec::new();
        for task in tasks {
            answers.push(task.await.unwrap().unwrap().answer);
        }
        answers
    })
}

#[test]
fn tokio_tasks_run_acall_concurrently_without_cross_talk() {
    let server = Server::start();
    // every request waits until all 32 are in the server at once: only concurrent calls get past the barrier
    server.responder(&barrier_responder(32, 0.0));
    let predict = Predict::<QA>::new().unwrap().with_lm(&server.lm(), None).unwrap();
    let answers = acall_concurrently(&predict, 32);
    assert_eq!(answers, (0..32).map(|i| format!("A:q{i}")).collect::<Vec<_>>());
    assert_eq!(server.requests().len(), 32);
}

/// A responder answering `A:<question>` whose requests for questions `q0`, `q1`, ... first wait at a barrier until
/// `n` of them are in the server at once (broken after 60 s, failing the answers): it shows calls overlap without
/// timing them.
fn barrier_responder(n: usize, latency: f64) -> String {
    format!(
        r#"(lambda barrier: lambda request: ((barrier.wait() if parse_fields(last_user_text(request))["question"].startswith("q") else None), Reply(content=chat_reply(answer="A:" + parse_fields(last_user_text(request))["question"]), latency={latency}))[1])(__import__("threading").Barrier({n}, timeout=60))"#
    )
}

#[test]
fn sync_call_releases_the_gil_while_the_request_is_in_flight() {
    let server = Server::start();
    server.responder(r#"lambda request: Reply(content=chat_reply(answer="ok"), latency=1.0)"#);
    let predict = Predict::<QA>::new().unwrap().with_lm(&server.lm(), None).unwrap();
    let started = Instant::now();
    let caller = std::thread::spawn(move || {
        predict.call(&QAInput { question: "q".into() }).unwrap();
        Instant::now()
    });
    std::thread::sleep(Duration::from_millis(300));
    // Another thread runs Python while the call waits on the LM: it finishes long before the call does.
    let ran_python = Python::attach(|py| {
        py.eval(c"sum(range(1000))", None, None).unwrap().extract::<i64>().unwrap();
        Instant::now()
    });
    let call_done = caller.join().unwrap();
    assert!(ran_python < call_done, "Python ran while the LM request was in flight");
    assert!(call_done.duration_since(started) >= Duration::from_millis(900));
}

#[test]
fn streaming_yields_tokens_then_the_typed_prediction() {
    // on both transports: dspy.LM's own client, and the native one (NativeLM streams through dspy.streamify)
    let server = Server::start();
    let answer = "The capital of France is Paris, a city on the Seine.";
    server.responder(&format!(
        r#"lambda request: Reply(content=chat_reply(answer={answer:?}), chunk_size=6, chunk_delay=0.01)"#
    ));
    for (transport, lm) in [("default", server.lm()), ("native", server.lm_builder().native().build().unwrap())] {
        let predict = Predict::<QA>::new().unwrap().with_lm(&lm, None).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let (tokens, prediction) = rt.block_on(async {
            let mut stream = predict.stream(&QAInput { question: "Capital of France?".into() }).unwrap();
            let mut tokens = Vec::new();
            let mut prediction = None;
            while let Some(event) = stream.next().await {
                match event.unwrap() {
                    StreamEvent::Token { field, chunk, .. } => {
                        assert_eq!(field, "answer");
                        tokens.push(chunk);
                    }
                    StreamEvent::Prediction(p) => prediction = Some(p.output),
                    StreamEvent::Status(_) => {}
                }
            }
            (tokens, prediction)
        });
        assert!(tokens.len() >= 3, "{transport}: streamed in several chunks: {tokens:?}");
        assert_eq!(tokens.concat().trim(), answer, "{transport}");
        assert_eq!(prediction.unwrap().answer, answer, "{transport}");
        let requests = server.requests();
        let last = requests.last().unwrap();
        assert!(last["stream"].as_bool().unwrap_or(false), "{transport}: the LM request was a streaming one");
    }
}

#[test]
fn a_signature_splits_into_input_and_output() {
    let (input, output): (QAInput, QAOutput) = QA { question: "q".into(), answer: "a".into() }.into();
    assert_eq!((input.question.as_str(), output.answer.as_str()), ("q", "a"));
    let spec = <QA as Signature>::spec();
    assert_eq!(spec.instructions.as_deref(), Some("Answer questions with short factoid answers."));
    assert_eq!(spec.inputs[0].name, "question");
}

#[test]
fn native_transport_drives_dspy_without_litellm() {
    let server = Server::start();
    server.script(&[r#"chat_reply(answer="Paris")"#]);
    let lm = server.lm_builder().native().build().unwrap();
    let predict = Predict::<QA>::new().unwrap().with_lm(&lm, None).unwrap();
    assert_eq!(predict.call(&QAInput { question: "Capital of France?".into() }).unwrap().answer, "Paris");
    let request = &server.requests()[0];
    assert_eq!(request["model"], "dspyo3-test");
    assert_eq!(request["_headers"]["authorization"], "Bearer test-key");
    assert!(request["messages"][0]["content"].as_str().unwrap().contains("`answer`"), "ChatAdapter system prompt");
    assert_eq!(lm.history_len().unwrap(), 1, "DSPy's history records native calls");
    let class = Python::attach(|py| lm.as_py().bind(py).get_type().fully_qualified_name().unwrap().to_string());
    assert_eq!(class, "dspyo3_core.native_lm.NativeLM", "the one Python-facing native transport");

    // a LiteLLM route NativeLM does not know: the server gets the name after the route, as LiteLLM sends it
    let routed = dspyo3::Lm::new("openrouter/vendor/model-x").api_base(server.api_base.clone()).api_key("k").cache(false);
    let routed = Predict::<QA>::new().unwrap().with_lm(&routed.native().build().unwrap(), None).unwrap();
    server.script(&[r#"chat_reply(answer="Paris")"#]);
    routed.call(&QAInput { question: "Capital?".into() }).unwrap();
    assert_eq!(server.requests().last().unwrap()["model"], "vendor/model-x");

    // async from tokio tasks, no cross-talk
    server.responder(&barrier_responder(16, 0.0)); // all 16 in flight at once, or the barrier breaks
    let _ = predict.call(&QAInput { question: "warm".into() }); // not at the barrier: only warms the pool
    let answers = acall_concurrently(&predict, 16);
    assert_eq!(answers, (0..16).map(|i| format!("A:q{i}")).collect::<Vec<_>>());
}

#[test]
fn native_transport_errors_map_like_the_default_transport() {
    let server = Server::start();
    let lm = server.lm_builder().native().kwarg("timeout", 0.5).build().unwrap();
    let predict = Predict::<QA>::new().unwrap().with_lm(&lm, None).unwrap();
    let input = QAInput { question: "q".into() };
    server.script(&["Reply.rate_limited(retry_after=3)"]);
    let err = predict.call(&input).unwrap_err();
    assert!(matches!(err, Error::RateLimited { .. }), "{err:?}");
    assert_eq!(err.retry_after(), Some(Duration::from_secs(3)));
    server.script(&[r#"Reply.server_error(status=401, message="Incorrect API key provided")"#]);
    assert!(matches!(predict.call(&input).unwrap_err(), Error::Auth { .. }));

    // a gateway that echoes the key it was sent: the key is masked in the error's message and traceback
    let key = "sk-rust-echoed-0123456789abcdef";
    let keyed = Predict::<QA>::new().unwrap().with_lm(&server.lm_builder().api_key(key).build().unwrap(), None).unwrap();
    server.script(&[&format!(r#"Reply.server_error(status=401, message="Incorrect API key provided: {key}")"#)]);
    let err = keyed.call(&input).unwrap_err();
    let shown = format!("{err} {err:?}");
    assert!(matches!(err, Error::Auth { .. }), "{shown}");
    assert!(!shown.contains(key) && shown.contains("****cdef"), "{shown}");
    server.script(&[r#"Reply.server_error(status=400, message="This model's maximum context length is 8192 tokens")"#]);
    let err = predict.call(&input).unwrap_err();
    assert!(matches!(err, Error::ContextWindowExceeded { .. }), "{err:?}");
    server.script(&["Reply.hang_up(5)"]);
    let err = predict.call(&input).unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err:?}");
    server.script(&[r#"Reply.server_error(status=503, message="overloaded")"#]);
    match predict.call(&input).unwrap_err() {
        Error::Lm { message, retryable, .. } => {
            assert!(message.contains("overloaded"), "{message}");
            assert!(retryable, "a 503 is retryable");
        }
        other => panic!("expected Lm, got {other:?}"),
    }
}

#[test]
fn a_malformed_answer_is_the_same_error_on_both_transports() {
    // an HTTP 200 whose body is not a completion: the same request gets the same answer, so neither transport
    // calls it retryable, and neither retries it (a retry would get the server's default, valid answer)
    let server = Server::start();
    let input = QAInput { question: "q".into() };
    let mut type_names = Vec::new();
    for native in [false, true] {
        let builder = server.lm_builder().num_retries(2);
        let lm = if native { builder.native() } else { builder }.build().unwrap();
        let predict = Predict::<QA>::new().unwrap().with_lm(&lm, None).unwrap();
        let before = server.requests().len();
        server.script(&["Reply.malformed()"]);
        let transport = if native { "native" } else { "default" };
        let err = predict.call(&input).expect_err(transport);
        assert_eq!(server.requests().len() - before, 1, "{transport}: retried a malformed answer");
        assert!(!err.is_retryable(), "{transport}: {err:?}");
        match err {
            Error::Lm { type_name, message, .. } => {
                assert!(message.contains("not JSON"), "{transport}: {message}");
                type_names.push(type_name);
            }
            other => panic!("{transport}: expected Lm, got {other:?}"),
        }
    }
    assert_eq!(type_names[0], type_names[1]);
}

#[test]
fn native_transport_states_its_limits() {
    common::init();
    let err = dspyo3::Lm::new("openai/gpt-4o-mini").native().build().unwrap_err();
    assert!(err.to_string().contains("needs .api_base"), "{err}");
    // https is spoken (rustls, HTTP/2 by ALPN): building needs no connection, so no request leaves the machine
    dspyo3::Lm::new("openai/gpt-4o-mini").api_base("https://api.openai.com/v1").native().build().unwrap();
    let err = dspyo3::Lm::new("openai/gpt-4o-mini").api_base("ftp://example.invalid/v1").native().build().unwrap_err();
    assert!(err.to_string().contains("must look like"), "{err}");
    assert!(matches!(err, Error::Config(ConfigError::NativeTransport { .. })), "{err:?}");
    let err = dspyo3::Lm::new("openai/gpt-4o-mini").api_base("http://127.0.0.1:9/v1").native().kwarg("engine", "x");
    let err = err.build().unwrap_err();
    assert!(err.to_string().contains("takes no engine"), "{err}");
}

#[test]
fn absurd_retry_after_values_do_not_panic() {
    let server = Server::start();
    let input = QAInput { question: "q".into() };
    for lm in [server.lm(), server.lm_builder().native().build().unwrap()] {
        let predict = Predict::<QA>::new().unwrap().with_lm(&lm, None).unwrap();
        server.script(&["Reply.rate_limited(retry_after=1e300)"]);
        match predict.call(&input).unwrap_err() {
            Error::RateLimited { retry_after, .. } => assert_eq!(retry_after, None),
            other => panic!("expected RateLimited, got {other:?}"),
        }
    }
    let err = server.lm_builder().native().kwarg("timeout", 1e20).build().unwrap_err();
    assert!(err.to_string().contains("timeout must be between"), "{err}");
}

#[test]
fn secrets_in_kwargs_and_headers_never_print() {
    let builder = dspyo3::Lm::new("openai/x")
        .kwarg("api_key", "sk-kwarg-secret")
        .kwarg("extra_headers", serde_json::json!({"X-Api-Token": "tok-secret"}))
        .temperature(0.5);
    let text = format!("{builder:?}");
    assert!(!text.contains("secret"), "{text}");
    assert!(text.contains("temperature"), "non-secret settings still show: {text}");
}

/// Contains itself.
#[derive(Debug, Clone, Serialize, Deserialize, DspyType)]
struct Tree {
    name: String,
    children: Vec<Tree>,
}

/// Summarise a tree.
#[derive(Signature)]
struct Summarise {
    #[input]
    tree: Tree,
    #[output]
    summary: String,
}

#[test]
fn recursive_types_are_refused_with_their_name() {
    common::init();
    let spec = serde_json::to_value(<Tree as DspyType>::type_spec()).unwrap();
    assert_eq!(spec["fields"][1]["ty"]["item"]["kind"], "recursive");
    let err = Predict::<Summarise>::new().unwrap_err();
    assert!(err.to_string().contains("Tree contains itself"), "{err}");
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, DspyType)]
struct Settings {
    name: String,
    #[serde(default)]
    retries: i64,
    #[serde(skip)]
    internal: Option<String>,
}

/// Read settings.
#[derive(Signature)]
struct ReadSettings {
    #[input]
    text: String,
    #[output]
    settings: Settings,
}

#[test]
fn serde_default_and_skip_fields_follow_serde() {
    let server = Server::start();
    server.script(&[r#"chat_reply(settings={"name": "svc"})"#]);
    let read = Predict::<ReadSettings>::new().unwrap().with_lm(&server.lm(), None).unwrap();
    let out = read.call(&ReadSettingsInput { text: "name is svc".into() }).unwrap();
    assert_eq!(out.settings, Settings { name: "svc".into(), retries: 0, internal: None });
    let schema = <Settings as DspyType>::type_spec().json_schema();
    assert_eq!(schema["required"], serde_json::json!(["name"]), "{schema}");
    assert!(schema["properties"].get("internal").is_none());
}

#[test]
fn a_users_own_timeout_is_a_python_error_not_an_lm_timeout() {
    common::init();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("slow_db.py"),
        "def build():\n    try:\n        raise ConnectionError('db down')\n    except ConnectionError:\n        raise TimeoutError('database query timed out')\n",
    )
    .unwrap();
    dspyo3::add_python_path(dir.path()).unwrap();
    match Program::load("x.json", "slow_db:build").unwrap_err() {
        Error::Python { type_name, message, .. } => {
            assert_eq!(type_name, "builtins.TimeoutError");
            assert!(message.contains("database query"));
        }
        other => panic!("expected Python, got {other:?}"),
    }
}

#[test]
fn streams_run_concurrently_on_the_event_loop() {
    let server = Server::start();
    // every request waits at a barrier until all 24 are in the server at once: only streams that really run
    // concurrently get past it (a barrier that is never met breaks after 60 s and the answers fail)
    server.responder(
        r#"(lambda barrier: lambda request: (barrier.wait(), Reply(content=chat_reply(answer="streamed answer")))[1])(__import__("threading").Barrier(24, timeout=60))"#,
    );
    let predict = Predict::<QA>::new().unwrap().with_lm(&server.lm(), None).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let answers = rt.block_on(async {
        let tasks: Vec<_> = (0..24)
            .map(|i| {
                let predict = predict.clone();
                tokio::spawn(async move {
                    predict.stream(&QAInput { question: format!("q{i}") }).unwrap().prediction().await
                })
            })
            .collect();
        let mut answers = Vec::new();
        for task in tasks {
            answers.push(task.await.unwrap().unwrap().output.answer);
        }
        answers
    });
    assert_eq!(answers.len(), 24);
    assert!(answers.iter().all(|a| a == "streamed answer"), "{answers:?}");
}
