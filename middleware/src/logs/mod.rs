//! Log correlation: the trace id and span id of the current span on every log event, and
//! helpers to read them or keep them across `tokio::spawn`.
//!
//! [`TraceIdFormat`] wraps a `tracing-subscriber` event format (text or JSON) and adds
//! `trace_id` and `span_id` to each event emitted inside a traced span; [`init`](crate::init)
//! installs it. Events outside any span are written unchanged.
//!
//! A task started with `tokio::spawn` does not inherit the current span: use [`spawn`], or wrap
//! the future yourself with `tracing::Instrument::in_current_span` and
//! `opentelemetry::context::FutureExt::with_current_context`, so that its logs and the calls it
//! makes stay in the request's trace.

use opentelemetry::context::FutureExt as _;
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceId};
use tracing::{Event, Instrument, Subscriber};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// The trace id of the current span, when it is part of a trace.
///
/// ```
/// // Outside any span there is no trace.
/// assert_eq!(wayfinder_middleware::current_trace_id(), None);
/// ```
pub fn current_trace_id() -> Option<TraceId> {
    current_span_context().map(|context| context.trace_id())
}

/// The span id of the current span, when it is part of a trace.
pub fn current_span_id() -> Option<SpanId> {
    current_span_context().map(|context| context.span_id())
}

fn current_span_context() -> Option<SpanContext> {
    let attached = opentelemetry::Context::map_current(|cx| cx.span().span_context().clone());
    if attached.is_valid() {
        return Some(attached);
    }
    // A subscriber that does not activate contexts on span entry: ask the current span.
    let span = tracing::Span::current();
    if span.is_disabled() {
        return None;
    }
    let cx = span.context();
    let context = cx.span().span_context().clone();
    context.is_valid().then_some(context)
}

/// `tokio::spawn`, with the task inside the current span: its logs carry the same trace id and
/// its outgoing calls join the same trace.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let handle = wayfinder_middleware::spawn(async { 1 + 1 });
/// assert_eq!(handle.await.unwrap(), 2);
/// # }
/// ```
pub fn spawn<F>(future: F) -> tokio::task::JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    tokio::spawn(future.in_current_span().with_current_context())
}

/// An event format that adds `trace_id` and `span_id` to another: at the end of a text line
/// (`… trace_id=4bf9… span_id=00f0…`) or as the first two keys of a JSON object.
///
/// The ids are those of the OpenTelemetry context active when the event is emitted, which
/// `tracing-opentelemetry` activates on entering a span.
///
/// ```
/// use tracing_subscriber::fmt;
/// use wayfinder_middleware::TraceIdFormat;
///
/// let text = fmt::layer::<tracing_subscriber::Registry>()
///     .event_format(TraceIdFormat::text(fmt::format().with_ansi(false)));
/// let json = fmt::layer::<tracing_subscriber::Registry>()
///     .json()
///     .event_format(TraceIdFormat::json(fmt::format().json()));
/// # let _ = (text, json);
/// ```
#[derive(Clone, Debug)]
pub struct TraceIdFormat<F> {
    inner: F,
    json: bool,
}

impl<F> TraceIdFormat<F> {
    /// Wraps a text format.
    pub fn text(inner: F) -> Self {
        TraceIdFormat { inner, json: false }
    }

    /// Wraps a JSON format (`tracing_subscriber::fmt::format().json()`).
    pub fn json(inner: F) -> Self {
        TraceIdFormat { inner, json: true }
    }
}

impl<S, N, F> FormatEvent<S, N> for TraceIdFormat<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        // Not `Span::current().context()`: that goes through the dispatcher, which is busy
        // dispatching this very event. The context activated on span entry is at hand.
        let ids = opentelemetry::Context::map_current(|cx| {
            let span = cx.span();
            let context = span.span_context();
            context
                .is_valid()
                .then(|| (context.trace_id(), context.span_id()))
        });
        let Some((trace_id, span_id)) = ids else {
            return self.inner.format_event(ctx, writer, event);
        };
        let mut line = String::with_capacity(256);
        self.inner
            .format_event(ctx, Writer::new(&mut line), event)?;
        let body = line.trim_end_matches('\n');
        let newline = &line[body.len()..];
        if self.json {
            match body.strip_prefix('{') {
                Some(rest) => {
                    let separator = if rest.starts_with('}') { "" } else { "," };
                    write!(
                        writer,
                        "{{\"trace_id\":\"{trace_id}\",\"span_id\":\"{span_id}\"{separator}{rest}"
                    )?;
                }
                None => writer.write_str(body)?,
            }
        } else {
            write!(writer, "{body} trace_id={trace_id} span_id={span_id}")?;
        }
        writer.write_str(newline)
    }
}
