//! The tracer the layers start their spans with.
//!
//! The layers start OpenTelemetry spans directly rather than `tracing` spans bridged by
//! `tracing-opentelemetry`: the bridge converts every field to an owned string, keeps a span
//! builder per span and starts the span on first entry, which doubled the per-request cost
//! (see docs/benchmarks.md). The span's context is attached while the request's future runs, so
//! `tracing` spans and log lines inside a handler still nest under it (`tracing-opentelemetry`
//! takes the current OpenTelemetry context as the parent of a span without a `tracing` parent).
//!
//! The tracer is, in order: the one of a [`TelemetryGuard`](crate::TelemetryGuard) made this
//! thread's default with `set_default` (several services with their own telemetry can share a
//! process, one runtime thread each); the one [`init`](crate::init) installed; the global
//! OpenTelemetry provider's, for an application that set up its own. The first two are a
//! pointer copy per span; the last takes the global provider's lock and boxes a tracer.

use std::cell::RefCell;
use std::sync::OnceLock;

use opentelemetry::Context;
use opentelemetry::global;
use opentelemetry::trace::{SpanBuilder, TraceContextExt, Tracer};
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};

/// The instrumentation scope of the layers' spans.
pub(crate) const SCOPE: &str = "wayfinder-middleware";

/// The scope with its version and the schema URL of the conventions the spans follow: 1.37.0
/// with the experimental RPC conventions (the last release that had them), 1.44.0 with the
/// stable ones.
pub(crate) fn scope() -> opentelemetry::InstrumentationScope {
    let schema = match crate::grpc::RpcConventions::from_env() {
        crate::grpc::RpcConventions::Experimental => "https://opentelemetry.io/schemas/1.37.0",
        _ => "https://opentelemetry.io/schemas/1.44.0",
    };
    opentelemetry::InstrumentationScope::builder(SCOPE)
        .with_version(env!("CARGO_PKG_VERSION"))
        .with_schema_url(schema)
        .build()
}

/// The layers' tracer from `provider`.
pub(crate) fn from_provider(provider: &SdkTracerProvider) -> SdkTracer {
    use opentelemetry::trace::TracerProvider as _;
    provider.tracer_with_scope(scope())
}

thread_local! {
    static SCOPED: RefCell<Option<SdkTracer>> = const { RefCell::new(None) };
}

/// The tracer `init()` installed.
static INSTALLED: OnceLock<SdkTracer> = OnceLock::new();

/// Starts a span as a child of `parent` and returns `parent` with it.
pub(crate) fn start(builder: SpanBuilder, parent: &Context) -> Context {
    let scoped = SCOPED.with(|scoped| scoped.borrow().clone());
    match scoped.as_ref().or_else(|| INSTALLED.get()) {
        Some(tracer) => parent.with_span(tracer.build_with_context(builder, parent)),
        None => {
            let tracer = global::tracer_with_scope(scope());
            parent.with_span(tracer.build_with_context(builder, parent))
        }
    }
}

/// Makes `tracer` the process's (once: `init()` cannot succeed twice).
pub(crate) fn install(tracer: SdkTracer) {
    let _ = INSTALLED.set(tracer);
}

/// Restores the previous thread default when dropped. Not `Send`: it must be dropped on the
/// thread that made it (and scopes in the reverse order of their making).
#[derive(Debug)]
pub(crate) struct Scope {
    previous: Option<SdkTracer>,
    _not_send: std::marker::PhantomData<*const ()>,
}

/// Makes `tracer` this thread's default until the returned guard is dropped.
pub(crate) fn set_scoped(tracer: SdkTracer) -> Scope {
    let previous = SCOPED.with(|scoped| scoped.borrow_mut().replace(tracer));
    Scope {
        previous,
        _not_send: std::marker::PhantomData,
    }
}

impl Drop for Scope {
    fn drop(&mut self) {
        let previous = self.previous.take();
        SCOPED.with(|scoped| *scoped.borrow_mut() = previous);
    }
}
