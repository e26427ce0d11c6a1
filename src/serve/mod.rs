//! An HTTP service for expression recognition (feature `serve`): `POST /predict` an image, get
//! back the JSON of `adcorre predict --json` (with faces: of `adcorre predict --faces --json`).
//!
//! - `POST /predict`: the image as the raw body (any `Content-Type` but multipart), or
//!   `multipart/form-data` with a field named `image` (`curl -F image=@face.jpg`). Query options
//!   `faces=true|false` (find the faces first; default: [`ServeConfig::faces`]) and
//!   `embeddings=true` (add the k embeddings).
//! - `GET /health`: `{"status": "ok", "model": <the model card>, "faces": ...}`.
//!
//! Limits: bodies above [`ServeConfig::max_body_bytes`] get `413` (read and dropped first, up to
//! 16 MiB more, so that a client writing its whole body still receives it); images are decoded within the
//! model's [`ImageLimits`](crate::infer::preprocess::ImageLimits); at most
//! [`ServeConfig::max_concurrent`] recognitions run at once, at most
//! [`ServeConfig::max_queued`] more wait, and a request beyond that gets `503` with
//! `Retry-After`. Bad input gets a `4xx` whose JSON `error` is the typed error's message;
//! nothing a client sends stops the server.
//!
//! ```no_run
//! # #[cfg(feature = "shipped-model")] {
//! use std::sync::Arc;
//! use adcorre::infer::TestModels;
//! use adcorre::serve::{serve, ServeConfig};
//!
//! let models = Arc::new(TestModels::shipped()?);
//! let runtime = tokio::runtime::Runtime::new()?;
//! runtime.block_on(async {
//!     let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//!     serve(listener, models, ServeConfig::default(), std::future::pending()).await
//! })?;
//! # }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::future::Future;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, Multipart, Query, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use tokio::sync::Semaphore;

use crate::backend::AdCorreBackend;
use crate::error::AdCorreError;
use crate::infer::preprocess::decode_image;
use crate::infer::TestModels;

/// How the service runs: limits and defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServeConfig {
    /// Largest request body, in bytes (default 16 MiB); larger ones get `413`.
    pub max_body_bytes: usize,
    /// Recognitions running at once (default: the number of CPUs, at most 4; each pass
    /// already uses every core).
    pub max_concurrent: usize,
    /// Requests that may wait for a free slot (default 64); beyond them, `503`.
    pub max_queued: usize,
    /// Find the faces in each image first (MTCNN) unless a request says `faces=false`.
    pub faces: bool,
}

impl Default for ServeConfig {
    fn default() -> Self {
        let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        Self {
            max_body_bytes: 16 << 20,
            max_concurrent: cpus.clamp(1, 4),
            max_queued: 64,
            faces: false,
        }
    }
}

/// What the handlers share.
struct ServiceState<B: AdCorreBackend> {
    models: Arc<TestModels<B>>,
    config: ServeConfig,
    /// Requests admitted (running or waiting).
    admitted: Arc<Semaphore>,
    /// Recognitions running.
    running: Arc<Semaphore>,
}

/// Per-request options of `POST /predict`.
#[derive(Debug, Deserialize)]
struct PredictOptions {
    faces: Option<bool>,
    #[serde(default)]
    embeddings: bool,
}

/// The service's routes (`/predict`, `/health`) over `models`, to serve as it is or to mount in
/// an app's own [`Router`].
pub fn router<B: AdCorreBackend>(models: Arc<TestModels<B>>, config: ServeConfig) -> Router
where
    TestModels<B>: Send + Sync + 'static,
{
    let config = ServeConfig {
        max_concurrent: config.max_concurrent.max(1),
        ..config
    };
    let state = Arc::new(ServiceState {
        admitted: Arc::new(Semaphore::new(config.max_concurrent + config.max_queued)),
        running: Arc::new(Semaphore::new(config.max_concurrent)),
        models,
        config,
    });
    Router::new()
        .route("/predict", post(predict::<B>))
        .route("/health", get(health::<B>))
        .method_not_allowed_fallback(|| async {
            error_response(StatusCode::METHOD_NOT_ALLOWED, "wrong method: POST /predict, GET /health")
        })
        .fallback(|| async { error_response(StatusCode::NOT_FOUND, "no such endpoint: POST /predict, GET /health") })
        .layer(DefaultBodyLimit::max(state.config.max_body_bytes))
        .with_state(state)
}

/// Serves [`router`] on `listener` until `shutdown` completes (then finishes the requests in
/// flight). With [`ServeConfig::faces`], the face detector is loaded before the first request.
pub async fn serve<B: AdCorreBackend>(
    listener: tokio::net::TcpListener,
    models: Arc<TestModels<B>>,
    config: ServeConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()>
where
    TestModels<B>: Send + Sync + 'static,
{
    if config.faces {
        models.face_detector().map_err(std::io::Error::other)?;
    }
    axum::serve(listener, router(models, config)).with_graceful_shutdown(shutdown).await
}

/// A JSON error response: `{"error": message}`.
fn error_response(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(serde_json::json!({ "error": message.into() }))).into_response()
}

/// The status a typed error is answered with: the client's input (4xx) or the server (500).
fn status_of(error: &AdCorreError) -> StatusCode {
    match error {
        AdCorreError::LimitExceeded { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        AdCorreError::Image { .. }
        | AdCorreError::InvalidInput { .. }
        | AdCorreError::Shape { .. }
        | AdCorreError::NonFinite(_) => StatusCode::BAD_REQUEST,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

async fn health<B: AdCorreBackend>(State(state): State<Arc<ServiceState<B>>>) -> Response
where
    TestModels<B>: Send + Sync + 'static,
{
    Json(serde_json::json!({
        "status": "ok",
        "model": state.models.card(),
        "faces": state.config.faces,
        "max_body_bytes": state.config.max_body_bytes,
    }))
    .into_response()
}

/// The answer to a body axum refused: `413` names the limit.
fn body_rejected(status: StatusCode, text: String, limit: usize) -> Response {
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        too_large(limit)
    } else {
        error_response(status, text)
    }
}

fn too_large(limit: usize) -> Response {
    error_response(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("the request body exceeds the limit of {limit} bytes (adcorre serve --max-body-bytes)"),
    )
}

/// Bytes of an oversized body read and dropped before its `413` is sent: a client that writes
/// its whole body before reading the answer (ureq, Python's requests) would otherwise find the
/// connection closed under it and report a broken pipe instead of the `413`. Bodies declared
/// larger than the limit plus this are answered at once.
const DRAIN_BYTES: usize = 16 << 20;

/// The whole body of `request`, at most `limit` bytes; beyond that `413`, after reading and
/// dropping the rest (up to [`DRAIN_BYTES`] more) so that the client receives it.
async fn read_body(request: Request, limit: usize) -> Result<(axum::http::request::Parts, Bytes), Response> {
    use http_body::Body as _;
    let (parts, mut body) = request.into_parts();
    let declared = parts.headers.get(header::CONTENT_LENGTH).and_then(|value| value.to_str().ok()?.parse::<usize>().ok());
    if declared.is_some_and(|declared| declared > limit.saturating_add(DRAIN_BYTES)) {
        return Err(too_large(limit));
    }
    let mut bytes = Vec::with_capacity(declared.unwrap_or(0).min(limit));
    let mut read = 0usize;
    loop {
        let frame = std::future::poll_fn(|cx| std::pin::Pin::new(&mut body).poll_frame(cx)).await;
        let Some(frame) = frame else { break };
        let frame = frame.map_err(|err| error_response(StatusCode::BAD_REQUEST, format!("cannot read the request body: {err}")))?;
        let Ok(data) = frame.into_data() else { continue };
        read = read.saturating_add(data.len());
        if read > limit.saturating_add(DRAIN_BYTES) {
            break;
        }
        if read <= limit {
            bytes.extend_from_slice(&data);
        }
    }
    if read > limit {
        return Err(too_large(limit));
    }
    Ok((parts, Bytes::from(bytes)))
}

/// The image of a request: its name (for errors and the reply's `input`) and bytes.
async fn request_image(request: Request, limit: usize) -> Result<(String, Bytes), Response> {
    let multipart = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.trim_start().to_ascii_lowercase().starts_with("multipart/form-data"));
    let (parts, body) = read_body(request, limit).await?;
    let (name, bytes) = if multipart {
        let request = Request::from_parts(parts, axum::body::Body::from(body));
        let mut form = Multipart::from_request(request, &())
            .await
            .map_err(|rejection| body_rejected(rejection.status(), rejection.body_text(), limit))?;
        let mut image = None;
        while let Some(field) = form
            .next_field()
            .await
            .map_err(|err| body_rejected(err.status(), err.body_text(), limit))?
        {
            if field.name() == Some("image") {
                let name = field.file_name().unwrap_or("image").to_string();
                let bytes = field.bytes().await.map_err(|err| body_rejected(err.status(), err.body_text(), limit))?;
                image = Some((name, bytes));
                break;
            }
        }
        image.ok_or_else(|| error_response(StatusCode::BAD_REQUEST, "the multipart form has no field named 'image'"))?
    } else {
        ("request body".to_string(), body)
    };
    if bytes.is_empty() {
        return Err(error_response(
            StatusCode::BAD_REQUEST,
            "empty image: POST the image's bytes as the body, or multipart/form-data with a field named 'image'",
        ));
    }
    Ok((name, bytes))
}

async fn predict<B: AdCorreBackend>(
    State(state): State<Arc<ServiceState<B>>>,
    options: Result<Query<PredictOptions>, QueryRejection>,
    request: Request,
) -> Response
where
    TestModels<B>: Send + Sync + 'static,
{
    let options = match options {
        Ok(Query(options)) => options,
        Err(rejection) => return error_response(rejection.status(), rejection.body_text()),
    };
    let Ok(admitted) = state.admitted.clone().try_acquire_owned() else {
        let mut response = error_response(StatusCode::SERVICE_UNAVAILABLE, "busy: too many requests waiting; retry later");
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return response;
    };
    let (name, bytes) = match request_image(request, state.config.max_body_bytes).await {
        Ok(image) => image,
        Err(response) => return response,
    };
    let Ok(running) = state.running.clone().acquire_owned().await else {
        return error_response(StatusCode::SERVICE_UNAVAILABLE, "the service is shutting down");
    };
    let faces = options.faces.unwrap_or(state.config.faces);
    let embeddings = options.embeddings;
    let worker_state = state.clone();
    let answer = tokio::task::spawn_blocking(move || {
        let _slots = (admitted, running);
        let models = &worker_state.models;
        let image = decode_image(&bytes, &name, models.image_limits())?;
        let mut object = serde_json::Map::new();
        object.insert("input".into(), serde_json::json!(name));
        if faces {
            let found = models.recognize_faces_in_image(&image)?;
            let faces: Vec<serde_json::Value> =
                found.iter().map(|f| serde_json::Value::Object(f.to_json(embeddings))).collect();
            object.insert("faces".into(), serde_json::Value::Array(faces));
        } else {
            object.extend(models.recognize_image(&image)?.to_json(embeddings));
        }
        Ok::<_, AdCorreError>(serde_json::Value::Object(object))
    })
    .await;
    match answer {
        Ok(Ok(json)) => Json(json).into_response(),
        Ok(Err(error)) => error_response(status_of(&error), error.to_string()),
        Err(_) => error_response(StatusCode::INTERNAL_SERVER_ERROR, "internal error: the recognition failed"),
    }
}
