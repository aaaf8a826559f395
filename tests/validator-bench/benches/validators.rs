//! The candidates on data-processor's output at 1,000 and 10,000 records:
//! `cargo bench` in this folder (`PLUGBAY_BENCH_QUICK=1` for short runs).

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use plugbay_validator_bench::{data_processor_output, CANDIDATES};

fn validators(c: &mut Criterion) {
    let mut group = c.benchmark_group("validate");
    for n in [1_000, 10_000] {
        let bytes = data_processor_output(n);
        group.throughput(Throughput::Bytes(bytes.len() as u64));
        for (name, validator) in CANDIDATES {
            assert_eq!(validator(&bytes), Ok(n), "{name} counts the records");
            group.bench_with_input(BenchmarkId::new(*name, n), &bytes, |b, bytes| {
                b.iter(|| validator(black_box(bytes)))
            });
        }
    }
    group.finish();
}

fn config() -> Criterion {
    let quick = std::env::var_os("PLUGBAY_BENCH_QUICK").is_some_and(|value| value != "0");
    let criterion = Criterion::default();
    if quick {
        criterion
            .warm_up_time(Duration::from_millis(300))
            .measurement_time(Duration::from_secs(1))
            .sample_size(20)
    } else {
        criterion
    }
}

criterion_group! {
    name = benches;
    config = config();
    targets = validators
}
criterion_main!(benches);
