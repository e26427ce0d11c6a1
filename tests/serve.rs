//! `adcorre serve`: the real binary on a loopback port, talked to with a real HTTP client
//! (ureq): the same JSON as `adcorre predict --json`, bad requests answered with 4xx and the
//! typed error's message, and a bounded load all answered.
#![cfg(all(feature = "cli", feature = "serve", feature = "shipped-model"))]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use serde_json::Value;

mod common;
use common::png_header;

const FACE: &str = "../shared/fixtures/mtcnn/obama.jpg";

/// A 48x48 FER-2013 face (a few KB).
fn small_face() -> Vec<u8> {
    let folder = std::fs::read_dir("../shared/data/fer2013/test/happy").unwrap();
    std::fs::read(folder.map(|entry| entry.unwrap().path()).min().unwrap()).unwrap()
}

/// A running `adcorre serve`, stopped when dropped.
struct Server {
    child: Child,
    url: String,
}

impl Server {
    fn start(args: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_adcorre"))
            .args(["serve", "--port", "0"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        match line.split_whitespace().find(|word| word.starts_with("http://")) {
            Some(url) => Self { url: url.to_string(), child },
            None => {
                let _ = child.kill();
                let output = child.wait_with_output().unwrap();
                panic!("adcorre serve did not start: {line}{}", String::from_utf8_lossy(&output.stderr))
            }
        }
    }

    fn post(&self, path_and_query: &str, content_type: &str, body: &[u8]) -> (u16, Value) {
        answer(ureq::post(&format!("{}{path_and_query}", self.url)).set("Content-Type", content_type).send_bytes(body))
    }

    fn get(&self, path: &str) -> (u16, Value) {
        answer(ureq::get(&format!("{}{path}", self.url)).call())
    }
}

/// A reply's status and JSON body, error statuses included.
fn answer(result: Result<ureq::Response, ureq::Error>) -> (u16, Value) {
    let response = match result {
        Ok(response) | Err(ureq::Error::Status(_, response)) => response,
        Err(other) => panic!("request failed: {other}"),
    };
    let status = response.status();
    let text = response.into_string().unwrap();
    (status, serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON ({status}): {text}")))
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A multipart/form-data body with one file field.
fn multipart(field: &str, file_name: &str, bytes: &[u8]) -> (String, Vec<u8>) {
    let boundary = "adcorre-test-boundary-7f3a";
    let mut body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{file_name}\"\r\n\
         Content-Type: application/octet-stream\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(bytes);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

/// `adcorre predict --json [--faces] FILE`, parsed.
fn predict_cli(faces: bool, file: &str) -> Value {
    let mut command = Command::new(env!("CARGO_BIN_EXE_adcorre"));
    command.args(["predict", "--json"]);
    if faces {
        command.arg("--faces");
    }
    let output = command.arg(file).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).unwrap()
}

/// The largest difference between two `probabilities` objects (same class names, same order).
fn probability_difference(a: &Value, b: &Value) -> f64 {
    let (a, b) = (a["probabilities"].as_object().unwrap(), b["probabilities"].as_object().unwrap());
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    a.values().zip(b.values()).map(|(x, y)| (x.as_f64().unwrap() - y.as_f64().unwrap()).abs()).fold(0.0, f64::max)
}

#[test]
fn answers_like_predict_json_raw_and_multipart() {
    let server = Server::start(&[]);
    let bytes = std::fs::read(FACE).unwrap();
    let expected = predict_cli(false, FACE);

    let (status, raw) = server.post("/predict", "image/jpeg", &bytes);
    assert_eq!(status, 200, "{raw}");
    assert_eq!(raw["expression"], expected["expression"]);
    assert!(probability_difference(&raw, &expected) <= 1e-6, "{raw} vs {expected}");

    let (content_type, body) = multipart("image", "obama.jpg", &bytes);
    let (status, form) = server.post("/predict?embeddings=true", &content_type, &body);
    assert_eq!(status, 200, "{form}");
    assert_eq!(form["input"], "obama.jpg");
    assert!(probability_difference(&form, &expected) <= 1e-6);
    assert_eq!(form["embeddings"].as_array().unwrap().len(), 7, "k = 7 embeddings");

    let (status, health) = server.get("/health");
    assert_eq!(status, 200);
    assert_eq!(health["status"], "ok");
    assert_eq!(health["model"]["input_size"], 48);
}

#[test]
fn faces_mode_answers_like_predict_faces_json() {
    let server = Server::start(&["--faces"]);
    let expected = predict_cli(true, FACE);
    let (status, answer) = server.post("/predict", "application/octet-stream", &std::fs::read(FACE).unwrap());
    assert_eq!(status, 200, "{answer}");
    let (faces, expected_faces) = (answer["faces"].as_array().unwrap(), expected["faces"].as_array().unwrap());
    assert!(!faces.is_empty());
    assert_eq!(faces.len(), expected_faces.len());
    for (face, expected_face) in faces.iter().zip(expected_faces) {
        assert_eq!(face["box"], expected_face["box"]);
        assert_eq!(face["expression"], expected_face["expression"]);
        assert!(probability_difference(face, expected_face) <= 1e-6);
    }
    // The request's option overrides the server's default.
    let (status, whole) = server.post("/predict?faces=false", "image/jpeg", &std::fs::read(FACE).unwrap());
    assert_eq!(status, 200);
    assert!(whole.get("faces").is_none() && whole.get("probabilities").is_some());
}

#[test]
fn bad_requests_get_4xx_with_the_errors_message_and_the_server_lives_on() {
    let server = Server::start(&["--max-body-bytes", "100000"]);
    let error = |answer: &(u16, Value)| answer.1["error"].as_str().unwrap_or_default().to_string();

    let garbage = server.post("/predict", "image/jpeg", b"this is not an image");
    assert_eq!(garbage.0, 400);
    assert!(error(&garbage).contains("cannot decode image"), "{}", error(&garbage));

    let empty = server.post("/predict", "image/jpeg", b"");
    assert_eq!(empty.0, 400);
    assert!(error(&empty).contains("empty image"));

    let (content_type, body) = multipart("photo", "x.jpg", b"abc");
    let no_field = server.post("/predict", &content_type, &body);
    assert_eq!(no_field.0, 400);
    assert!(error(&no_field).contains("no field named 'image'"));

    let broken_form = server.post("/predict", "multipart/form-data; boundary=nothere", b"--elsewhere\r\n");
    assert!((400..500).contains(&broken_form.0), "{broken_form:?}");

    let too_big = server.post("/predict", "image/jpeg", &vec![0u8; 200_000]);
    assert_eq!(too_big.0, 413);
    assert!(error(&too_big).contains("100000 bytes"), "{}", error(&too_big));
    let (content_type, body) = multipart("image", "big.jpg", &vec![0u8; 200_000]);
    assert_eq!(server.post("/predict", &content_type, &body).0, 413);
    // A client that writes its whole body before reading (as ureq does) still gets the 413, not
    // a connection closed under it: the server reads and drops an oversized body (up to 16 MiB
    // beyond the limit) before it answers.
    let far_too_big = server.post("/predict", "image/jpeg", &vec![0u8; 4 << 20]);
    assert_eq!(far_too_big.0, 413, "{far_too_big:?}");
    let (content_type, body) = multipart("image", "big.jpg", &vec![0u8; 4 << 20]);
    assert_eq!(server.post("/predict", &content_type, &body).0, 413);

    let huge_declared = server.post("/predict", "image/png", &png_header(60_000, 60_000));
    assert_eq!(huge_declared.0, 413, "{huge_declared:?}");
    assert!(error(&huge_declared).contains("3600000000 pixels"), "{}", error(&huge_declared));

    let bad_option = server.post("/predict?faces=maybe", "image/jpeg", &small_face());
    assert_eq!(bad_option.0, 400);

    assert_eq!(server.get("/predict").0, 405);
    assert_eq!(server.get("/nowhere").0, 404);

    let (status, health) = server.get("/health");
    assert_eq!((status, health["status"].as_str()), (200, Some("ok")));
    let (status, answer) = server.post("/predict", "image/jpeg", &small_face());
    assert_eq!(status, 200, "{answer}");
}

#[test]
fn a_bounded_load_is_all_answered() {
    let server = Server::start(&[]);
    let bytes = std::fs::read(FACE).unwrap();
    let expected = predict_cli(false, FACE);
    let (clients, each) = (8, 25);
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..clients)
            .map(|client| {
                let (server, bytes, expected) = (&server, &bytes, &expected);
                scope.spawn(move || {
                    for request in 0..each {
                        let (status, answer) = if (client + request) % 2 == 0 {
                            server.post("/predict", "image/jpeg", bytes)
                        } else {
                            let (content_type, body) = multipart("image", "obama.jpg", bytes);
                            server.post("/predict", &content_type, &body)
                        };
                        assert_eq!(status, 200, "client {client}, request {request}: {answer}");
                        assert!(probability_difference(&answer, expected) <= 1e-6);
                    }
                    each
                })
            })
            .collect();
        let answered: usize = workers.into_iter().map(|w| w.join().unwrap()).sum();
        assert_eq!(answered, clients * each);
    });
}
