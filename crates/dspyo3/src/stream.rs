//! Token streaming: `dspy.streamify` on the runtime's asyncio loop, surfaced as a Rust [`futures::Stream`].

use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::{Stream, StreamExt};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyCFunction, PyDict, PyTuple};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

use crate::error::{Error, Result};
use crate::module::Prediction;
use crate::runtime::Runtime;

/// One item of a [`PredictionStream`].
#[derive(Debug, Clone)]
pub enum StreamEvent<O> {
    /// A chunk of an output field's text as the LM produces it.
    Token {
        /// The output field the chunk belongs to.
        field: String,
        /// The text.
        chunk: String,
        /// Whether this is the field's last chunk.
        last: bool,
    },
    /// A status message from DSPy (tool calls, module progress).
    Status(String),
    /// The final, parsed prediction (always the last item of a successful stream).
    Prediction(Prediction<O>),
}

enum Raw {
    Token { field: String, chunk: String, last: bool },
    Status(String),
    Prediction(Vec<u8>),
    Failed(Error),
    Done,
}

/// Output tokens of a running DSPy call, then its prediction. Dropping the stream cancels the call.
pub struct PredictionStream<O> {
    rx: UnboundedReceiver<Raw>,
    future: Option<Py<PyAny>>,
    finished: bool,
    _output: PhantomData<fn() -> O>,
}

impl<O> std::fmt::Debug for PredictionStream<O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PredictionStream").field("finished", &self.finished).finish_non_exhaustive()
    }
}

fn event_from_python(item: &Bound<'_, PyAny>) -> PyResult<Option<Raw>> {
    let tag: String = item.get_item(0)?.extract()?;
    Ok(Some(match tag.as_str() {
        "token" => Raw::Token {
            field: item.get_item(1)?.extract()?,
            chunk: item.get_item(2)?.extract()?,
            last: item.get_item(3)?.extract()?,
        },
        "status" => Raw::Status(item.get_item(1)?.extract()?),
        "prediction" => Raw::Prediction(item.get_item(1)?.cast_into::<PyBytes>()?.as_bytes().to_vec()),
        _ => return Ok(None),
    }))
}

impl<O> PredictionStream<O> {
    pub(crate) fn start(
        py: Python<'_>,
        rt: &Runtime,
        runner: &Bound<'_, PyAny>,
        settings: Bound<'_, PyDict>,
        inputs: &str,
        traceparent: Option<&str>,
    ) -> Result<Self> {
        let (tx, rx) = unbounded_channel();
        let sink_tx = tx.clone();
        let started = (|| -> PyResult<Py<PyAny>> {
            let sink = PyCFunction::new_closure(
                py,
                Some(c"dspyo3_stream_sink"),
                None,
                move |args: &Bound<'_, PyTuple>, _kwargs: Option<&Bound<'_, PyDict>>| -> PyResult<()> {
                    if let Some(raw) = event_from_python(&args.get_item(0)?)? {
                        let _ = sink_tx.send(raw); // the stream was dropped: nothing to deliver to
                    }
                    Ok(())
                },
            )?;
            let coroutine = runner.call_method1("stream", (settings, inputs, sink, traceparent))?;
            let future = py
                .import("asyncio")?
                .call_method1("run_coroutine_threadsafe", (coroutine, rt.locals.event_loop(py)))?;
            let on_done = PyCFunction::new_closure(
                py,
                Some(c"dspyo3_stream_done"),
                None,
                move |args: &Bound<'_, PyTuple>, _kwargs: Option<&Bound<'_, PyDict>>| -> PyResult<()> {
                    let future = args.get_item(0)?;
                    let raw = if future.call_method0("cancelled")?.is_truthy()? {
                        Raw::Failed(Error::Cancelled)
                    } else {
                        let exc = future.call_method0("exception")?;
                        if exc.is_none() {
                            Raw::Done
                        } else {
                            Raw::Failed(Error::from_py_in(args.py(), PyErr::from_value(exc)))
                        }
                    };
                    let _ = tx.send(raw);
                    Ok(())
                },
            )?;
            future.call_method1("add_done_callback", (on_done,))?;
            Ok(future.unbind())
        })()
        .map_err(|e| Error::from_py_in(py, e))?;
        Ok(PredictionStream { rx, future: Some(started), finished: false, _output: PhantomData })
    }
}

impl<O: DeserializeOwned> PredictionStream<O> {
    /// Drain the stream and return the prediction (tokens and status messages are discarded).
    pub async fn prediction(mut self) -> Result<Prediction<O>> {
        while let Some(event) = self.next().await {
            if let StreamEvent::Prediction(prediction) = event? {
                return Ok(prediction);
            }
        }
        Err(crate::error::RuntimeError::NoPrediction.into())
    }
}

impl<O: DeserializeOwned> Stream for PredictionStream<O> {
    type Item = Result<StreamEvent<O>>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.finished {
            return Poll::Ready(None);
        }
        match self.rx.poll_recv(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) | Poll::Ready(Some(Raw::Done)) => {
                self.finished = true;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Raw::Failed(err))) => {
                self.finished = true;
                Poll::Ready(Some(Err(err)))
            }
            Poll::Ready(Some(Raw::Token { field, chunk, last })) => {
                Poll::Ready(Some(Ok(StreamEvent::Token { field, chunk, last })))
            }
            Poll::Ready(Some(Raw::Status(message))) => Poll::Ready(Some(Ok(StreamEvent::Status(message)))),
            Poll::Ready(Some(Raw::Prediction(bytes))) => {
                Poll::Ready(Some(Prediction::from_bytes(&bytes).map(StreamEvent::Prediction)))
            }
        }
    }
}

impl<O> Drop for PredictionStream<O> {
    fn drop(&mut self) {
        if let Some(future) = self.future.take() {
            if !self.finished {
                // Cancel the asyncio task (and with it the in-flight LM request).
                let _ = Python::try_attach(|py| future.bind(py).call_method0("cancel").map(drop));
            }
        }
    }
}
