//! Replays the fuzz corpus (`fuzz/corpus/<target>/`): every input the fuzzer found
//! interesting stays a regression test for the HTTP parser and the request decoder.

use std::path::Path;

fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    files.sort();
    files
}

#[test]
fn http_parser_corpus() {
    let inputs = corpus("http_request");
    assert!(inputs.len() >= 20, "the corpus is committed with the tree");
    for (name, data) in inputs {
        let r = std::panic::catch_unwind(|| klav::http::check_parse_invariants(&data));
        assert!(r.is_ok(), "input {name} broke the HTTP parser");
    }
}

#[test]
fn request_decoder_corpus() {
    let inputs = corpus("ws_request");
    assert!(inputs.len() >= 20, "the corpus is committed with the tree");
    let mut decoded = 0;
    for (name, data) in inputs {
        let Ok(text) = std::str::from_utf8(&data) else {
            continue;
        };
        let r = std::panic::catch_unwind(|| klav::handlers::decode_frame(text).is_ok());
        match r {
            Ok(true) => decoded += 1,
            Ok(false) => {}
            Err(_) => panic!("input {name} broke the request decoder"),
        }
    }
    // The corpus holds valid requests too, not only rejects.
    assert!(decoded > 0);
}
