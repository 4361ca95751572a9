//! Trace context on the wire: which headers are read from incoming requests and written on
//! outgoing ones.
//!
//! Extraction accepts every format a caller may send, in a fixed order: W3C `traceparent` (with
//! `tracestate`), then B3 (the single `b3` header, then the `X-B3-*` headers), then Jaeger's
//! `uber-trace-id`. The first valid one wins; a header that is present but malformed is skipped
//! as if it were absent, so a request with only invalid headers starts a new root trace and is
//! served normally. W3C `baggage` is read alongside whichever format won.
//!
//! Injection writes W3C `traceparent`, `tracestate` and `baggage` by default; [`Propagation::inject`]
//! or `OTEL_PROPAGATORS` choose other formats (B3 for meshes that want it, Jaeger for old
//! agents).
//!
//! ```
//! use http::HeaderMap;
//! use opentelemetry::trace::TraceContextExt;
//! use wayfinder_middleware::propagation::{PropagationFormat, Propagation};
//!
//! let mut incoming = HeaderMap::new();
//! incoming.insert("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1".parse().unwrap());
//! let cx = Propagation::default().extract(&incoming);
//! assert_eq!(
//!     cx.span().span_context().trace_id().to_string(),
//!     "80f198ee56343ba864fe8b2a57d3eff7"
//! );
//!
//! // Forward the same trace as W3C and B3 single.
//! let propagation = Propagation::inject([PropagationFormat::TraceContext, PropagationFormat::B3]);
//! let mut outgoing = HeaderMap::new();
//! propagation.inject_into(&cx, &mut outgoing);
//! assert!(outgoing["traceparent"].to_str().unwrap().starts_with("00-80f198ee"));
//! assert!(outgoing.contains_key("b3"));
//! ```

mod b3;
mod jaeger;
#[cfg(test)]
mod tests;
pub(crate) mod w3c;

use std::fmt;
use std::str::FromStr;

use http::HeaderMap;
use opentelemetry::Context;
use opentelemetry::propagation::text_map_propagator::FieldIter;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use opentelemetry_http::HeaderInjector;
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};

/// One trace-context format, as named in `OTEL_PROPAGATORS`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PropagationFormat {
    /// W3C `traceparent` and `tracestate` (`tracecontext`).
    TraceContext,
    /// W3C `baggage` (`baggage`).
    Baggage,
    /// B3 single header `b3` (`b3`).
    B3,
    /// B3 multiple headers `X-B3-TraceId`, `X-B3-SpanId`, `X-B3-Sampled` (`b3multi`).
    B3Multi,
    /// Jaeger `uber-trace-id` (`jaeger`).
    Jaeger,
}

impl PropagationFormat {
    /// The name `OTEL_PROPAGATORS` uses for this format.
    pub fn name(self) -> &'static str {
        match self {
            PropagationFormat::TraceContext => "tracecontext",
            PropagationFormat::Baggage => "baggage",
            PropagationFormat::B3 => "b3",
            PropagationFormat::B3Multi => "b3multi",
            PropagationFormat::Jaeger => "jaeger",
        }
    }
}

impl fmt::Display for PropagationFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A name in `OTEL_PROPAGATORS` that is not a format this crate knows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown propagator {0:?} (known: tracecontext, baggage, b3, b3multi, jaeger, none)")]
pub struct UnknownFormat(pub String);

impl FromStr for PropagationFormat {
    type Err = UnknownFormat;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        match name.trim() {
            "tracecontext" => Ok(PropagationFormat::TraceContext),
            "baggage" => Ok(PropagationFormat::Baggage),
            "b3" => Ok(PropagationFormat::B3),
            "b3multi" => Ok(PropagationFormat::B3Multi),
            "jaeger" => Ok(PropagationFormat::Jaeger),
            other => Err(UnknownFormat(other.to_owned())),
        }
    }
}

/// Reads trace context from incoming headers and writes it on outgoing ones.
///
/// The default injects W3C trace context and baggage and extracts every known format. It also
/// implements [`TextMapPropagator`], so it can be installed with
/// `opentelemetry::global::set_text_map_propagator` for code that uses the global one.
#[derive(Clone, Debug)]
pub struct Propagation {
    extract: bool,
    inject_trace_context: bool,
    inject_baggage: bool,
    inject_jaeger: bool,
    inject_b3_single: bool,
    inject_b3_multi: bool,
    fields: Vec<String>,
}

impl Default for Propagation {
    fn default() -> Self {
        Propagation::inject([PropagationFormat::TraceContext, PropagationFormat::Baggage])
    }
}

impl Propagation {
    /// Extracts every format and injects exactly `formats`.
    pub fn inject(formats: impl IntoIterator<Item = PropagationFormat>) -> Self {
        let mut propagation = Propagation {
            extract: true,
            inject_trace_context: false,
            inject_baggage: false,
            inject_jaeger: false,
            inject_b3_single: false,
            inject_b3_multi: false,
            fields: Vec::new(),
        };
        for format in formats {
            match format {
                PropagationFormat::TraceContext => propagation.inject_trace_context = true,
                PropagationFormat::Baggage => propagation.inject_baggage = true,
                PropagationFormat::Jaeger => propagation.inject_jaeger = true,
                PropagationFormat::B3 => propagation.inject_b3_single = true,
                PropagationFormat::B3Multi => propagation.inject_b3_multi = true,
            }
        }
        propagation.fields = propagation.header_names();
        propagation
    }

    /// The propagation [`init`](crate::init) installed (from `OTEL_PROPAGATORS` or the
    /// builder), or else the default. The layers' `new()` start from it, so a layer made
    /// before `init()` runs uses the default.
    pub fn current() -> Self {
        INSTALLED.get().cloned().unwrap_or_default()
    }

    /// Makes `self` what [`Propagation::current`] returns (once per process).
    pub(crate) fn install(self) {
        let _ = INSTALLED.set(self);
    }

    /// Neither extracts nor injects anything: every request starts its own trace.
    pub fn none() -> Self {
        Propagation {
            extract: false,
            ..Propagation::inject([])
        }
    }

    /// Parses an `OTEL_PROPAGATORS` value: a comma-separated list of format names, or `none`.
    /// An empty value means the default.
    ///
    /// ```
    /// use wayfinder_middleware::propagation::Propagation;
    ///
    /// assert!(Propagation::from_otel_propagators("tracecontext,b3multi").is_ok());
    /// let error = Propagation::from_otel_propagators("tracecontext,xray").unwrap_err();
    /// assert!(error.to_string().contains("xray"));
    /// ```
    pub fn from_otel_propagators(value: &str) -> Result<Self, UnknownFormat> {
        let names: Vec<&str> = value
            .split(',')
            .map(str::trim)
            .filter(|name| !name.is_empty())
            .collect();
        if names.is_empty() {
            return Ok(Propagation::default());
        }
        if names.contains(&"none") {
            return Ok(Propagation::none());
        }
        let formats = names
            .into_iter()
            .map(PropagationFormat::from_str)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Propagation::inject(formats))
    }

    /// The headers this propagation writes.
    fn header_names(&self) -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        if self.inject_trace_context {
            names.extend([w3c::TRACEPARENT.to_owned(), w3c::TRACESTATE.to_owned()]);
        }
        if self.inject_b3_single {
            names.push(b3::SINGLE.to_owned());
        }
        if self.inject_b3_multi {
            names.extend(b3::MULTI.iter().map(|name| (*name).to_owned()));
        }
        if self.inject_jaeger {
            names.push(jaeger::HEADER.to_owned());
        }
        if self.inject_baggage {
            names.extend(BaggagePropagator::new().fields().map(str::to_owned));
        }
        names
    }

    /// The context carried by `headers`, as a child of an empty context.
    pub fn extract(&self, headers: &HeaderMap) -> Context {
        let headers = Headers {
            map: headers,
            tracestate: joined(headers, w3c::TRACESTATE),
            baggage: joined(headers, BAGGAGE),
        };
        self.extract_with_context(&Context::new(), &headers)
    }

    /// Writes `cx`'s span and baggage into `headers` in the configured formats.
    pub fn inject_into(&self, cx: &Context, headers: &mut HeaderMap) {
        self.inject_context(cx, &mut HeaderInjector(headers));
    }
}

impl TextMapPropagator for Propagation {
    fn inject_context(&self, cx: &Context, injector: &mut dyn Injector) {
        let span = cx.span();
        let span_context = span.span_context();
        if self.inject_trace_context {
            w3c::inject(span_context, cx.get::<w3c::ForwardedTraceState>(), injector);
        }
        if self.inject_b3_single {
            b3::inject_single(span_context, injector);
        }
        if self.inject_b3_multi {
            b3::inject_multi(span_context, injector);
        }
        if self.inject_jaeger {
            jaeger::inject(span_context, injector);
        }
        if self.inject_baggage {
            BaggagePropagator::new().inject_context(cx, injector);
        }
    }

    fn extract_with_context(&self, cx: &Context, extractor: &dyn Extractor) -> Context {
        if !self.extract {
            return cx.clone();
        }
        let cx = if extractor.get(BAGGAGE).is_some() {
            BaggagePropagator::new().extract_with_context(cx, extractor)
        } else {
            cx.clone()
        };
        if extractor
            .get(w3c::TRACEPARENT)
            .is_some_and(|value| w3c::is_valid_traceparent(value.trim()))
        {
            // The SDK reads the traceparent; the tracestate is parsed once, here, by the
            // current grammar (`w3c::with_tracestate`), so the SDK does not see it.
            let extracted = TraceContextPropagator::new()
                .extract_with_context(&cx, &w3c::WithoutTracestate(extractor));
            if extracted.has_active_span() {
                let (parent, forwarded) = w3c::with_tracestate(
                    extracted.span().span_context(),
                    extractor.get(w3c::TRACESTATE),
                );
                let cx = cx.with_remote_span_context(parent);
                return match forwarded {
                    Some(forwarded) => cx.with_value(forwarded),
                    None => cx,
                };
            }
        }
        match b3::extract_single(extractor)
            .or_else(|| b3::extract_multi(extractor))
            .or_else(|| jaeger::extract(extractor))
        {
            Some(span_context) => cx.with_remote_span_context(span_context),
            None => cx,
        }
    }

    fn fields(&self) -> FieldIter<'_> {
        FieldIter::new(&self.fields)
    }
}

const BAGGAGE: &str = "baggage";

/// A remote parent from ids a B3 or Jaeger header carried; `None` when an id is zero.
fn remote_context(trace_id: TraceId, span_id: SpanId, sampled: bool) -> Option<SpanContext> {
    let flags = if sampled {
        TraceFlags::SAMPLED
    } else {
        TraceFlags::default()
    };
    let context = SpanContext::new(trace_id, span_id, flags, true, TraceState::NONE);
    context.is_valid().then_some(context)
}

/// Whether every byte of `field` is a lowercase hex digit.
fn is_lower_hex(field: &[u8]) -> bool {
    field
        .iter()
        .all(|byte| matches!(byte, b'0'..=b'9' | b'a'..=b'f'))
}

/// The propagation `init()` installed.
static INSTALLED: std::sync::OnceLock<Propagation> = std::sync::OnceLock::new();

/// Reads an `http::HeaderMap` like `opentelemetry_http::HeaderExtractor`, with the names this
/// crate asks for parsed once (`HeaderMap::get(&str)` parses and lowercases the name on every
/// call, which showed up in the server layer's profile), and with several `tracestate` or
/// `baggage` lines combined into one list as W3C says (the plain extractor reads the first).
struct Headers<'a> {
    map: &'a HeaderMap,
    tracestate: Option<String>,
    baggage: Option<String>,
}

/// The header names this crate reads, parsed once.
fn header_name(key: &str) -> Option<&'static http::HeaderName> {
    static NAMES: std::sync::LazyLock<[http::HeaderName; 8]> = std::sync::LazyLock::new(|| {
        [
            "traceparent",
            "tracestate",
            "baggage",
            "b3",
            "x-b3-traceid",
            "x-b3-spanid",
            "x-b3-sampled",
            "uber-trace-id",
        ]
        .map(http::HeaderName::from_static)
    });
    NAMES.iter().find(|name| name.as_str() == key)
}

/// The values of `name` joined with commas, when the header appears more than once.
fn joined(map: &HeaderMap, name: &str) -> Option<String> {
    let name = header_name(name)?;
    let mut values = map.get_all(name).iter();
    let first = values.next()?;
    let second = values.next()?;
    let all = [first, second].into_iter().chain(values);
    let parts: Vec<&str> = all.filter_map(|value| value.to_str().ok()).collect();
    Some(parts.join(","))
}

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        // Two traceparent headers are no parent at all (W3C: start a new trace).
        if key == w3c::TRACEPARENT
            && let Some(name) = header_name(key)
            && self.map.get_all(name).iter().nth(1).is_some()
        {
            return None;
        }
        match key {
            w3c::TRACESTATE if self.tracestate.is_some() => return self.tracestate.as_deref(),
            BAGGAGE if self.baggage.is_some() => return self.baggage.as_deref(),
            _ => {}
        }
        let value = match header_name(key) {
            Some(name) => self.map.get(name),
            None => self.map.get(key),
        };
        value.and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.map.keys().map(http::HeaderName::as_str).collect()
    }
}
