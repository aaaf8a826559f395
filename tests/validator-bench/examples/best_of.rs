//! The best of 200 timed runs of each candidate on data-processor's output of 1,000
//! records, and of a UTF-8 check alone: less disturbed by a shared machine's load
//! than criterion's means. `cargo run --release --example best_of`.

use std::hint::black_box;
use std::time::Instant;
fn best<F: FnMut()>(mut f: F) -> f64 {
    let mut best = f64::MAX;
    for _ in 0..200 {
        let t = Instant::now();
        f();
        best = best.min(t.elapsed().as_secs_f64());
    }
    best * 1e6
}
fn main() {
    let bytes = plugbay_validator_bench::data_processor_output(1000);
    println!("bytes {}", bytes.len());
    println!(
        "from_utf8 {:.1} us",
        best(|| {
            black_box(std::str::from_utf8(black_box(&bytes)).is_ok());
        })
    );
    println!(
        "simdutf8 {:.1} us",
        best(|| {
            black_box(simdutf8::basic::from_utf8(black_box(&bytes)).is_ok());
        })
    );
    for (name, v) in plugbay_validator_bench::CANDIDATES {
        println!(
            "{name} {:.1} us",
            best(|| {
                black_box(v(black_box(&bytes)).is_ok());
            })
        );
    }
}
