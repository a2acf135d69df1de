//! Integration tests: the real `conform` binary on fixtures in `testdata/`, checking the files
//! it writes. One test binary (faster to link) with a small `Workdir` harness.

mod adversarial;
mod anomaly;
mod bench_job;
mod cli;
#[cfg(feature = "ballista")]
mod cluster;
#[cfg(feature = "delta")]
mod delta;
mod docs;
mod feedback;
mod hardening;
mod harness;
mod http;
mod layers;
mod llm;
mod matching;
mod messy;
mod pg;
mod postgres;
mod prop;
mod reference;
mod review;
mod store;
mod stream;
