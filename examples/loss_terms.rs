//! Prints the Ad-Corre loss terms of a batch stored as `.npz` (keys `embeddings` (k,bs,d) f32,
//! `labels` (bs,) i64, `probs` (bs,C) f32, `confusion` (C,C) f32) as one JSON object.
//!
//! `cargo run --release --example loss_terms -- ../shared/fixtures/loss/bs12_k7_d16_c7.npz`

use adcorre::backend::{cpu_device, Cpu};
use adcorre::loss::case::LossCase;

fn main() {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: loss_terms CASE.npz");
        std::process::exit(2);
    };
    let terms = LossCase::from_npz(path.as_ref()).and_then(|case| case.evaluate::<Cpu>(&cpu_device()));
    match terms {
        Ok(terms) => println!("{}", serde_json::to_string(&terms).expect("plain numbers serialise")),
        Err(err) => {
            eprintln!("error: {err}");
            std::process::exit(1);
        }
    }
}
