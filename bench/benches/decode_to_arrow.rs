//! The ingest hot path by request size: protobuf bytes straight into an Arrow `RecordBatch`
//! (the wire decoder, the collector's path), against bytes → prost's `ExportTraceServiceRequest`
//! → `RecordBatch` (OTLP/JSON's path once parsed).
#![allow(missing_docs)] // criterion_group! makes an undocumented public function

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use wayfinder_bench::workload::{Shape, Workload};

fn decode_to_arrow(c: &mut Criterion) {
    let mut group = c.benchmark_group("decode_to_arrow");
    for spans in [50, 500, 5000] {
        let mut workload = Workload::new(
            Shape {
                spans_per_request: spans,
                ..Shape::default()
            },
            42,
        );
        let request = workload.request();
        let count: usize = wayfinder_decode::span_count(&request);
        let bytes = request.encode_to_vec();
        group.throughput(Throughput::Elements(count as u64));
        group.bench_with_input(BenchmarkId::new("protobuf", spans), &bytes, |b, bytes| {
            b.iter(|| {
                let request =
                    ExportTraceServiceRequest::decode(bytes.as_slice()).expect("valid protobuf");
                wayfinder_decode::decode_traces(&request).expect("valid spans")
            })
        });
        group.bench_with_input(BenchmarkId::new("wire", spans), &bytes, |b, bytes| {
            b.iter(|| wayfinder_decode::decode_traces_wire(bytes).expect("valid spans"))
        });
        group.bench_with_input(
            BenchmarkId::new("arrow_only", spans),
            &request,
            |b, request| b.iter(|| wayfinder_decode::decode_traces(request).expect("valid spans")),
        );
        group.bench_with_input(
            BenchmarkId::new("arrow_only_without_facts", spans),
            &request,
            |b, request| {
                b.iter(|| wayfinder_decode::decode_spans_only(request).expect("valid spans"))
            },
        );
    }
    group.finish();
}

criterion_group!(benches, decode_to_arrow);
criterion_main!(benches);
