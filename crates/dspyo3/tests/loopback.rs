//! `testing::LoopbackLm`: typed answers derived from the signature, and injected faults.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use dspyo3::testing::{Fault, LoopbackLm};
use dspyo3::{DspyType, Error, Predict, RuntimeError, Signature};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, DspyType)]
#[serde(rename_all = "snake_case")]
enum Verdict {
    Buy,
    Skip,
    Wait,
}

/// A product the review mentions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, DspyType)]
struct Product {
    name: String,
    price: f64,
    in_stock: bool,
    tags: Option<Vec<String>>,
}

/// Judge a product review.
#[derive(Signature)]
struct Judge {
    #[input]
    review: String,
    #[output]
    verdict: Verdict,
    #[output]
    score: f64,
    #[output]
    stars: u8,
    #[output]
    recommended: bool,
    #[output]
    products: Vec<Product>,
    #[output]
    counts: HashMap<String, i64>,
    #[output]
    note: Option<String>,
    #[output]
    range: (i32, String),
    #[output]
    summary: String,
}

fn judge(server: &LoopbackLm, retries: u32) -> Predict<Judge> {
    common::init();
    let lm = server.lm().num_retries(retries).kwarg("timeout", 1.0).build().unwrap();
    Predict::<Judge>::new().unwrap().with_lm(&lm, None).unwrap()
}

fn input(review: &str) -> JudgeInput {
    JudgeInput { review: review.into() }
}

#[test]
fn typed_predict_deserializes_the_loopback_answers() {
    let server = LoopbackLm::start(Duration::ZERO).unwrap();
    let predict = judge(&server, 0);
    let out = predict.call(&input("Great value, works as described.")).unwrap();
    assert!(matches!(out.verdict, Verdict::Buy | Verdict::Skip | Verdict::Wait));
    assert!((0.0..1.0).contains(&out.score), "{}", out.score);
    assert!(out.stars < 100);
    assert_eq!(out.products.len(), 2);
    assert!(out.products[0].name.starts_with("name-"), "{:?}", out.products);
    assert!(out.products[0].tags.as_ref().is_some_and(|tags| !tags.is_empty()), "{:?}", out.products);
    assert_eq!(out.counts.len(), 1);
    assert!(out.note.as_deref().is_some_and(|note| note.starts_with("note-")), "{:?}", out.note);
    assert!(out.range.1.starts_with("range"), "{:?}", out.range);
    assert!(out.summary.starts_with("summary-"), "{}", out.summary);

    // deterministic, and derived from the prompt: the same input answers the same, another input otherwise
    let again = predict.call(&input("Great value, works as described.")).unwrap();
    assert_eq!((again.summary.as_str(), again.stars, &again.products), (out.summary.as_str(), out.stars, &out.products));
    let other = predict.call(&input("Broke after a day.")).unwrap();
    assert_ne!(other.summary, out.summary);
    assert_eq!(server.requests().unwrap(), 3);
}

#[test]
fn injected_faults_map_to_the_error_enum_then_answers_resume() {
    let server = LoopbackLm::start(Duration::ZERO).unwrap();
    let predict = judge(&server, 0);
    let review = input("fine");

    server.inject(Fault::RateLimited { retry_after: Duration::from_secs(2) }, 1).unwrap();
    let err = predict.call(&review).unwrap_err();
    assert!(matches!(err, Error::RateLimited { .. }), "{err:?}");
    assert_eq!(err.retry_after(), Some(Duration::from_secs(2)));

    server.inject(Fault::ServerError { status: 503 }, 1).unwrap();
    match predict.call(&review).unwrap_err() {
        Error::Lm { retryable, .. } => assert!(retryable, "a 503 is retryable"),
        other => panic!("expected Lm, got {other:?}"),
    }

    server.inject(Fault::Hang(Duration::from_secs(5)), 1).unwrap();
    let err = predict.call(&review).unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err:?}");

    server.inject(Fault::Malformed, 1).unwrap();
    match predict.call(&review).unwrap_err() {
        Error::Lm { retryable, .. } => assert!(!retryable, "the same request gets the same broken body"),
        other => panic!("expected Lm, got {other:?}"),
    }

    // ChatAdapter asks again with JSONAdapter: both answers unparseable
    server.inject(Fault::Unparseable, 2).unwrap();
    match predict.call(&review).unwrap_err() {
        Error::Parse { raw, .. } => assert!(raw.contains("follows no output format"), "{raw}"),
        other => panic!("expected Parse, got {other:?}"),
    }

    assert_eq!(server.requests().unwrap(), 6);
    let out = predict.call(&review).unwrap();
    assert!(out.summary.starts_with("summary-"), "answers resume once the faults are spent: {}", out.summary);
}

#[test]
fn retries_get_past_injected_faults() {
    let server = LoopbackLm::start(Duration::ZERO).unwrap();
    let predict = judge(&server, 2);
    server.inject(Fault::RateLimited { retry_after: Duration::from_millis(100) }, 1).unwrap();
    server.inject(Fault::ServerError { status: 502 }, 1).unwrap();
    let out = predict.call(&input("fine")).unwrap();
    assert!(out.summary.starts_with("summary-"), "{}", out.summary);
    assert_eq!(server.requests().unwrap(), 3, "two failed attempts, then the answer");
}

#[test]
fn a_fault_that_is_no_error_is_refused() {
    let server = LoopbackLm::start(Duration::ZERO).unwrap();
    match server.inject(Fault::ServerError { status: 200 }, 1) {
        Err(err @ Error::Runtime(RuntimeError::Loopback { .. })) => assert!(err.to_string().contains("400-599"), "{err}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    // nothing was queued: the next call is answered
    let out = judge(&server, 0).call(&input("fine")).unwrap();
    assert!(out.summary.starts_with("summary-"), "{}", out.summary);
}
