//! `wayfinder-bench decode`: the two trace decoders side by side in this process, on the load
//! generator's requests. prost's message then the Arrow conversion (the collector's path before
//! the wire decoder, and still OTLP/JSON's), against the wire decoder that reads the protobuf
//! bytes straight into Arrow. Both take the topology facts too, as the collector does.

use std::hint::black_box;
use std::time::{Duration, Instant};

use anyhow::bail;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use wayfinder_bench::workload::{Shape, Workload};
use wayfinder_decode::{self as decode, oracle};

#[derive(Debug, clap::Args)]
pub(crate) struct DecodeArgs {
    /// Spans per request (comma-separated).
    #[arg(long, value_delimiter = ',', default_values_t = [50, 500, 5000])]
    spans_per_request: Vec<usize>,
    /// Spans each decoder decodes per size and round.
    #[arg(long, default_value_t = 1_000_000)]
    spans: usize,
    /// Rounds; the median is reported.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
}

/// Distinct requests per size, so that one request's bytes do not sit in the cache.
const REQUESTS: usize = 16;

pub(crate) fn decode(args: DecodeArgs) -> anyhow::Result<()> {
    println!(
        "| spans per request | prost → Arrow, ns a span | wire → Arrow, ns a span | wire / prost |"
    );
    println!("|---|---|---|---|");
    for &size in &args.spans_per_request {
        let mut workload = Workload::new(
            Shape {
                spans_per_request: size,
                ..Shape::default()
            },
            42,
        );
        let requests: Vec<(Vec<u8>, usize)> = (0..REQUESTS)
            .map(|_| {
                let request = workload.request();
                (request.encode_to_vec(), decode::span_count(&request))
            })
            .collect();
        for (bytes, _) in &requests {
            if let Err(difference) = oracle::compare_with_prost(bytes) {
                bail!("the decoders differ on a generated request: {difference}");
            }
        }
        let (mut prost, mut wire) = (Vec::new(), Vec::new());
        for round in 0..args.rounds {
            // Alternate which runs first, so that neither always gets the warm machine.
            let order = if round % 2 == 0 {
                [false, true]
            } else {
                [true, false]
            };
            for use_wire in order {
                let per_span = time(&requests, args.spans, |bytes| {
                    if use_wire {
                        decode::decode_traces_wire(bytes).map(|d| d.accepted()).ok()
                    } else {
                        ExportTraceServiceRequest::decode(bytes)
                            .ok()
                            .and_then(|request| decode::decode_traces(&request).ok())
                            .map(|d| d.accepted())
                    }
                })?;
                if use_wire { &mut wire } else { &mut prost }.push(per_span);
            }
        }
        let (prost, wire) = (median(&mut prost), median(&mut wire));
        println!(
            "| {size} | {:.0} | {:.0} | {:.2} |",
            prost,
            wire,
            wire / prost
        );
    }
    Ok(())
}

/// Nanoseconds a span to decode at least `spans` spans, cycling through `requests`.
fn time(
    requests: &[(Vec<u8>, usize)],
    spans: usize,
    mut decode: impl FnMut(&[u8]) -> Option<usize>,
) -> anyhow::Result<f64> {
    let mut done = 0usize;
    let start = Instant::now();
    for (bytes, count) in requests.iter().cycle() {
        if done >= spans {
            break;
        }
        let Some(accepted) = decode(black_box(bytes)) else {
            bail!("a generated request did not decode");
        };
        black_box(accepted);
        done += count;
    }
    let elapsed: Duration = start.elapsed();
    Ok(elapsed.as_nanos() as f64 / done as f64)
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}
