//! The HTTP service inside an app's own server: adcorre's routes mounted under `/fer` of an
//! axum router that has routes of its own, one model shared by every request.
//!
//! `cargo run --release --example serve_embedded`, then
//! `curl -F image=@face.jpg http://127.0.0.1:8090/fer/predict`.

use std::sync::Arc;

use adcorre::infer::TestModels;
use adcorre::serve::{router, ServeConfig};
use axum::routing::get;
use axum::Router;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let models = Arc::new(TestModels::shipped()?);
    let config = ServeConfig { max_body_bytes: 4 << 20, ..ServeConfig::default() };
    let app = Router::new()
        .route("/", get(|| async { "my app; expression recognition under /fer" }))
        .nest("/fer", router(models, config));
    tokio::runtime::Runtime::new()?.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:8090").await?;
        println!("listening on http://{}", listener.local_addr()?);
        axum::serve(listener, app).with_graceful_shutdown(async { tokio::signal::ctrl_c().await.unwrap_or(()) }).await
    })?;
    Ok(())
}
