//! Configuration paths that touch process-global state (its own test binary, one test, so nothing races it).

mod common;

use std::time::Duration;

use common::{QAInput, QA};
use dspyo3::{ConfigError, Error, Lm, Predict};

#[test]
fn unconfigured_calls_name_the_fix_and_dspyo3_profiles_build_lms() {
    // The profile comes from DSPYO3_LM* variables, which Python reads when the interpreter starts: set them first.
    let server = dspyo3::testing::LoopbackLm::start(Duration::ZERO).unwrap();
    std::env::set_var("DSPYO3_LM", "openai/dspyo3-test");
    std::env::set_var("DSPYO3_LM_API_BASE", server.api_base());
    std::env::set_var("DSPYO3_LM_API_KEY", "sk-profile-secret");
    common::init();

    let qa = Predict::<QA>::new().unwrap();
    let input = QAInput { question: "q".into() };
    match qa.call(&input).unwrap_err() {
        err @ Error::Config(ConfigError::NoLm) => assert!(err.to_string().contains("dspyo3::configure"), "{err}"),
        other => panic!("expected Config, got {other:?}"),
    }

    let lm = Lm::profile(None).unwrap();
    assert_eq!(lm.model(), "openai/dspyo3-test");
    dspyo3::configure(&lm).unwrap();
    let answer = qa.call(&input).unwrap().answer;
    assert!(answer.starts_with("answer-"), "{answer}");
    assert_eq!(lm.history_len().unwrap(), 1, "the call went through the profile's LM");

    match Lm::profile(Some("nope")).unwrap_err() {
        Error::Python { message, .. } => assert!(message.contains("unknown LM profile 'nope'"), "{message}"),
        other => panic!("expected the ConfigError from dspyo3-core, got {other:?}"),
    }
}
